package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackd/stackd/configs"
	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd/client"
)

func metricsTestConfig(t *testing.T, metricsAddr string) (*configs.Config, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	text := `
listen:
  - unix: ` + sock + `
metrics:
  address: ` + metricsAddr + `
exports:
  - name: disk
    stack:
      split:
        max_bytes: 64KiB
        leg:
          stripe:
            chunk: 16KiB
            legs:
              - memory: {size: 4MiB}
              - memory: {size: 4MiB}
`
	cfg, err := configs.Parse("<test>", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg, sock
}

var httpGet = stackdtest.HTTPGet

// TestReadiness walks start's phases one by one: /healthz answers from the
// moment the metrics endpoint is up, /readyz only once every stack is
// built and every listener is up, and no longer once stop has begun.
func TestReadiness(t *testing.T) {
	cfg, sock := metricsTestConfig(t, "127.0.0.1:0")
	var logs bytes.Buffer
	d := newDaemon(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err := d.serveMetrics(cfg.MetricsAddress, false); err != nil {
		t.Fatal(err)
	}
	base := "http://" + d.metricsAddr.String()
	status := func(path string) int {
		code, _ := httpGet(t, base+path)
		return code
	}
	if s := status("/healthz"); s != http.StatusOK {
		t.Errorf("/healthz with nothing built: %d", s)
	}
	if s := status("/readyz"); s != http.StatusServiceUnavailable {
		t.Errorf("/readyz with nothing built: %d, want 503", s)
	}
	if err := d.build(cfg); err != nil {
		t.Fatal(err)
	}
	if s := status("/readyz"); s != http.StatusServiceUnavailable {
		t.Errorf("/readyz with no listener: %d, want 503", s)
	}
	if err := d.listen(cfg); err != nil {
		t.Fatal(err)
	}
	d.metrics.SetReady(true)
	if s := status("/readyz"); s != http.StatusOK {
		t.Errorf("/readyz once serving: %d, want 200", s)
	}

	// Requests through the daemon show up in its metrics.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "unix", sock, client.Options{ExportName: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for i := range 3 {
		if err := c.Write(ctx, uint64(i)*4096, buf, 0); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	_, body := httpGet(t, base+"/metrics")
	for _, want := range []string{
		`stackd_export_requests_total{export="disk",op="write"} 3`,
		`stackd_layer_requests_total{layer="disk/split/stripe",op="write"} 3`,
		`stackd_layer_pool_capacity_bios{layer="disk/split"} 1024`,
		`stackd_connections_accepted_total 1`,
		`stackd_build_info{`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// stop: not ready at once, the endpoint closed at the end.
	d.metrics.SetReady(false)
	if s := status("/readyz"); s != http.StatusServiceUnavailable {
		t.Errorf("/readyz once stopping: %d, want 503", s)
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Errorf("the metrics endpoint still answers after stop")
	}
}

// TestStartMetricsOff: with metrics off nothing listens for them, and the
// daemon serves all the same.
func TestStartMetricsOff(t *testing.T) {
	cfg, sock := metricsTestConfig(t, "off")
	if cfg.MetricsAddress != "" {
		t.Fatalf("metrics address %q for off", cfg.MetricsAddress)
	}
	d, err := start(cfg, slog.New(slog.DiscardHandler), serveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.metricsSrv != nil {
		t.Errorf("a metrics server with metrics off")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "unix", sock, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Read(ctx, 0, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestStartMetricsAddressTaken: a metrics address that cannot be bound
// stops start before any stack is built.
func TestStartMetricsAddressTaken(t *testing.T) {
	cfg, _ := metricsTestConfig(t, "127.0.0.1:0")
	first, err := start(cfg, slog.New(slog.DiscardHandler), serveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer first.stop()
	cfg2, _ := metricsTestConfig(t, first.metricsAddr.String())
	if d, err := start(cfg2, slog.New(slog.DiscardHandler), serveOptions{}); err == nil {
		d.stop()
		t.Fatal("started with the metrics address taken")
	} else if !strings.Contains(err.Error(), "metrics") {
		t.Errorf("error %q does not say it is the metrics address", err)
	}
}
