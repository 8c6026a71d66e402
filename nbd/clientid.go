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
	id, _ := identify(nc)
	return id
}

// identify is clientOf that, on a unix socket, also returns the peer's
// gid, for the allow lists (-1 otherwise): read with the uid, in one
// getsockopt, and no part of the per-client key.
func identify(nc net.Conn) (id clientID, gid int64) {
	switch a := nc.RemoteAddr().(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return clientID{addr: ap.Addr().Unmap(), uid: -1}, -1
	case *net.UnixAddr:
		uid, gid := peerCred(nc)
		return clientID{uid: uid, other: "unix"}, gid
	}
	return clientID{uid: -1, other: nc.RemoteAddr().Network()}, -1
}

// peerCred is the uid and gid of a unix socket's peer, or -1 and -1.
func peerCred(nc net.Conn) (uid, gid int64) {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return -1, -1
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1, -1
	}
	uid, gid = -1, -1
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			uid, gid = int64(cred.Uid), int64(cred.Gid)
		}
	})
	return uid, gid
}
