package stack

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/targets/remote"
)

// KindNBD is the remote leg's kind: an NBD server elsewhere.
const KindNBD = "nbd"

func init() { Register(Kind{New: func() Settings { return new(NBDConfig) }, Rank: 55}) }

// Bounds of an nbd leg's settings.
const (
	// maxNBDConnections: beyond 16, more connections to one remote add
	// sockets, not throughput; requests in flight are what scale.
	maxNBDConnections = 16
	// minNBDTimeout: below it, a remote's ordinary hiccup (a flush to a
	// disk) would fail requests.
	minNBDTimeout = 100 * time.Millisecond
	// probeBound bounds how long the host check waits for a remote, so
	// that an unreachable one delays `stackd check` and `serve` only
	// briefly.
	probeBound = 2 * time.Second
)

// NBDConfig is the settings of an nbd leaf, an export of another NBD
// server (stackd, nbdkit, qemu-nbd, nbd-server), reached over TCP or a
// unix socket, in plaintext or TLS:
//
//	nbd: {uri: nbd://198.18.0.2:10809/disk0, connections: 4, timeout: 30s, size: 64GiB}
//
// The failure semantics (reconnects, retries, timeouts, a remote down at
// start) are those of package targets/remote.
type NBDConfig struct {
	// URI is required: nbd://HOST[:PORT]/EXPORT (port 10809 when absent)
	// or nbd+unix:///EXPORT?socket=PATH, or nbds:// or nbds+unix:// for
	// TLS, which then needs the tls settings.
	URI settings.String `yaml:"uri" need:"true"`
	// Connections is how many connections to open, 1 to 16, used only
	// when the remote advertises NBD_FLAG_CAN_MULTI_CONN; otherwise one
	// (absent: 1).
	Connections settings.Int `yaml:"connections"`
	// Timeout is how long a request may go unanswered before it fails
	// with EIO, at least 100ms (absent: 30s).
	Timeout settings.Duration `yaml:"timeout"`
	// Size, a positive multiple of 512, must equal the remote's size.
	// Absent, it is learnt from the remote when the configuration is
	// checked, which then needs the remote up; given, the export starts
	// even while the remote is down.
	Size settings.Size `yaml:"size"`
	// TLS is required by, and only allowed with, an nbds:// or
	// nbds+unix:// URI: how the leg verifies the remote and proves
	// itself to it.
	TLS NBDTLSConfig `yaml:"tls" label:"nbd tls"`

	opts   remote.Options // from URI, once Check has parsed it
	parsed bool
	tls    *tls.Config // from TLS's files, once loaded
	host   hostSized   // the remote's size, learnt by CheckHost when Size is absent
}

// NBDTLSConfig is an nbd leg's TLS: the connection upgrades with
// STARTTLS before anything else, and fails, rather than go on in
// plaintext, if the remote refuses or does not verify. Relative paths
// are relative to the configuration file's directory.
//
//	nbd: {uri: nbds://198.18.0.2/disk0, size: 64GiB, tls: {ca: ca.pem, cert: front.pem, key: front-key.pem}}
type NBDTLSConfig struct {
	// CA is required: PEM certificates, one of which must sign the
	// remote's certificate (the system's roots are not used: a remote
	// disk is trusted on the operator's word, not a public CA's).
	CA settings.String `yaml:"ca" label:"nbd tls ca" need:"true"`
	// Cert and Key, both or neither, are the client certificate the leg
	// presents, for a remote that requires one (stackd's tls.client_ca,
	// nbdkit's --tls-verify-peer).
	Cert settings.String `yaml:"cert" label:"nbd tls cert"`
	Key  settings.String `yaml:"key" label:"nbd tls key"`
	// ServerName is the name the remote's certificate must carry
	// (absent: the URI's host, an address matching an IP SAN; for
	// nbds+unix, "localhost").
	ServerName settings.String `yaml:"server_name" label:"nbd tls server_name"`
}

// given reports whether a tls section was written, and its first line.
func (t *NBDTLSConfig) given() (bool, int) {
	line := 0
	for _, v := range []settings.String{t.CA, t.Cert, t.Key, t.ServerName} {
		if v.Line > 0 && (line == 0 || v.Line < line) {
			line = v.Line
		}
	}
	return line > 0, line
}

func (t *NBDTLSConfig) check(p *settings.Problems) {
	for _, v := range []struct {
		s    settings.String
		what string
	}{{t.CA, "ca"}, {t.Cert, "cert"}, {t.Key, "key"}, {t.ServerName, "server_name"}} {
		if v.s.Line > 0 && v.s.S == "" {
			p.At(v.s.Line, "nbd tls %s must not be empty", v.what)
		}
	}
	switch {
	case t.Cert.Line > 0 && t.Key.Line == 0:
		p.At(t.Cert.Line, "nbd tls cert needs a key too")
	case t.Key.Line > 0 && t.Cert.Line == 0:
		p.At(t.Key.Line, "nbd tls key needs a cert too")
	}
}

// ResolvePaths makes the TLS files' paths absolute, as a file target's.
func (c *NBDConfig) ResolvePaths(dir string) {
	for _, v := range []*settings.String{&c.TLS.CA, &c.TLS.Cert, &c.TLS.Key} {
		if v.S == "" {
			continue
		}
		f := FileConfig{Path: *v}
		f.ResolvePaths(dir)
		v.S = f.Path.S
	}
}

// load reads the TLS files into a client configuration; each problem
// is reported at the line of the key naming the file.
func (t *NBDTLSConfig) load(p *settings.Problems, now time.Time) *tls.Config {
	pem, err := os.ReadFile(t.CA.S)
	if err != nil {
		p.At(t.CA.Line, "nbd tls ca: %v", err)
		return nil
	}
	cfg := &tls.Config{RootCAs: x509.NewCertPool(), ServerName: t.ServerName.S, MinVersion: tls.VersionTLS12}
	if !cfg.RootCAs.AppendCertsFromPEM(pem) {
		p.At(t.CA.Line, "nbd tls ca %s holds no PEM certificate", t.CA.S)
		return nil
	}
	if t.Cert.Line == 0 {
		return cfg
	}
	pair, err := tls.LoadX509KeyPair(t.Cert.S, t.Key.S)
	if err != nil {
		p.At(t.Key.Line, "nbd tls key %s with cert %s: %v", t.Key.S, t.Cert.S, err)
		return nil
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	switch {
	case err != nil:
		p.At(t.Cert.Line, "nbd tls cert %s: %v", t.Cert.S, err)
		return nil
	case now.After(leaf.NotAfter):
		p.At(t.Cert.Line, "nbd tls cert %s expired at %s", t.Cert.S, leaf.NotAfter.UTC().Format(time.RFC3339))
		return nil
	case now.Before(leaf.NotBefore):
		p.At(t.Cert.Line, "nbd tls cert %s is not valid before %s", t.Cert.S, leaf.NotBefore.UTC().Format(time.RFC3339))
		return nil
	}
	cfg.Certificates = []tls.Certificate{pair}
	return cfg
}

func (c *NBDConfig) Kind() string     { return KindNBD }
func (c *NBDConfig) LegSpecs() []Spec { return nil }

func (c *NBDConfig) Check(p *settings.Problems) {
	checkBlocks(p, "nbd size", c.Size)
	if c.URI.Line > 0 {
		o, err := remote.ParseURI(c.URI.S)
		if err != nil {
			p.At(c.URI.Line, "nbd %v", err)
		} else {
			c.opts, c.parsed = o, true
		}
	}
	tlsGiven, tlsLine := c.TLS.given()
	switch {
	case !c.parsed:
	case c.opts.Secure && !tlsGiven:
		p.At(c.URI.Line, "nbd uri %q: TLS needs a tls section with the CA that signs the remote's certificate, as in tls: {ca: FILE}", c.URI.S)
	case !c.opts.Secure && tlsGiven:
		p.At(tlsLine, "nbd tls: the uri %q is plaintext; write nbds:// (or nbds+unix://) for TLS", c.URI.S)
	}
	c.TLS.check(p)
	if n := c.Connections; n.Line > 0 && (n.N < 1 || n.N > maxNBDConnections) {
		p.At(n.Line, "nbd connections: %d is out of range; want 1 to %d", n.N, maxNBDConnections)
	}
	if d := c.Timeout; d.Line > 0 && d.D < minNBDTimeout {
		p.At(d.Line, "nbd timeout: %v is shorter than %v", d.D, minNBDTimeout)
	}
}

func (c *NBDConfig) NodeSize(legs []Sized) (uint64, error) { return c.host.nodeSize(c.Size.Bytes) }

// options are the remote's options with the settings' values.
func (c *NBDConfig) options() remote.Options {
	o := c.opts
	o.TLS = c.tls
	o.Connections = int(c.Connections.N)
	o.Timeout = c.Timeout.D
	o.Size = c.Size.Bytes
	if o.Size == 0 {
		o.Size = c.host.size
	}
	return o
}

// checkHost asks the remote for its size: needed when none is
// configured, and, when one is, compared with it if the remote answers.
// A remote that does not answer is a problem only without a size.
func (c *NBDConfig) checkHost(h *Host, p *settings.Problems, bad bool) {
	if bad || !c.parsed {
		return
	}
	if c.opts.Secure {
		if c.tls = c.TLS.load(p, time.Now()); c.tls == nil {
			return
		}
	}
	size, _, err := remote.Probe(c.options(), probeBound)
	switch {
	case err != nil && c.Size.Line == 0:
		p.At(c.URI.Line, "nbd %s: cannot learn the remote's size (%v); give a size, and the export starts without the remote", c.URI.S, err)
	case err != nil:
	case c.Size.Line != 0 && size != c.Size.Bytes:
		p.At(c.Size.Line, "nbd %s: the remote is %s (%d bytes), not the size %s given", c.URI.S, settings.FormatSize(size), size, c.Size)
	case size%blockSize != 0:
		p.At(c.URI.Line, "nbd %s: the remote's size, %d bytes, is not a multiple of %d", c.URI.S, size, blockSize)
	default:
		c.host.size, c.host.known = size, true
	}
}

func (c *NBDConfig) Build(legs []Device, b BuildContext) (Device, error) {
	if !c.parsed {
		return nil, fmt.Errorf("nbd: uri %q was not checked", c.URI.S)
	}
	if c.opts.Secure && c.tls == nil {
		// Built without the host check (a stack made in Go).
		var p settings.Problems
		if c.tls = c.TLS.load(&p, time.Now()); c.tls == nil {
			return nil, p.Err()
		}
	}
	o := c.options()
	o.Log = b.Log
	r, err := remote.New(o)
	if err != nil {
		return nil, err
	}
	return &NBDLeg{Remote: r}, nil
}

func (c *NBDConfig) Describe() []string {
	words := []string{"uri=" + settings.Word(c.URI.S)}
	if c.Connections.N > 1 {
		words = append(words, "connections="+strconv.FormatInt(c.Connections.N, 10))
	}
	if c.Timeout.D != 0 {
		words = append(words, "timeout="+c.Timeout.String())
	}
	return words
}

// NBDLeg is a built nbd leaf: the remote target, Controlled so that
// `stackd status` shows its connections.
type NBDLeg struct{ *remote.Remote }

// RemoteStats is a remote leg's counters, as the metrics read them.
type RemoteStats = remote.Stats

// RemoteStateNames are the names of RemoteStats.States' values.
// (RemoteStats.Latency's buckets are targets.LatencyBounds.)
var RemoteStateNames = remote.StateNames

// State implements Controlled: each connection's state, reconnects,
// requests queued and in flight.
func (l *NBDLeg) State() any { return l.Remote.State() }

// Act implements Controlled: an nbd leg takes no action; its connections
// mend themselves.
func (l *NBDLeg) Act(action string, leg int) error {
	return fmt.Errorf("%w %q: an nbd leg takes no actions; it reconnects by itself", ErrUnknownAction, action)
}

// RemoteStats returns the leg's counters, for Node.Remote.
func (l *NBDLeg) RemoteStats() RemoteStats { return l.Remote.Stats() }
