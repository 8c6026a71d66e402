package configs

import (
	"crypto/tls"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd"
)

func tlsYAML(cert, key, ca, mode string) string {
	y := "tls:\n  cert: " + cert + "\n  key: " + key + "\n"
	if ca != "" {
		y += "  client_ca: " + ca + "\n"
	}
	if mode != "" {
		y += "  mode: " + mode + "\n"
	}
	return y
}

const tlsExportsYAML = `listen:
  - tcp: 127.0.0.1:10809
    allow: [127.0.0.1/32, "::1", 10.0.0.0/8]
exports:
  - name: open
    default: true
    stack: {memory: {size: 1MiB}}
  - name: secret
    tls: required
    allow:
      - client_cert: {dns: client1.test}
      - client_cert: {cn: client2}
      - client_cert: {spki_sha256: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}
      - cidr: 10.1.0.0/16
      - unix_uid: 0
      - unix_gid: 100
    stack: {memory: {size: 1MiB}}
`

func TestTLSConfig(t *testing.T) {
	cs := stackdtest.MustGenerateCerts(t)
	dir := cs.Dir
	path := filepath.Join(dir, "stackd.yaml")
	y := tlsYAML(stackdtest.ServerCert, stackdtest.ServerKey, stackdtest.CACert, "required") + tlsExportsYAML
	c, err := Parse(path, []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckHost(); err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings for a key of mode 600: %v", c.Warnings)
	}
	if c.TLS == nil || c.TLS.Mode != nbd.TLSRequired || c.TLS.Cert != filepath.Join(dir, stackdtest.ServerCert) {
		t.Fatalf("tls: %+v", c.TLS)
	}
	if l := c.Listeners[0]; len(l.Allow) != 3 || l.Allow[1] != netip.MustParsePrefix("::1/128") {
		t.Errorf("listener allow: %v", l.Allow)
	}
	secret := c.Exports[1]
	if !secret.TLSRequired || len(secret.Allow) != 6 || secret.Allow[0].Kind != nbd.AllowCertDNS ||
		secret.Allow[2].SPKI[1] != 0x11 || secret.Allow[5].Kind != nbd.AllowUnixGID || secret.Allow[5].ID != 100 {
		t.Errorf("secret: %+v", secret)
	}

	var tree strings.Builder
	FormatTree(&tree, c)
	if !strings.Contains(tree.String(), "secret (1MiB, tls only, allow: 6 rules)") {
		t.Errorf("tree:\n%s", tree.String())
	}

	// The server's configuration: a handshake with client 1 verifies.
	st, err := c.NewServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	if !st.NotAfter().Equal(cs.ServerNotAfter.Truncate(1e9)) {
		t.Errorf("NotAfter %v, want %v", st.NotAfter(), cs.ServerNotAfter)
	}
	handshake := func(cert *tls.Certificate) error {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		a.SetDeadline(time.Now().Add(5 * time.Second))
		b.SetDeadline(time.Now().Add(5 * time.Second))
		done := make(chan error, 1)
		go func() { done <- tls.Server(a, st.Config()).Handshake() }()
		cerr := tls.Client(b, cs.ClientConfig(cert)).Handshake()
		// TLS 1.3: the client is done before the server has verified
		// its certificate; the server's alert must not wait for a read.
		b.Close()
		serr := <-done
		if cerr != nil {
			return cerr
		}
		return serr
	}
	if err := handshake(&cs.Client1); err != nil {
		t.Fatal(err)
	}
	if err := handshake(&cs.Untrusted); err == nil {
		t.Error("a certificate of an untrusted CA was accepted")
	}

	// Reload: the files replaced by an expired pair are refused, and the
	// old credentials stay; a valid pair replaces them.
	copyFile(t, filepath.Join(cs.ExpiredServerDir, stackdtest.ServerCert), filepath.Join(dir, stackdtest.ServerCert))
	copyFile(t, filepath.Join(cs.ExpiredServerDir, stackdtest.ServerKey), filepath.Join(dir, stackdtest.ServerKey))
	if _, err := st.Reload(); err == nil || !strings.Contains(err.Error(), path+":2: tls cert") || !strings.Contains(err.Error(), "expired") {
		t.Errorf("reload of an expired certificate: %v", err)
	}
	if err := handshake(&cs.Client1); err != nil {
		t.Errorf("after a failed reload: %v", err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestTLSConfigErrors: each problem with the certificate files is a
// FILE:LINE error of CheckHost; a key others can read, a warning.
func TestTLSConfigErrors(t *testing.T) {
	cs := stackdtest.MustGenerateCerts(t)
	path := filepath.Join(cs.Dir, "stackd.yaml")
	const export = "exports:\n  - name: a\n    stack: {memory: {size: 1MiB}}\n"
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"missing cert", tlsYAML("nope.pem", stackdtest.ServerKey, "", ""), ":2: tls cert: open "},
		{"missing key", tlsYAML(stackdtest.ServerCert, "nope.pem", "", ""), ":3: tls key: open "},
		{"mismatched", tlsYAML("mismatched/server-cert.pem", "mismatched/server-key.pem", "", ""), ":3: tls key "},
		{"expired", tlsYAML("expired-server/server-cert.pem", "expired-server/server-key.pem", "", ""), ":2: tls cert "},
		{"bad CA", tlsYAML(stackdtest.ServerCert, stackdtest.ServerKey, stackdtest.ServerKey, ""), ":4: tls client_ca "},
	} {
		c, err := Parse(path, []byte(tc.yaml+export))
		if err != nil {
			t.Errorf("%s: Parse: %v", tc.name, err)
			continue
		}
		if err := c.CheckHost(); err == nil || !strings.HasPrefix(err.Error(), path+tc.want) {
			t.Errorf("%s: %v, want %s%s...", tc.name, err, path, tc.want)
		}
	}

	os.Chmod(filepath.Join(cs.Dir, stackdtest.ServerKey), 0o640)
	c, err := Parse(path, []byte(tlsYAML(stackdtest.ServerCert, stackdtest.ServerKey, "", "")+export))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckHost(); err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0].Error(), ":3: tls key") || !strings.Contains(c.Warnings[0].Error(), "its group") {
		t.Errorf("warnings: %v", c.Warnings)
	}

	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"tls required without tls", "exports:\n  - name: a\n    tls: required\n    stack: {memory: {size: 1MiB}}\n", ":3: export \"a\": tls: required needs a tls section"},
		{"client_cert without client_ca", tlsYAML("c", "k", "", "") + "exports:\n  - name: a\n    allow:\n      - client_cert: {cn: x}\n    stack: {memory: {size: 1MiB}}\n", ":7: export \"a\": a client_cert rule needs tls.client_ca"},
		{"bad mode", tlsYAML("c", "k", "", "sometimes") + export, ":4: tls mode \"sometimes\""},
		{"bad cidr", "listen:\n  - tcp: 127.0.0.1:1\n    allow: [10.0.0.1/8]\n" + export, ":3: listener allow \"10.0.0.1/8\": has bits set past the prefix length; did you mean 10.0.0.0/8?"},
		{"unix allow", "listen:\n  - unix: /tmp/s\n    allow: [10.0.0.0/8]\n" + export, ":3: a unix socket's clients have no address"},
		{"unknown allow", "exports:\n  - name: a\n    allow:\n      - cidrs: 1.2.3.4\n    stack: {memory: {size: 1MiB}}\n", ":4: unknown allow entry \"cidrs\" (did you mean \"cidr\"?)"},
		{"two identities", tlsYAML("c", "k", "ca", "") + "exports:\n  - name: a\n    allow:\n      - client_cert: {cn: x, dns: y}\n    stack: {memory: {size: 1MiB}}\n", ":8: allow client_cert names the identity one way"},
		{"bad spki", tlsYAML("c", "k", "ca", "") + "exports:\n  - name: a\n    allow:\n      - client_cert: {spki_sha256: abc}\n    stack: {memory: {size: 1MiB}}\n", ":8: allow client_cert spki_sha256: want the 64 hex digits"},
	} {
		_, err := Parse(path, []byte(tc.yaml))
		if err == nil || !strings.HasPrefix(err.Error(), path+tc.want) {
			t.Errorf("%s: %v, want %s%s...", tc.name, err, path, tc.want)
		}
	}
}
