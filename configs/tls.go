package configs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/settings"
)

// TLS is the tls: section: the server's certificate and key, the CA that
// signs client certificates, and how TLS is offered. Paths are absolute
// (relative ones are taken from the configuration file's directory).
type TLS struct {
	Cert, Key string
	// ClientCA, if set, makes a client certificate signed by it (chain,
	// validity, key usage client auth) a condition of every TLS
	// handshake; its identity is what an export's client_cert rules match.
	ClientCA string
	// Mode is off, optional (the default) or required.
	Mode nbd.TLSMode

	// The lines of the keys, for problems found on the host.
	certLine, keyLine, caLine int
}

type tlsSettings struct {
	Cert     settings.String `yaml:"cert" label:"tls cert" need:"true"`
	Key      settings.String `yaml:"key" label:"tls key" need:"true"`
	ClientCA settings.String `yaml:"client_ca" label:"tls client_ca"`
	Mode     settings.String `yaml:"mode" label:"tls mode"`
	line     int
}

func (t *tlsSettings) UnmarshalYAML(n *yaml.Node) error {
	t.line = n.Line
	return settings.Decode(n, 0, "tls", t)
}

var tlsModes = map[string]nbd.TLSMode{"off": nbd.TLSOff, "optional": nbd.TLSOptional, "required": nbd.TLSRequired}

// tls decodes the tls: section; nil when it is absent, or its mode off.
func (d *decoder) tls(ts *tlsSettings) *TLS {
	if ts.line == 0 {
		return nil
	}
	t := &TLS{Mode: nbd.TLSOptional, certLine: ts.Cert.Line, keyLine: ts.Key.Line, caLine: ts.ClientCA.Line}
	if v := ts.Mode; v.Line > 0 {
		m, ok := tlsModes[v.S]
		if !ok {
			d.errorAt(v.Line, "tls mode %q: want off, optional (clients may STARTTLS) or required (every export only over TLS)%s",
				v.S, settings.Suggest(v.S, []string{"off", "optional", "required"}, ""))
			return nil
		}
		t.Mode = m
	}
	path := func(v settings.String, what string) string {
		if v.Line == 0 {
			return ""
		}
		if v.S == "" {
			d.errorAt(v.Line, "tls %s: the path must not be empty", what)
			return ""
		}
		if d.dir != "" && !filepath.IsAbs(v.S) {
			return filepath.Join(d.dir, v.S)
		}
		return v.S
	}
	t.Cert, t.Key, t.ClientCA = path(ts.Cert, "cert"), path(ts.Key, "key"), path(ts.ClientCA, "client_ca")
	if t.Mode == nbd.TLSOff {
		return nil
	}
	return t
}

// allowSetting is one entry of an export's allow list: a mapping with one
// key, cidr, unix_uid, unix_gid or client_cert.
type allowSetting struct {
	rule nbd.AllowRule
	line int
}

type clientCertSettings struct {
	DNS  settings.String `yaml:"dns" label:"client_cert dns"`
	CN   settings.String `yaml:"cn" label:"client_cert cn"`
	SPKI settings.String `yaml:"spki_sha256" label:"client_cert spki_sha256"`
}

var allowKinds = []string{"cidr", "unix_uid", "unix_gid", "client_cert"}

func (a *allowSetting) UnmarshalYAML(n *yaml.Node) error {
	var p settings.Problems
	if n.Kind != yaml.MappingNode || len(n.Content) != 2 {
		p.At(n.Line, "an allow entry is a mapping with one key, one of %s, such as \"- cidr: 10.0.0.0/8\"; got %s",
			strings.Join(allowKinds, ", "), settings.Describe(n))
		return p.Err()
	}
	k, v := n.Content[0], n.Content[1]
	a.line = k.Line
	switch k.Value {
	case "cidr":
		var s settings.String
		if err := settings.Named(v, k.Line, "allow cidr", &s); err != nil {
			return err
		}
		pfx, err := parseCIDR(s.S)
		if err != nil {
			p.At(s.Line, "allow cidr %q: %v", s.S, err)
			return p.Err()
		}
		a.rule = nbd.AllowRule{Kind: nbd.AllowCIDR, CIDR: pfx}
	case "unix_uid", "unix_gid":
		var i settings.Int
		if err := settings.Named(v, k.Line, "allow "+k.Value, &i); err != nil {
			return err
		}
		if i.N < 0 || i.N > 1<<32-2 {
			p.At(i.Line, "allow %s: %d is not a uid or gid", k.Value, i.N)
			return p.Err()
		}
		kind := nbd.AllowUnixUID
		if k.Value == "unix_gid" {
			kind = nbd.AllowUnixGID
		}
		a.rule = nbd.AllowRule{Kind: kind, ID: uint32(i.N)}
	case "client_cert":
		var cs clientCertSettings
		if err := settings.Decode(v, k.Line, "allow client_cert", &cs); err != nil {
			return err
		}
		given := 0
		for _, s := range []settings.String{cs.DNS, cs.CN, cs.SPKI} {
			if s.Line > 0 {
				given++
			}
		}
		if given != 1 {
			p.At(k.Line, "allow client_cert names the identity one way: dns, cn or spki_sha256")
			return p.Err()
		}
		switch {
		case cs.DNS.Line > 0 && cs.DNS.S != "":
			a.rule = nbd.AllowRule{Kind: nbd.AllowCertDNS, Name: cs.DNS.S}
		case cs.CN.Line > 0 && cs.CN.S != "":
			a.rule = nbd.AllowRule{Kind: nbd.AllowCertCN, Name: cs.CN.S}
		case cs.SPKI.Line > 0:
			b, err := hex.DecodeString(strings.ReplaceAll(cs.SPKI.S, ":", ""))
			if err != nil || len(b) != 32 {
				p.At(cs.SPKI.Line, "allow client_cert spki_sha256: want the 64 hex digits of a SHA-256 (openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum)")
				return p.Err()
			}
			a.rule = nbd.AllowRule{Kind: nbd.AllowCertSPKI}
			copy(a.rule.SPKI[:], b)
		default:
			p.At(k.Line, "allow client_cert: the name must not be empty")
			return p.Err()
		}
	default:
		p.At(k.Line, "unknown allow entry %q%s", k.Value, settings.Suggest(k.Value, allowKinds, ""))
		return p.Err()
	}
	return nil
}

// parseCIDR accepts a CIDR prefix, or a bare address as the prefix of
// that one address.
func parseCIDR(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, errors.New("want a CIDR prefix such as 10.0.0.0/8 or an address")
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, errors.New("want a CIDR prefix such as 10.0.0.0/8 or an address")
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("has bits set past the prefix length; did you mean %s?", p.Masked())
	}
	return p, nil
}

// checkHost checks the files of the tls: section: that the certificate
// and key can be read, belong together and are valid now, that the
// client CA holds certificates; and warns of a key that users other than
// its owner can read.
func (t *TLS) checkHost(d *decoder, now time.Time) {
	if _, err := t.load(now); err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.File = d.file
			d.errs = append(d.errs, e)
		} else {
			d.errorAt(t.certLine, "%v", err)
		}
	}
	if fi, err := os.Stat(t.Key); err == nil && fi.Mode().Perm()&0o077 != 0 {
		d.warnAt(t.keyLine, "tls key %s is readable by %s (mode %#o): chmod 600 it", t.Key, readers(fi.Mode()), fi.Mode().Perm())
	}
}

func readers(m fs.FileMode) string {
	switch {
	case m&0o070 != 0 && m&0o007 != 0:
		return "its group and others"
	case m&0o070 != 0:
		return "its group"
	}
	return "others"
}

// credentials are what the files of a tls: section hold.
type credentials struct {
	cert      tls.Certificate
	clientCAs *x509.CertPool
	notAfter  time.Time
}

// load reads and checks the files; each problem is an *Error at the line
// of the key that names the file.
func (t *TLS) load(now time.Time) (*credentials, error) {
	errAt := func(line int, format string, args ...any) error {
		return &Error{Line: line, Msg: fmt.Sprintf(format, args...)}
	}
	certPEM, err := os.ReadFile(t.Cert)
	if err != nil {
		return nil, errAt(t.certLine, "tls cert: %v", err)
	}
	keyPEM, err := os.ReadFile(t.Key)
	if err != nil {
		return nil, errAt(t.keyLine, "tls key: %v", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, errAt(t.keyLine, "tls key %s with cert %s: %v", t.Key, t.Cert, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, errAt(t.certLine, "tls cert %s: %v", t.Cert, err)
		}
	}
	switch {
	case now.After(leaf.NotAfter):
		return nil, errAt(t.certLine, "tls cert %s expired at %s", t.Cert, leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return nil, errAt(t.certLine, "tls cert %s is not valid before %s", t.Cert, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	cr := &credentials{cert: pair, notAfter: leaf.NotAfter}
	if t.ClientCA != "" {
		caPEM, err := os.ReadFile(t.ClientCA)
		if err != nil {
			return nil, errAt(t.caLine, "tls client_ca: %v", err)
		}
		cr.clientCAs = x509.NewCertPool()
		if !cr.clientCAs.AppendCertsFromPEM(caPEM) {
			return nil, errAt(t.caLine, "tls client_ca %s holds no PEM certificate", t.ClientCA)
		}
	}
	return cr, nil
}

// config is the server's TLS configuration for one set of credentials.
func (cr *credentials) config() *tls.Config {
	c := &tls.Config{
		Certificates: []tls.Certificate{cr.cert},
		// doc/proto.md, "TLS versions": 1.2 at least; 1.3 preferred.
		MinVersion: tls.VersionTLS12,
		// Full records from the first byte: NBD moves bulk data, and a
		// latency-friendly ramp of small records only costs syscalls.
		DynamicRecordSizingDisabled: true,
	}
	if cr.clientCAs != nil {
		// Verified against the CA: chain, validity and, as crypto/tls
		// requires of a client certificate, key usage client auth.
		c.ClientCAs, c.ClientAuth = cr.clientCAs, tls.RequireAndVerifyClientCert
	}
	return c
}

// ServerTLS is the server's TLS configuration, reloadable: every
// handshake takes the credentials in effect when it begins, so Reload
// replaces the certificate for new handshakes and leaves the connections
// already up alone.
type ServerTLS struct {
	t        *TLS
	file     string
	cur      atomic.Pointer[tls.Config]
	notAfter atomic.Int64
}

// NewServerTLS loads t's files (see Config.CheckHost for the checks).
func (c *Config) NewServerTLS() (*ServerTLS, error) {
	if c.TLS == nil {
		return nil, nil
	}
	s := &ServerTLS{t: c.TLS, file: c.Source}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload reads the files again and, if they pass the checks, makes them
// the ones new handshakes use; on error the old ones stay. It returns
// when the certificate in effect expires.
func (s *ServerTLS) Reload() (notAfter time.Time, err error) {
	cr, err := s.t.load(time.Now())
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.File = s.file
		}
		return time.Time{}, err
	}
	s.cur.Store(cr.config())
	s.notAfter.Store(cr.notAfter.Unix())
	return cr.notAfter, nil
}

// NotAfter is when the certificate in effect expires.
func (s *ServerTLS) NotAfter() time.Time { return time.Unix(s.notAfter.Load(), 0) }

// Config is the configuration to give the server (nbd.Options.TLS): its
// GetConfigForClient hands each handshake the credentials in effect.
func (s *ServerTLS) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return s.cur.Load(), nil
		},
	}
}
