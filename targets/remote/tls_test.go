package remote

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/targets"
)

// serveTLS runs an nbd server that requires TLS, and a client
// certificate signed by certs' CA, over a memory target on loopback
// until the test ends; it returns the address.
func serveTLS(t *testing.T, certs *stackdtest.Certs, size uint64) string {
	t.Helper()
	l := listen(t)
	serveOptions(t, l, nbd.Options{
		Exports: []nbd.ExportConfig{{Name: "disk0", Device: targets.NewMemory(size, 0)}},
		TLS:     certs.ServerConfig(true), TLSMode: nbd.TLSRequired,
	})
	return l.Addr().String()
}

// TestTLS: an nbds:// leg to a server that requires TLS and a client
// certificate: data round-trips over several connections, verified
// against the CA with the URI's address as the server name.
func TestTLS(t *testing.T) {
	certs := stackdtest.MustGenerateCerts(t)
	addr := serveTLS(t, certs, 16<<20)
	o, err := ParseURI("nbds://" + addr + "/disk0")
	if err != nil || !o.Secure {
		t.Fatalf("ParseURI: %+v, %v", o, err)
	}
	o.Timeout, o.Connections = bound, 2
	o.TLS = certs.ClientConfig(&certs.Client1)
	o.TLS.ServerName = "" // the address, 127.0.0.1, an IP SAN of the server's
	r := newRemote(t, o)
	const n, bs = 64, 64 << 10
	wait := submitMany(t, r, n, func(i int, b *bioset.Bio) {
		b.Init(bioset.OpWrite, uint64(i)*bs, bs, pattern(i, bs), nil)
	})
	for i, err := range wait() {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	for i := range n {
		buf := make([]byte, bs)
		if err := doBio(t, r, bioset.OpRead, uint64(i)*bs, buf, bs); err != nil || !bytes.Equal(buf, pattern(i, bs)) {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	if s := r.State(); !strings.HasPrefix(s.URI, "nbds://") {
		t.Errorf("state URI %q", s.URI)
	}
	if size, _, err := Probe(o, bound); err != nil || size != 16<<20 {
		t.Errorf("Probe over TLS: %d, %v", size, err)
	}
}

// TestTLSRefused: a leg that cannot make TLS work never falls back to
// plaintext: against a CA that did not sign the server, without the
// client certificate the server requires, and against a server without
// TLS, every request fails with EIO at its timeout, the connection's
// last error says why, and the log says it once, not once per dial.
func TestTLSRefused(t *testing.T) {
	certs := stackdtest.MustGenerateCerts(t)
	other := stackdtest.MustGenerateCerts(t) // another CA, which signed nothing of the server's
	tlsAddr := serveTLS(t, certs, 4<<20)
	plain := listen(t)
	serve(t, plain, 4<<20)
	for _, c := range []struct {
		name, addr string
		want       string
	}{
		{"wrong CA", tlsAddr, "certificate signed by unknown authority"},
		{"no client certificate", tlsAddr, "certificate required"},
		{"server without TLS", plain.Addr().String(), "STARTTLS"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs stackdtest.SyncBuffer
			o := Options{Network: "tcp", Address: c.addr, Export: "disk0", Secure: true,
				Timeout: 500 * time.Millisecond, Size: 4 << 20, Log: slog.New(slog.NewTextHandler(&logs, nil))}
			switch c.name {
			case "wrong CA":
				o.TLS = other.ClientConfig(&other.Client1)
			case "no client certificate":
				o.TLS = certs.ClientConfig(nil)
			default:
				o.TLS = certs.ClientConfig(&certs.Client1)
			}
			r := newRemote(t, o)
			if err := doBio(t, r, bioset.OpRead, 0, make([]byte, 4096), 4096); !errors.Is(err, syscall.EIO) {
				t.Fatalf("read: %v, want EIO", err)
			}
			stackdtest.WaitFor(t, "a few dials", bound, func() bool {
				e := r.State().Connections[0].LastError
				if !strings.Contains(e, c.want) {
					t.Logf("last error %q", e)
				}
				return strings.Contains(e, c.want) && strings.Count(logs.String(), "\n") >= 1
			})
			time.Sleep(4 * backoffMin) // more dials, which must not log again
			if s := r.State().Connections[0]; s.State == StateConnected {
				t.Fatalf("connected: %+v", s)
			}
			got := logs.String()
			if n := strings.Count(got, "cannot connect"); n != 1 || !strings.Contains(got, c.want) || !strings.Contains(got, "nbds://") {
				t.Errorf("log (%d lines of cannot connect, want 1 with %q):\n%s", n, c.want, got)
			}
		})
	}
}

// TestTLSOptions: the URI and the TLS settings must agree.
func TestTLSOptions(t *testing.T) {
	certs := stackdtest.MustGenerateCerts(t)
	if _, err := New(Options{Network: "tcp", Address: "127.0.0.1:1", Secure: true, Size: 1 << 20}); err == nil || !strings.Contains(err.Error(), "needs TLS") {
		t.Errorf("nbds without TLS: %v", err)
	}
	if _, err := New(Options{Network: "tcp", Address: "127.0.0.1:1", TLS: certs.ClientConfig(nil), Size: 1 << 20}); err == nil || !strings.Contains(err.Error(), "plaintext") {
		t.Errorf("TLS on nbd://: %v", err)
	}
	o := Options{Network: "unix", Address: "/x.sock", Secure: true, TLS: certs.ClientConfig(nil)}
	o.TLS.ServerName = ""
	if got := o.clientOptions(clientOpts()).TLS.ServerName; got != "localhost" {
		t.Errorf("server name over a unix socket %q, want localhost", got)
	}
	o = Options{Network: "tcp", Address: "[::1]:10809", Secure: true, TLS: certs.ClientConfig(nil)}
	o.TLS.ServerName = ""
	if got := o.clientOptions(clientOpts()).TLS.ServerName; got != "::1" {
		t.Errorf("server name %q, want ::1", got)
	}
}

func clientOpts() client.Options { return client.Options{} }
