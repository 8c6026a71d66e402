package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/nbd/wire"
)

func certs(t testing.TB) *stackdtest.Certs {
	t.Helper()
	s := stackdtest.MustGenerateCerts(t)
	return s
}

// tlsExports is an open export "open" and a TLS-only one "secret".
func tlsExports(mode TLSMode, cfg *tls.Config) Options {
	return Options{
		Exports: []ExportConfig{
			{Name: "open", Device: newMemDev(1<<20, allCaps), Default: true},
			{Name: "secret", Device: newMemDev(1<<20, allCaps), TLSRequired: true},
		},
		TLS: cfg, TLSMode: mode,
	}
}

// hello reads the greeting and answers with fixed newstyle and no zeroes.
func (r *rawConn) hello() {
	r.t.Helper()
	r.greet()
	r.clientFlags(wire.FlagCFixedNewstyle | wire.FlagCNoZeroes)
}

// upgrade sends STARTTLS, expects its ACK and runs the client's side of
// the handshake.
func (r *rawConn) upgrade(cfg *tls.Config) error {
	r.t.Helper()
	r.option(wire.OptStartTLS, nil)
	if typ, data := r.reply(wire.OptStartTLS); typ != wire.RepAck {
		r.t.Fatalf("STARTTLS: reply %#x %q", typ, data)
	}
	tc := tls.Client(r.nc, cfg)
	if err := tc.Handshake(); err != nil {
		return err
	}
	r.nc = tc
	r.br = bufio.NewReader(tc)
	return nil
}

func (r *rawConn) expectReply(opt uint32, want uint32) []byte {
	r.t.Helper()
	typ, data := r.reply(opt)
	if typ != want {
		r.t.Fatalf("option %d: reply %#x (%q), want %#x", opt, typ, data, want)
	}
	return data
}

func (r *rawConn) list() []string {
	r.t.Helper()
	r.option(wire.OptList, nil)
	var names []string
	for {
		typ, data := r.reply(wire.OptList)
		if typ == wire.RepAck {
			return names
		}
		if typ != wire.RepServer {
			r.t.Fatalf("LIST: reply %#x %q", typ, data)
		}
		name, _, _ := wire.CutString(data)
		names = append(names, name)
	}
}

// TestTLSSelective: SELECTIVETLS, doc/proto.md "TLS support" point by
// point: plaintext LIST hides the TLS-only export, INFO and GO for it get
// TLS_REQD; STARTTLS is acknowledged and upgrades; a second STARTTLS gets
// INVALID; over TLS everything is listed and served.
func TestTLSSelective(t *testing.T) {
	cs := certs(t)
	obs := &countingObserver{}
	o := tlsExports(TLSOptional, cs.ServerConfig(false))
	o.Observer = obs
	ts := startServer(t, o, "tcp")

	r := dialRaw(t, ts)
	r.hello()
	if got := r.list(); len(got) != 1 || got[0] != "open" {
		t.Fatalf("plaintext LIST: %q, want only the open export", got)
	}
	r.option(wire.OptInfo, wire.AppendInfoRequest(nil, "secret"))
	r.expectReply(wire.OptInfo, wire.RepErrTLSReqd)
	r.option(wire.OptGo, wire.AppendInfoRequest(nil, "secret"))
	r.expectReply(wire.OptGo, wire.RepErrTLSReqd)
	if n := obs.count(&obs.optRefused, RefusedTLSRequired); n != 2 {
		t.Errorf("%d refusals counted as tls_required, want 2", n)
	}
	r.option(wire.OptStartTLS, []byte("x"))
	r.expectReply(wire.OptStartTLS, wire.RepErrInvalid)
	if err := r.upgrade(cs.ClientConfig(nil)); err != nil {
		t.Fatal(err)
	}
	r.option(wire.OptStartTLS, nil)
	r.expectReply(wire.OptStartTLS, wire.RepErrInvalid)
	if got := r.list(); len(got) != 2 {
		t.Fatalf("LIST over TLS: %q, want both exports", got)
	}
	size, _ := r.haggle("secret", true, false)
	if size != 1<<20 {
		t.Fatalf("size %d", size)
	}
	// Transmission over TLS: the writer sends everything through its
	// buffer. A write, then a read of it.
	payload := bytes.Repeat([]byte("tls!"), 1024)
	r.request(wire.CmdWrite, 0, 1, 4096, uint32(len(payload)), payload)
	if code, cookie, _ := r.simple(0); code != 0 || cookie != 1 {
		t.Fatalf("WRITE: reply code %d cookie %d", code, cookie)
	}
	r.request(wire.CmdRead, 0, 2, 4096, uint32(len(payload)), nil)
	_, typ, cookie, data := r.chunk()
	if typ != wire.ReplyTypeOffsetData || cookie != 2 || !bytes.Equal(data[8:], payload) {
		t.Fatalf("READ over TLS: type %d cookie %d, %d bytes", typ, cookie, len(data))
	}
	if n := obs.count(&obs.tlsShakes, TLSHandshakeOK); n != 1 {
		t.Errorf("%d TLS handshakes counted ok, want 1", n)
	}

	// EXPORT_NAME of the TLS-only export in plaintext cannot be refused
	// with an error: the session ends, and others go on being served.
	p := dialRaw(t, ts)
	p.hello()
	p.option(wire.OptExportName, []byte("secret"))
	p.expectClosed()
	r.request(wire.CmdRead, 0, 3, 0, 512, nil)
	if _, _, cookie, _ := r.chunk(); cookie != 3 {
		t.Fatalf("READ after another client's refusal: cookie %d", cookie)
	}
}

// TestTLSForced: FORCEDTLS refuses every option but STARTTLS and ABORT
// with TLS_REQD until TLS is up, and never after.
func TestTLSForced(t *testing.T) {
	cs := certs(t)
	ts := startServer(t, tlsExports(TLSRequired, cs.ServerConfig(false)), "tcp")
	r := dialRaw(t, ts)
	r.hello()
	for _, opt := range []uint32{wire.OptList, wire.OptStructuredReply, wire.OptInfo, wire.OptGo, wire.OptSetMetaContext, 42} {
		r.option(opt, nil)
		r.expectReply(opt, wire.RepErrTLSReqd)
	}
	if err := r.upgrade(cs.ClientConfig(nil)); err != nil {
		t.Fatal(err)
	}
	r.option(42, nil)
	r.expectReply(42, wire.RepErrUnsup)
	r.haggle("open", true, true)

	// EXPORT_NAME before TLS: hang up.
	p := dialRaw(t, ts)
	p.hello()
	p.option(wire.OptExportName, []byte("open"))
	p.expectClosed()

	// ABORT is answered before TLS.
	a := dialRaw(t, ts)
	a.hello()
	a.option(wire.OptAbort, nil)
	a.expectReply(wire.OptAbort, wire.RepAck)
}

// TestTLSClientDial: the client library's STARTTLS, with a client
// certificate verified against the CA, and the allow lists' identities.
func TestTLSClientCertificates(t *testing.T) {
	cs := certs(t)
	obs := &countingObserver{}
	o := tlsExports(TLSRequired, cs.ServerConfig(true))
	o.Observer = obs
	o.Exports[1].Allow = []AllowRule{{Kind: AllowCertDNS, Name: stackdtest.Client1DNS}}
	o.Exports = append(o.Exports,
		ExportConfig{Name: "by-cn", Device: newMemDev(4096, 0), Allow: []AllowRule{{Kind: AllowCertCN, Name: stackdtest.Client2CN}}},
		ExportConfig{Name: "by-spki", Device: newMemDev(4096, 0), Allow: []AllowRule{{Kind: AllowCertSPKI, SPKI: cs.Client1SPKI}}},
	)
	ts := startServer(t, o, "tcp")
	dial := func(export string, cert *tls.Certificate) error {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		c, err := client.Dial(ctx, "tcp", ts.addr, client.Options{ExportName: export, StructuredReplies: true, TLS: cs.ClientConfig(cert)})
		if err != nil {
			return err
		}
		buf := make([]byte, 4096)
		err = c.Read(ctx, 0, buf)
		c.Close()
		return err
	}
	for _, tc := range []struct {
		export string
		cert   *tls.Certificate
		ok     bool
	}{
		{"secret", &cs.Client1, true},
		{"secret", &cs.Client2, false},
		{"by-cn", &cs.Client2, true},
		{"by-cn", &cs.Client1, false},
		{"by-spki", &cs.Client1, true},
		{"by-spki", &cs.Client2, false},
		{"open", &cs.Client2, true},
	} {
		err := dial(tc.export, tc.cert)
		var oe *client.OptionError
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s as %s: %v", tc.export, tc.cert.Leaf.Subject.CommonName, err)
		case !tc.ok && (!errors.As(err, &oe) || oe.Reply != wire.RepErrPolicy):
			t.Errorf("%s as %s: %v, want NBD_REP_ERR_POLICY", tc.export, tc.cert.Leaf.Subject.CommonName, err)
		}
	}
	if n := obs.count(&obs.optRefused, RefusedAllowList); n != 3 {
		t.Errorf("%d refusals counted as export_allow, want 3", n)
	}
	// Certificates the CA did not sign, that have expired, or that are
	// not for client auth, and none: the handshake fails.
	for _, cert := range []*tls.Certificate{&cs.Untrusted, &cs.Expired, &cs.ServerUsage, nil} {
		if err := dial("open", cert); err == nil {
			t.Errorf("a bad client certificate was accepted")
		}
	}
	waitFor(t, "four bad certificates counted", func() bool { return obs.count(&obs.tlsShakes, TLSHandshakeBadCert) == 4 })
}

// TestTLSHandshakeBounded: the handshake timeout holds through the TLS
// handshake (a client that starts one and stalls), and garbage, or
// plaintext behind the STARTTLS, ends the session.
func TestTLSHandshakeBounded(t *testing.T) {
	cs := certs(t)
	obs := &countingObserver{}
	o := tlsExports(TLSOptional, cs.ServerConfig(false))
	// Long enough for a real handshake under the race detector on a
	// loaded machine: the last dial below needs one.
	o.HandshakeTimeout = 2 * time.Second
	o.Observer = obs
	ts := startServer(t, o, "tcp")
	begin := func() *rawConn {
		r := dialRaw(t, ts)
		r.hello()
		r.option(wire.OptStartTLS, nil)
		r.expectReply(wire.OptStartTLS, wire.RepAck)
		return r
	}
	// A ClientHello's first bytes, then nothing.
	stall := begin()
	stall.write([]byte{0x16, 0x03, 0x01, 0x00, 0x80, 0x01})
	start := time.Now()
	stall.expectClosed()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stalled TLS handshake closed after %v", d)
	}
	waitFor(t, "a timed-out TLS handshake", func() bool { return obs.count(&obs.tlsShakes, TLSHandshakeTimeout) == 1 })

	garbage := begin()
	garbage.write(bytes.Repeat([]byte{0xff}, 64))
	garbage.expectClosed()

	// Plaintext sent along with the STARTTLS.
	r := dialRaw(t, ts)
	r.hello()
	r.write(append(wire.AppendOption(nil, wire.OptStartTLS, nil), wire.AppendOption(nil, wire.OptList, nil)...))
	r.expectReply(wire.OptStartTLS, wire.RepAck)
	r.expectClosed()
	waitFor(t, "the failures counted", func() bool { return obs.count(&obs.handshakeFailed, reasonTLS) == 2 })

	// Everyone else is still served.
	c := ts.dial(t, client.Options{ExportName: "secret", TLS: cs.ClientConfig(nil)})
	if err := c.Read(tctx(t), 0, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
}

// TestTLSOff: without TLS STARTTLS is unsupported, never TLS_REQD; a
// TLS-only export needs TLS configured.
func TestTLSOff(t *testing.T) {
	if _, err := NewServer(tlsExports(TLSOff, nil)); err == nil {
		t.Fatal("a TLS-only export was accepted without TLS")
	}
	if _, err := NewServer(tlsExports(TLSOptional, nil)); err == nil {
		t.Fatal("TLSOptional was accepted without a configuration")
	}
}

// TestAllowCIDRAndUnix: a listener's CIDR list closes other addresses at
// accept (127.0.0.2 is loopback too, and outside 127.0.0.1/32); an
// export's list takes CIDRs and unix peer uids and gids.
func TestAllowCIDRAndUnix(t *testing.T) {
	obs := &countingObserver{}
	o := Options{Observer: obs, Exports: []ExportConfig{
		{Name: "any", Device: newMemDev(4096, 0), Default: true},
		{Name: "one", Device: newMemDev(4096, 0), Allow: []AllowRule{{Kind: AllowCIDR, CIDR: netip.MustParsePrefix("127.0.0.1/32")}}},
		{Name: "root", Device: newMemDev(4096, 0), Allow: []AllowRule{{Kind: AllowUnixUID, ID: 0}}},
		{Name: "mine", Device: newMemDev(4096, 0), Allow: []AllowRule{{Kind: AllowUnixGID, ID: uint32(unixGID())}}},
	}}
	srv, err := NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeListener(l, ListenerOptions{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l2)
	ul, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ul)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })

	ts := &testServer{srv: srv, network: "tcp", addr: l.Addr().String()}
	from2 := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}
	refused := dialRawFrom(t, ts, from2)
	refused.expectClosed()
	waitFor(t, "the refusal counted", func() bool { return obs.count(&obs.refused, RefusedListenAllow) == 1 })
	r := dialRaw(t, ts)
	r.start("one", false, false)

	open := &testServer{srv: srv, network: "tcp", addr: l2.Addr().String()}
	p := dialRawFrom(t, open, from2)
	p.hello()
	if got := p.list(); len(got) != 1 || got[0] != "any" {
		t.Errorf("LIST from 127.0.0.2: %q", got)
	}
	p.option(wire.OptGo, wire.AppendInfoRequest(nil, "one"))
	p.expectReply(wire.OptGo, wire.RepErrPolicy)

	us := &testServer{srv: srv, network: "unix", addr: ul.Addr().String()}
	u := dialRaw(t, us)
	u.hello()
	u.option(wire.OptGo, wire.AppendInfoRequest(nil, "one"))
	u.expectReply(wire.OptGo, wire.RepErrPolicy)
	u.option(wire.OptInfo, wire.AppendInfoRequest(nil, "root"))
	if unixUID() == 0 {
		u.expectReply(wire.OptInfo, wire.RepInfo)
		u.expectReply(wire.OptInfo, wire.RepAck)
	} else {
		u.expectReply(wire.OptInfo, wire.RepErrPolicy)
	}
	u.haggle("mine", false, false)
}

func unixUID() int { return os.Getuid() }
func unixGID() int { return os.Getgid() }

// TestTLSSocketArmsWriteDeadline: in transmission the socket under a TLS
// connection arms the write deadline before a write, so that a write
// crypto/tls makes on the reader's goroutine long after the last reply
// does not meet an expired deadline; during the handshake it leaves the
// deadline alone.
func TestTLSSocketArmsWriteDeadline(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go io.Copy(io.Discard, b)
	s := &tlsSocket{Conn: a, replyTimeout: time.Minute}
	a.SetWriteDeadline(aLongTimeAgo)
	if _, err := s.Write([]byte("x")); err == nil {
		t.Fatal("a handshake write ignored the deadline conn.handshake set")
	}
	s.transmitting = true
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatalf("a write in transmission met a stale deadline: %v", err)
	}
}

// TestTLSMinVersion: a configuration that GetConfigForClient hands out
// still refuses TLS below 1.2.
func TestTLSMinVersion(t *testing.T) {
	cs := certs(t)
	inner := cs.ServerConfig(false)
	inner.MinVersion = tls.VersionTLS10
	o := tlsExports(TLSOptional, &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return inner, nil }})
	ts := startServer(t, o, "tcp")
	old := cs.ClientConfig(nil)
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	r := dialRaw(t, ts)
	r.hello()
	if err := r.upgrade(old); err == nil {
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
	c := ts.dial(t, client.Options{ExportName: "secret", TLS: cs.ClientConfig(nil)})
	if err := c.Read(tctx(t), 0, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
}

// TestTLSNotFixedNewstyle: a client without NBD_FLAG_C_FIXED_NEWSTYLE is
// served in NOTLS (doc/proto.md, "TLS support"): no TLS_REQD to it, and
// no STARTTLS; in FORCEDTLS it reaches no export.
func TestTLSNotFixedNewstyle(t *testing.T) {
	cs := certs(t)
	ts := startServer(t, tlsExports(TLSRequired, cs.ServerConfig(false)), "tcp")
	r := dialRaw(t, ts)
	r.greet()
	r.clientFlags(wire.FlagCNoZeroes)
	r.option(wire.OptStartTLS, nil)
	r.expectReply(wire.OptStartTLS, wire.RepErrPolicy)
	r.option(wire.OptList, nil)
	r.expectReply(wire.OptList, wire.RepErrPolicy)
	r.option(wire.OptExportName, []byte("open"))
	r.expectClosed()
}
