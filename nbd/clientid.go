package nbd

import (
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// clientID is who a connection comes from, as far as the per-client
// connection cap (Options.MaxConnectionsPerClient) can tell: the source IP
// address of a TCP connection, or the peer's uid on a unix socket, where
// every connection has the same address and the kernel vouches for the
// uid (SO_PEERCRED). It is a map key; its port is never part of it.
type clientID struct {
	addr netip.Addr // TCP: the source address, IPv4-mapped IPv6 unmapped
	uid  int64      // unix: the peer's uid; -1 otherwise
	// other names a connection of any other kind (net.Pipe in tests) by
	// its network: they all count as one client.
	other string
}

// clientOf identifies nc's client. A unix peer whose credentials cannot be
// read counts as one unknown client, uid -1, with all such peers.
func clientOf(nc net.Conn) clientID {
	switch a := nc.RemoteAddr().(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return clientID{addr: ap.Addr().Unmap(), uid: -1}
	case *net.UnixAddr:
		return clientID{uid: peerUID(nc), other: "unix"}
	}
	return clientID{uid: -1, other: nc.RemoteAddr().Network()}
}

// peerUID is the uid of a unix socket's peer, or -1.
func peerUID(nc net.Conn) int64 {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return -1
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1
	}
	uid := int64(-1)
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			uid = int64(cred.Uid)
		}
	})
	return uid
}
