package nbd

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// AllowKind is what an AllowRule matches.
type AllowKind int

const (
	// AllowCIDR matches a TCP client whose source address is in CIDR.
	AllowCIDR AllowKind = iota + 1
	// AllowUnixUID and AllowUnixGID match a unix socket client whose
	// peer credentials (SO_PEERCRED, which the kernel vouches for) have
	// that uid or gid.
	AllowUnixUID
	AllowUnixGID
	// AllowCertDNS, AllowCertCN and AllowCertSPKI match a client whose
	// verified TLS certificate has Name among its DNS SANs, Name as its
	// subject's common name, or a public key whose SubjectPublicKeyInfo
	// hashes to SPKI with SHA-256. A client without a verified
	// certificate matches none of them.
	AllowCertDNS
	AllowCertCN
	AllowCertSPKI
)

// AllowRule is one entry of an export's allow list; the fields its Kind
// does not use are ignored.
type AllowRule struct {
	Kind AllowKind
	CIDR netip.Prefix
	ID   uint32 // AllowUnixUID, AllowUnixGID
	Name string // AllowCertDNS, AllowCertCN
	SPKI [sha256.Size]byte
}

// allowList is an export's allow list, checked once per INFO, GO or
// EXPORT_NAME of it: a handful of rules, matched in order.
type allowList struct {
	rules []AllowRule
}

func newAllowList(rules []AllowRule) (*allowList, error) {
	if len(rules) == 0 {
		return nil, nil
	}
	l := &allowList{rules: make([]AllowRule, len(rules))}
	for i, r := range rules {
		switch r.Kind {
		case AllowCIDR:
			if !r.CIDR.IsValid() {
				return nil, fmt.Errorf("allow rule %d: invalid CIDR", i)
			}
			r.CIDR = unmapPrefix(r.CIDR)
		case AllowUnixUID, AllowUnixGID, AllowCertSPKI:
		case AllowCertDNS, AllowCertCN:
			if r.Name == "" {
				return nil, fmt.Errorf("allow rule %d: empty name", i)
			}
		default:
			return nil, fmt.Errorf("allow rule %d: unknown kind %d", i, r.Kind)
		}
		l.rules[i] = r
	}
	return l, nil
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix into its IPv4 one: a TCP
// client's address is compared unmapped (clientOf).
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked()
	}
	return p.Masked()
}

// admits reports whether c matches a rule.
func (l *allowList) admits(c *conn) bool {
	for _, r := range l.rules {
		if r.matches(c) {
			return true
		}
	}
	return false
}

func (r *AllowRule) matches(c *conn) bool {
	unix := c.client.other == "unix"
	switch r.Kind {
	case AllowCIDR:
		return c.client.addr.IsValid() && r.CIDR.Contains(c.client.addr)
	case AllowUnixUID:
		return unix && c.client.uid == int64(r.ID)
	case AllowUnixGID:
		return unix && c.gid == int64(r.ID)
	}
	cert := c.peerCert
	if cert == nil {
		return false
	}
	switch r.Kind {
	case AllowCertDNS:
		for _, n := range cert.DNSNames {
			if strings.EqualFold(n, r.Name) {
				return true
			}
		}
	case AllowCertCN:
		return cert.Subject.CommonName == r.Name
	case AllowCertSPKI:
		sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
		return bytes.Equal(sum[:], r.SPKI[:])
	}
	return false
}

// ListenerOptions configure one listener of a server.
type ListenerOptions struct {
	// Allow lists the source addresses a TCP connection may come from;
	// any other is closed at accept, before the handshake, and counted
	// as refused (RefusedListenAllow). Empty: every address. A listener
	// of another kind (a unix socket) with a list refuses everyone: its
	// peers have no address to match.
	Allow []netip.Prefix
}

// listenerAllow is a listener's Allow, unmapped.
type listenerAllow []netip.Prefix

func newListenerAllow(ps []netip.Prefix) (listenerAllow, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	out := make(listenerAllow, len(ps))
	for i, p := range ps {
		if !p.IsValid() {
			return nil, errors.New("nbd: invalid CIDR in a listener's allow list")
		}
		out[i] = unmapPrefix(p)
	}
	return out, nil
}

// admits reports whether nc may be served; nil admits everyone.
func (a listenerAllow) admits(nc net.Conn) bool {
	if a == nil {
		return true
	}
	ta, ok := nc.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return false
	}
	addr := ta.AddrPort().Addr().Unmap()
	for _, p := range a {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
