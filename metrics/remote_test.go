package metrics

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stackd/stackd/configs"
)

// TestRemoteLegSeries: a front rig whose export is an nbd leg over
// another rig's export reports the leg's connection state, reconnects,
// retries, timeouts, requests in flight and round trips, and the README
// documents each of those metrics.
func TestRemoteLegSeries(t *testing.T) {
	g := remoteWorkload(t)
	const layer = "layer=front/nbd"
	if v := g.value(t, "stackd_remote_connections", layer, "state=connected"); v != 1 {
		t.Errorf("connected: %v", v)
	}
	for _, name := range []string{"stackd_remote_reconnects_total", "stackd_remote_requests_retried_total",
		"stackd_remote_requests_timed_out_total", "stackd_remote_requests_in_flight"} {
		if v := g.value(t, name, layer); v != 0 {
			t.Errorf("%s: %v", name, v)
		}
	}
	if n := g.find(t, "stackd_remote_round_trip_seconds", layer).GetHistogram().GetSampleCount(); n < 5 {
		t.Errorf("round trips: %d, want ≥ 5", n)
	}
	readme := string(readFile(t, "../README.md"))
	for name := range g {
		if strings.HasPrefix(name, "stackd_remote_") && !strings.Contains(readme, "`"+name+"`") {
			t.Errorf("README does not document %s", name)
		}
	}
}

// remoteWorkload serves an export of testConfig from one rig, and from a
// front rig an export that is an nbd leg over it; it writes five blocks
// through the front and returns the front's metrics.
func remoteWorkload(t *testing.T) gathered {
	t.Helper()
	back := startRig(t, testConfig, false, Options{})
	cfg, err := configs.Parse("<test>", []byte(fmt.Sprintf(`
exports:
  - name: front
    default: true
    stack:
      nbd: {uri: "nbd+unix:///disk?socket=%s", timeout: 5s}
`, back.sock)))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.CheckHost(); err != nil {
		t.Fatal(err)
	}
	front := startRigConfig(t, cfg, true, Options{})
	c := front.dial(t, "front")
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	buf := make([]byte, 4096)
	for i := range 5 {
		if err := c.Write(ctx, uint64(i)*4096, buf, 0); err != nil {
			t.Fatal(err)
		}
	}
	return gather(t, front.m)
}
