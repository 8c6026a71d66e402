package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stackd/stackd/configs"
	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd/client"
)

// TestTLSReload: SIGHUP's reload gives new handshakes the new certificate
// while a connection made with the old one goes on being served.
func TestTLSReload(t *testing.T) {
	old := stackdtest.MustGenerateCerts(t)
	renewed := stackdtest.MustGenerateCerts(t)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	text := "listen:\n  - unix: " + sock + "\nmetrics:\n  address: off\n" +
		"tls:\n  cert: " + filepath.Join(old.Dir, stackdtest.ServerCert) + "\n  key: " + filepath.Join(old.Dir, stackdtest.ServerKey) +
		"\n  mode: required\nexports:\n  - name: disk\n    stack: {memory: {size: 1MiB}}\n"
	cfg, err := configs.Parse(filepath.Join(t.TempDir(), "stackd.yaml"), []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.CheckHost(); err != nil {
		t.Fatal(err)
	}
	d, err := start(cfg, slog.New(slog.DiscardHandler), serveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dial := func(cs *stackdtest.Certs) (*client.Client, error) {
		return client.Dial(ctx, "unix", sock, client.Options{ExportName: "disk", TLS: cs.ClientConfig(nil)})
	}
	before, err := dial(old)
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	for _, f := range []string{stackdtest.ServerCert, stackdtest.ServerKey} {
		b, err := os.ReadFile(filepath.Join(renewed.Dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(old.Dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d.reloadTLS()
	after, err := dial(renewed)
	if err != nil {
		t.Fatalf("a handshake after the reload: %v", err)
	}
	defer after.Close()
	if c, err := dial(old); err == nil {
		c.Close()
		t.Error("after the reload, a handshake still got the old certificate")
	}
	buf := make([]byte, 4096)
	for _, c := range []*client.Client{before, after} {
		if err := c.Write(ctx, 0, buf, 0); err != nil {
			t.Fatal(err)
		}
		if err := c.Read(ctx, 0, buf); err != nil {
			t.Fatal(err)
		}
	}
}
