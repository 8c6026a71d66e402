package peers

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd/wire"
)

// The TLS tests: certificates made in Go (stackdtest.GenerateCerts) in the
// layout libnbd and qemu read from a directory; a daemon with TLS
// optional, an open export and a TLS-only one that only client 1's
// certificate may open, and a TCP listener that admits 127.0.0.1 alone.
// The kernel client (nbd-client -certfile) is the VM test's, not these.

// tlsHandshakeTimeout is the daemon's handshake timeout here: short, so
// that the stalled handshake is cut off quickly.
const tlsHandshakeTimeout = 2 * time.Second

type tlsFixture struct {
	d  *daemon
	cs *stackdtest.Certs
}

func startTLSDaemon(t *testing.T) *tlsFixture {
	t.Helper()
	cs := stackdtest.MustGenerateCerts(t)
	d := startDaemon(t, daemonConfig{
		TCP:      true,
		Metrics:  true,
		TCPAllow: `[127.0.0.1/32, "::1"]`,
		Limits:   fmt.Sprintf("{handshake_timeout: %s}", tlsHandshakeTimeout),
		TLS:      cs.ServerTLS("optional"),
		Exports: []export{
			{Name: "default", Default: true, Stack: memStack(4 * MiB)},
			{Name: "secret", TLS: "required", Allow: "[{client_cert: {dns: " + stackdtest.Client1DNS + "}}]", Stack: memStack(16 * MiB)},
		},
	})
	return &tlsFixture{d: d, cs: cs}
}

// nbds is the URI of an export over TLS with the certificates of dir,
// the server verified against its CA.
func (f *tlsFixture) nbds(name, dir string) string {
	return "nbds://" + f.d.TCPAddr + "/" + name + "?tls-certificates=" + dir + "&tls-verify-peer=true"
}

// qemuTLS is qemu's side of the export over TLS: the x509 client
// credentials object on dir (its CA verifies the server, its client pair
// is presented), and the image's options, for --image-opts.
func (f *tlsFixture) qemuTLS(name, dir string) (object []string, image string) {
	host, port, _ := net.SplitHostPort(f.d.TCPAddr)
	return []string{"--object", "tls-creds-x509,id=tls0,dir=" + dir + ",endpoint=client,verify-peer=on"},
		"driver=nbd,server.type=inet,server.host=" + host + ",server.port=" + port + ",export=" + name + ",tls-creds=tls0"
}

// refused runs a peer that must fail, and checks that the daemon counted
// the refusal in metric (a series of its scrape): the count, unlike the
// log, is not rate-limited.
func (f *tlsFixture) refused(t *testing.T, metric string, name string, args ...string) {
	t.Helper()
	before := f.d.scrape(t)[metric]
	if out, err := run(t, name, args...); err == nil {
		t.Errorf("%s succeeded; want a refusal\n%s", cmdline(name, args), out)
	}
	f.d.alive()
	f.waitCounted(t, metric, before)
}

// waitCounted waits (bounded) for metric to pass before.
func (f *tlsFixture) waitCounted(t *testing.T, metric string, before int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f.d.scrape(t)[metric] <= before {
		if time.Now().After(deadline) {
			t.Fatalf("%s stayed at %d", metric, before)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLogged waits (bounded) for the daemon's log to contain s.
func waitLogged(t *testing.T, d *daemon, s string) {
	t.Helper()
	stackdtest.WaitFor(t, fmt.Sprintf("the daemon to log %q", s), 10*time.Second, func() bool {
		return strings.Contains(d.Log().String(), s)
	})
}

func TestTLSPeers(t *testing.T) {
	need(t, "nbdinfo")
	f := startTLSDaemon(t)
	dir := f.cs.Dir

	t.Run("nbdinfo", func(t *testing.T) {
		v := nbdinfo(t, f.nbds("secret", dir))
		if len(v.Exports) != 1 || v.Exports[0].Size != 64*MiB {
			t.Fatalf("nbdinfo over TLS: %+v", v)
		}
		// Over TLS the list shows the TLS-only export too.
		out := mustRun(t, "nbdinfo", "--list", "--json", f.nbds("", dir))
		if !strings.Contains(out, `"secret"`) {
			t.Errorf("LIST over TLS lacks the TLS-only export:\n%s", out)
		}
	})

	t.Run("nbdcopy", func(t *testing.T) {
		need(t, "nbdcopy")
		nbdcopyRoundTrip(t, f.nbds("secret", dir), 64*MiB, 9, "over TLS") // the whole export
	})

	t.Run("nbdsh", func(t *testing.T) {
		// Two TLS connections, multi-conn: a flush on one makes the
		// data visible on the other.
		// libnbd lets a URI name local files (tls-certificates) only
		// when the program allows it, as nbdinfo and nbdcopy do.
		script := strings.ReplaceAll(multiConnScript, "h1 = nbd.NBD()\n", "h1 = nbd.NBD()\nh1.set_uri_allow_local_file(True)\n")
		script = strings.ReplaceAll(script, "h2 = nbd.NBD()\n", "h2 = nbd.NBD()\nh2.set_uri_allow_local_file(True)\n")
		out := runPython(t, script, f.nbds("secret", dir))
		if !strings.Contains(out, "multi-conn ok") {
			t.Fatalf("nbdsh over TLS: %s", out)
		}
	})

	t.Run("qemu", func(t *testing.T) {
		need(t, "qemu-io")
		need(t, "qemu-img")
		obj, image := f.qemuTLS("secret", dir)
		args := append(append([]string{}, obj...), "--image-opts", "-c", "write -P 0x5a 1048000 200000",
			"-c", "read -P 0x5a 1048000 200000", image)
		out, err := run(t, "qemu-io", args...)
		if err != nil || qemuIOFailed(out) {
			t.Fatalf("%s: %v\n%s", cmdline("qemu-io", args), err, out)
		}
		info := mustRun(t, "qemu-img", append(append([]string{"info"}, obj...), "--image-opts", image)...)
		if !strings.Contains(info, "64 MiB") {
			t.Errorf("qemu-img info over TLS:\n%s", info)
		}
		img := filepath.Join(t.TempDir(), "out.raw")
		mustRun(t, "qemu-img", append(append([]string{"convert"}, obj...), "--image-opts", "-O", "raw", image, img)...)
		if _, n := fileSHA256(t, img); n != 64*MiB {
			t.Errorf("qemu-img convert over TLS copied %d bytes", n)
		}
	})

	t.Run("fio", func(t *testing.T) {
		need(t, "fio")
		if out, err := run(t, "fio", "--enghelp=nbd"); err != nil || !strings.Contains(out, "uri") {
			stackdtest.Missing(t, "fio has no nbd ioengine: %v\n%s", err, out)
		}
		// fio's engine does not let its URI name local files, so libnbd
		// takes the CA from where it looks by default, $HOME/.pki/libnbd;
		// it presents no client certificate from there, so fio gets a
		// daemon of its own that asks for none.
		home := t.TempDir()
		copyFile(t, filepath.Join(dir, stackdtest.CACert), filepath.Join(home, ".pki", "libnbd", stackdtest.CACert))
		t.Setenv("HOME", home)
		fd := startDaemon(t, daemonConfig{
			TCP: true,
			TLS: fmt.Sprintf("{cert: %q, key: %q, mode: required}",
				filepath.Join(dir, stackdtest.ServerCert), filepath.Join(dir, stackdtest.ServerKey)),
			Exports: []export{{Name: "secret", TLS: "required", Stack: memStack(16 * MiB)}},
		})
		jobs := runFio(t, "nbds://"+fd.TCPAddr+"/secret", "--name=tls", "--rw=randrw", "--bsrange=4k-1M", "--blockalign=4k",
			"--iodepth=16", "--size=32M", "--verify=crc32c", "--do_verify=1")
		for _, j := range jobs {
			if j.Write.Bytes == 0 || j.Read.Bytes < j.Write.Bytes {
				t.Errorf("job %s: read %d, wrote %d bytes: verification did not run", j.Name, j.Read.Bytes, j.Write.Bytes)
			}
		}
	})

	// Each refusal is clear, logged with its reason, and leaves the
	// server serving everyone else.
	t.Run("plaintext to a TLS-only export", func(t *testing.T) {
		f.refused(t, `stackd_options_refused_total{reason="tls_required"}`, "nbdinfo", "nbd://"+f.d.TCPAddr+"/secret")
	})
	t.Run("plaintext LIST", func(t *testing.T) {
		out := mustRun(t, "nbdinfo", "--list", "--json", "nbd://"+f.d.TCPAddr+"/")
		if strings.Contains(out, `"secret"`) || !strings.Contains(out, `"default"`) {
			t.Errorf("plaintext LIST shows the TLS-only export, or not the open one:\n%s", out)
		}
	})
	t.Run("untrusted CA", func(t *testing.T) {
		// GnuTLS does not even offer a certificate whose issuer the
		// server did not name; Go's client would, and be refused as of
		// an unknown authority (nbd/tls_test.go).
		f.refused(t, `stackd_tls_handshakes_total{outcome="bad_certificate"}`, "nbdinfo", f.nbds("secret", f.cs.UntrustedDir))
		waitLogged(t, f.d, "didn't provide a certificate")
	})
	t.Run("expired certificate", func(t *testing.T) {
		f.refused(t, `stackd_tls_handshakes_total{outcome="bad_certificate"}`, "nbdinfo", f.nbds("secret", f.cs.ExpiredDir))
		waitLogged(t, f.d, "certificate has expired")
	})
	t.Run("another client's identity", func(t *testing.T) {
		f.refused(t, `stackd_options_refused_total{reason="export_allow"}`, "nbdinfo", f.nbds("secret", f.cs.Client2Dir))
		// Client 2 may open the open export over TLS.
		nbdinfo(t, f.nbds("default", f.cs.Client2Dir))
	})
	t.Run("STARTTLS after GO", func(t *testing.T) {
		c := dialTCP(t, f.d.TCPAddr, nil)
		if err := greetAndFlags(c); err != nil {
			t.Fatal(err)
		}
		rc, err := goExport(c, "default")
		if err != nil {
			t.Fatal(err)
		}
		// In transmission an option is a request of bad magic: the
		// connection ends. (The option's 16 bytes are less than a
		// request header; a client that goes on to its ClientHello
		// completes one.)
		rc.Write(append(wire.AppendOption(nil, wire.OptStartTLS, nil), 0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0, 0, 0, 0, 0, 0))
		if err := expectClosed(rc, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("TLS record of garbage", func(t *testing.T) {
		before := f.d.scrape(t)[`stackd_tls_handshakes_total{outcome="failed"}`]
		c := startTLSRaw(t, f.d.TCPAddr)
		c.Write(bytes.Repeat([]byte{0x16, 0x03, 0x03, 0xff, 0xff}, 20))
		if err := expectClosed(c, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		f.waitCounted(t, `stackd_tls_handshakes_total{outcome="failed"}`, before)
	})
	t.Run("stalled TLS handshake", func(t *testing.T) {
		before := f.d.scrape(t)[`stackd_tls_handshakes_total{outcome="timeout"}`]
		c := startTLSRaw(t, f.d.TCPAddr)
		// The start of a ClientHello record, then silence.
		c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01})
		start := time.Now()
		if err := expectClosed(c, 3*tlsHandshakeTimeout); err != nil {
			t.Fatal(err)
		}
		t.Logf("closed after %v (handshake timeout %v)", time.Since(start), tlsHandshakeTimeout)
		f.waitCounted(t, `stackd_tls_handshakes_total{outcome="timeout"}`, before)
	})
	t.Run("address outside the listener's list", func(t *testing.T) {
		before := f.d.scrape(t)[`stackd_connections_rejected_total{reason="listen_allow"}`]
		c := dialTCP(t, f.d.TCPAddr, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)})
		if err := readGreeting(c); err == nil {
			t.Fatal("127.0.0.2 got a greeting; the listener admits 127.0.0.1 alone")
		}
		f.waitCounted(t, `stackd_connections_rejected_total{reason="listen_allow"}`, before)
	})

	// After all of that, everyone else is still served.
	nbdinfo(t, f.nbds("secret", dir))
	nbdinfo(t, "nbd://"+f.d.TCPAddr+"/default")
}

// copyFile copies from to to, making to's directory.
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// dialTCP connects to addr from the local address from (nil: any).
func dialTCP(t *testing.T, addr string, from net.Addr) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: from}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(rawTimeout))
	return c
}

// startTLSRaw sends STARTTLS and returns the connection once the server
// has acknowledged it, for the client to begin (or botch) the handshake.
func startTLSRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c := dialTCP(t, addr, nil)
	if err := greetAndFlags(c); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(wire.AppendOption(nil, wire.OptStartTLS, nil)); err != nil {
		t.Fatal(err)
	}
	r, err := readOptionReply(c)
	if err != nil || r.opt != wire.OptStartTLS || r.typ != wire.RepAck {
		t.Fatalf("STARTTLS: reply %+v, %v", r, err)
	}
	return c
}

// tlsDaemon starts a daemon with TLS required and client certificates
// from cs's CA.
func tlsDaemon(t *testing.T, cs *stackdtest.Certs, exports []export, limits string) *daemon {
	t.Helper()
	return startDaemon(t, daemonConfig{
		TLS:     cs.ServerTLS("required"),
		Limits:  limits,
		Exports: exports,
	})
}

// tlsConnector opens raw connections over TLS to d's unix socket, as
// client 1 of cs: STARTTLS, the handshake, then GO.
func tlsConnector(d *daemon, cs *stackdtest.Certs) rawConnector {
	return func(t *testing.T, name string) *rawConn {
		t.Helper()
		c := dialRaw(t, d.Socket)
		if err := greetAndFlags(c); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(wire.AppendOption(nil, wire.OptStartTLS, nil)); err != nil {
			t.Fatal(err)
		}
		if r, err := readOptionReply(c); err != nil || r.typ != wire.RepAck {
			t.Fatalf("STARTTLS: reply %+v, %v", r, err)
		}
		tc := tls.Client(c, cs.ClientConfig(&cs.Client1))
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake: %v", err)
		}
		rc, err := goExport(tc, name)
		if err != nil {
			t.Fatalf("GO over TLS: %v", err)
		}
		return rc
	}
}

func generateCerts(t *testing.T) *stackdtest.Certs {
	t.Helper()
	cs := stackdtest.MustGenerateCerts(t)
	return cs
}

// TestTLSRawBadRequests runs every bad-request row of TestRawBadRequests
// again over TLS (mode required, client certificates), on the unix
// socket: the raw client over tls.Client.
func TestTLSRawBadRequests(t *testing.T) {
	cs := generateCerts(t)
	d := tlsDaemon(t, cs, badRequestExports(), "")
	badRequests(t, d, tlsConnector(d, cs))
}

// TestTLSRawFraming runs TestRawFraming's rows over TLS: framing broken
// inside the TLS stream ends that connection alone.
func TestTLSRawFraming(t *testing.T) {
	cs := generateCerts(t)
	d := tlsDaemon(t, cs, framingExports(), framingLimits)
	framing(t, d, tlsConnector(d, cs))
}
