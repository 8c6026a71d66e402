package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/stack"
	"github.com/stackd/stackd/targets"
)

// testConfig has an ordinary export and one whose single-bio pools force
// every fan-out through the rescuers.
const testConfig = `
exports:
  - name: disk
    default: true
    stack:
      split:
        max_bytes: 64KiB
        leg:
          stripe:
            chunk: 16KiB
            legs:
              - memory: {size: 8MiB}
              - memory: {size: 8MiB}
  - name: tiny
    stack:
      split:
        max_bytes: 64KiB
        pool: {capacity: 1, rescuer: true}
        leg:
          stripe:
            chunk: 4KiB
            pool: {capacity: 1, rescuer: true}
            legs:
              - memory: {size: 8MiB}
              - memory: {size: 8MiB}
  - name: faulty
    stack:
      error:
        ops: [write]
        ranges: [{offset: 0, length: 4KiB}]
        leg:
          flakey:
            up: 1h
            down: 1h
            mode: drop_writes
            leg: {memory: {size: 1MiB}}
  - name: mirrored
    stack:
      mirror:
        legs:
          - memory: {size: 1MiB}
          - memory: {size: 1MiB}
`

const diskSize = 16 << 20

// runWorkload drives r with a scripted workload whose every count is
// known, and returns the scrape that follows it. It also feeds m one
// device failure directly: the memory targets never fail, and the error
// series must exist for the checks of deploy/.
func runWorkload(t testing.TB, r *rig) gathered {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()

	c := r.dial(t, "disk")
	const writes = 10
	buf := make([]byte, 4096)
	for i := range writes {
		buf[0] = byte(i)
		if err := c.Write(ctx, uint64(i)*8192, buf, 0); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if err := c.Read(ctx, uint64(i)*4096, buf); err != nil {
			t.Fatal(err)
		}
	}
	// A 128 KiB read: split into two pieces, each striped over both legs.
	big := make([]byte, 128<<10)
	if err := c.Read(ctx, 0, big); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Past the end: EINVAL from the protocol engine, never the device.
	err := c.Read(ctx, diskSize-1024, buf)
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("read past the end: %v, want EINVAL", err)
	}

	// A tiny-pool export under concurrent 256 KiB writes and reads: each
	// fans out wider than the pools, so the pools punt to their rescuers.
	tc := r.dial(t, "tiny")
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 8 {
		wg.Go(func() {
			p := make([]byte, 256<<10)
			for i := range 4 {
				off := uint64((g*4+i)%30) * uint64(len(p))
				if err := tc.Write(ctx, off, p, 0); err != nil {
					errs <- err
					return
				}
				if err := tc.Read(ctx, off, p); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// The fault layers: the error layer fails a write into its range;
	// the flakey layer, sent down, drops one elsewhere.
	fc := r.dial(t, "faulty")
	if err := fc.Write(ctx, 0, buf, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write into the error layer's range: %v, want EIO", err)
	}
	if err := faultNode(t, r, "faulty/error/flakey").Act(stack.ActionDownNow, -1); err != nil {
		t.Fatal(err)
	}
	if err := fc.Write(ctx, 8192, buf, 0); err != nil {
		t.Fatalf("write to the flakey layer while down: %v", err)
	}
	fc.Close()

	// A handshake that fails: the client gives up on an unknown export.
	if _, err := client.Dial(ctx, "unix", r.sock, client.Options{ExportName: "nonesuch"}); err == nil {
		t.Fatal("dialled an unknown export")
	}
	waitFor(t, "the failed handshake to be counted and its connection closed", func() bool {
		g := gather(t, r.m)
		return g.sum("stackd_handshake_failures_total") == 1 && g.sum("stackd_connections_open") == 2
	})

	// One device failure, as a failing disk would report it.
	r.m.RequestStarted("disk", bioset.OpRead)
	r.m.RequestDone("disk", bioset.OpRead, 4096, syscall.EROFS, time.Millisecond)
	return gather(t, r.m)
}

// faultNode returns the control of the node at path in r's stacks.
func faultNode(t testing.TB, r *rig, path string) stack.Controlled {
	t.Helper()
	for _, ws := range r.m.stacks {
		if n, _, _, err := ws.st.Lookup(path); err == nil && n.Control != nil {
			return n.Control
		}
	}
	t.Fatalf("no node %s to control", path)
	return nil
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	stackdtest.WaitFor(t, what, ioTimeout, cond)
}

func TestWorkloadSeries(t *testing.T) {
	r := startRig(t, testConfig, true, Options{NoRuntimeCollectors: true})
	g := runWorkload(t, r)
	disk := label("export", "disk")

	// Per export and op.
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"stackd_export_requests_total", []string{disk, "op=write"}, 10},
		{"stackd_export_bytes_total", []string{disk, "op=write"}, 10 * 4096},
		// Three 4 KiB reads, one 128 KiB read, and the failed one; the
		// read past the end never reached the device.
		{"stackd_export_requests_total", []string{disk, "op=read"}, 5},
		{"stackd_export_bytes_total", []string{disk, "op=read"}, 3*4096 + 128<<10},
		{"stackd_export_requests_total", []string{disk, "op=flush"}, 1},
		{"stackd_export_bytes_total", []string{disk, "op=flush"}, 0},
		{"stackd_export_requests_total", []string{disk, "op=trim"}, 0},
		{"stackd_export_bad_requests_total", []string{disk, "error=EINVAL"}, 1},
		// EROFS is not an NBD error: the client got EIO.
		{"stackd_export_errors_total", []string{disk, "op=read", "error=EIO"}, 1},
		{"stackd_export_requests_in_flight", []string{disk}, 0},
		{"stackd_export_requests_in_flight", []string{"export=tiny"}, 0},
		{"stackd_export_requests_total", []string{"export=tiny", "op=write"}, 32},
		{"stackd_export_size_bytes", []string{disk}, diskSize},

		// Per layer: every write is one 4 KiB bio at the split and at
		// the stripe, and at one leg.
		{"stackd_layer_requests_total", []string{"layer=disk/split", "op=write"}, 10},
		{"stackd_layer_requests_total", []string{"layer=disk/split/stripe", "op=write"}, 10},
		{"stackd_layer_bytes_total", []string{"layer=disk/split/stripe", "op=write"}, 10 * 4096},
		{"stackd_layer_errors_total", []string{"layer=disk/split"}, 0},
		// The 128 KiB read reaches the stripe as two 64 KiB pieces.
		{"stackd_layer_requests_total", []string{"layer=disk/split/stripe", "op=read"}, 3 + 2},

		// Server-wide.
		{"stackd_connections_open", nil, 2},
		{"stackd_connections_accepted_total", nil, 4},
		{"stackd_connections_rejected_total", []string{"reason=max_connections"}, 0},
		{"stackd_connections_rejected_total", []string{"reason=max_connections_per_client"}, 0},
		{"stackd_handshake_failures_total", []string{"reason=eof"}, 1},
		{"stackd_handshake_failures_total", []string{"reason=timeout"}, 0},
		{"stackd_payload_budget_capacity_bytes", nil, nbd.DefaultPayloadBudget},
		{"stackd_payload_budget_in_use_bytes", nil, 0},

		{"stackd_layer_pool_capacity_bios", []string{"layer=tiny/split"}, 1},
		{"stackd_layer_pool_capacity_bios", []string{"layer=disk/split"}, 1024},
		{"stackd_layer_pool_rescuer_enabled", []string{"layer=tiny/split/stripe"}, 1},

		// Per fault layer; the failure counts as an error of the layer
		// and of none below it.
		{"stackd_fault_requests_failed_total", []string{"layer=faulty/error"}, 1},
		{"stackd_fault_requests_dropped_total", []string{"layer=faulty/error"}, 0},
		{"stackd_fault_requests_failed_total", []string{"layer=faulty/error/flakey"}, 0},
		{"stackd_fault_requests_dropped_total", []string{"layer=faulty/error/flakey"}, 1},
		{"stackd_layer_errors_total", []string{"layer=faulty/error"}, 1},
		{"stackd_layer_errors_total", []string{"layer=faulty/error/flakey"}, 0},
		{"stackd_export_errors_total", []string{"export=faulty", "op=write", "error=EIO"}, 1},
		{"stackd_layer_requests_total", []string{"layer=faulty/error/flakey/memory", "op=write"}, 0},
	}
	for _, c := range checks {
		if got := g.value(t, c.name, c.labels...); got != c.want {
			t.Errorf("%s{%s} = %v, want %v", c.name, strings.Join(c.labels, ","), got, c.want)
		}
	}
	// Writes went to the legs 4 KiB each; the legs together saw them all.
	if got := g.sum("stackd_layer_bytes_total", "op=write") -
		g.sum("stackd_layer_bytes_total", "op=write", "layer=tiny/split") -
		g.sum("stackd_layer_bytes_total", "op=write", "layer=tiny/split/stripe") -
		g.sum("stackd_layer_bytes_total", "op=write", "layer=tiny/split/stripe/leg0") -
		g.sum("stackd_layer_bytes_total", "op=write", "layer=tiny/split/stripe/leg1") -
		g.sum("stackd_layer_bytes_total", "op=write", "layer=faulty/error") -
		g.sum("stackd_layer_bytes_total", "op=write", "layer=faulty/error/flakey"); got != 3*10*4096 {
		t.Errorf("disk's layers saw %v write bytes, want %v (three levels of 40960)", got, 3*10*4096)
	}

	// The latency histogram counts every answered request.
	h := g.find(t, "stackd_export_request_duration_seconds", disk, "op=write").GetHistogram()
	if h.GetSampleCount() != 10 || h.GetSampleSum() <= 0 {
		t.Errorf("write latency: count %d sum %v, want 10 and > 0", h.GetSampleCount(), h.GetSampleSum())
	}
	if n := len(h.GetBucket()); n != len(latencyBounds) {
		t.Errorf("write latency: %d buckets, want %d", n, len(latencyBounds))
	}
	if _, ok := findSeries(g, "stackd_export_request_duration_seconds", disk, "op=cache"); ok {
		t.Errorf("a histogram for an op never asked for")
	}

	// The tiny pools ran dry and their rescuers kept the requests going:
	// every punted bio was rescued.
	var punted float64
	g.each("stackd_layer_pool_punted_bios_total", func(l map[string]string, m *dto.Metric) {
		p := m.GetCounter().GetValue()
		rescued := g.value(t, "stackd_layer_pool_rescued_bios_total", label("layer", l["layer"]))
		if rescued != p {
			t.Errorf("layer %s: %v bios punted, %v rescued", l["layer"], p, rescued)
		}
		if q := g.value(t, "stackd_layer_pool_rescue_queue_bios", label("layer", l["layer"])); q != 0 {
			t.Errorf("layer %s: %v bios still queued for the rescuer", l["layer"], q)
		}
		if u := g.value(t, "stackd_layer_pool_in_use_bios", label("layer", l["layer"])); u != 0 {
			t.Errorf("layer %s: %v bios in use when idle", l["layer"], u)
		}
		if strings.HasPrefix(l["layer"], "tiny/") {
			punted += p
		}
	})
	if punted == 0 {
		t.Errorf("the single-bio pools never punted to their rescuers")
	}
	// The mirror's legs, each in sync after the initial resync, which
	// copied the whole 1 MiB to leg 1.
	for _, leg := range []string{"0", "1"} {
		if v := g.value(t, "stackd_mirror_leg_state", "layer=mirrored/mirror", "leg="+leg, "state=in_sync"); v != 1 {
			t.Errorf("mirror leg %s: in_sync %v", leg, v)
		}
		if v := g.sum("stackd_mirror_leg_state", "layer=mirrored/mirror", "leg="+leg); v != 1 {
			t.Errorf("mirror leg %s: %v states at once", leg, v)
		}
	}
	if v := g.value(t, "stackd_mirror_resync_bytes_total", "layer=mirrored/mirror", "leg=1"); v != 1<<20 {
		t.Errorf("mirror leg 1 resynced %v bytes, want 1MiB", v)
	}
	if w := g.value(t, "stackd_layer_pool_allocation_waits_total", "layer=tiny/split/stripe"); w == 0 {
		t.Errorf("the tiny stripe's allocations never waited")
	}
	if w := g.value(t, "stackd_layer_pool_allocation_wait_seconds_total", "layer=tiny/split/stripe"); w <= 0 {
		t.Errorf("the tiny stripe's allocations waited no time")
	}
}

func findSeries(g gathered, name string, want ...string) (*dto.Metric, bool) {
	for _, m := range g[name].GetMetric() {
		if hasLabels(m, want) {
			return m, true
		}
	}
	return nil, false
}

// TestLint runs promlint over everything a scrape returns after the
// workload, runtime collectors included.
func TestLint(t *testing.T) {
	r := startRig(t, testConfig, true, Options{})
	runWorkload(t, r)
	problems, err := testutil.GatherAndLint(r.m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	if n, err := testutil.GatherAndCount(r.m.Registry()); err != nil || n < 100 {
		t.Errorf("a scrape returned %d series (%v); the workload should produce more", n, err)
	}
}

// TestNoUnboundedLabels checks that no label value is something a client
// chose: every label comes from the configuration or a fixed set.
func TestNoUnboundedLabels(t *testing.T) {
	r := startRig(t, testConfig, true, Options{NoRuntimeCollectors: true})
	g := runWorkload(t, r)
	allowed := map[string]bool{"export": true, "layer": true, "op": true, "error": true,
		"reason": true, "outcome": true, "le": true, "version": true, "goversion": true, "leg": true, "state": true}
	for name, mf := range g {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if !allowed[l.GetName()] {
					t.Errorf("%s: label %s=%q", name, l.GetName(), l.GetValue())
				}
				if l.GetName() == "export" && l.GetValue() != "disk" && l.GetValue() != "tiny" && l.GetValue() != "faulty" && l.GetValue() != "mirrored" {
					t.Errorf("%s: export %q is not configured", name, l.GetValue())
				}
			}
		}
	}
}

func TestHistogramBuckets(t *testing.T) {
	var h histogram
	for _, d := range []time.Duration{
		-time.Second,          // clock trouble: counts as 0
		0,                     // first bucket
		10 * time.Microsecond, // first bucket: le is inclusive
		10*time.Microsecond + 1,
		time.Millisecond,
		time.Minute, // +Inf
	} {
		h.observe(d)
	}
	buckets, count, sum := h.snapshot()
	want := map[float64]uint64{10e-6: 3, 25e-6: 4, 500e-6: 4, 1e-3: 5, 10: 5}
	for le, n := range want {
		if buckets[le] != n {
			t.Errorf("bucket le=%v: %d, want %d", le, buckets[le], n)
		}
	}
	if count != 6 {
		t.Errorf("count %d, want 6", count)
	}
	if wantSum := (10*time.Microsecond + 10*time.Microsecond + 1 + time.Millisecond + time.Minute).Seconds(); sum != wantSum {
		t.Errorf("sum %v, want %v", sum, wantSum)
	}
	if latencyBounds[0] != 10*time.Microsecond || latencyBounds[len(latencyBounds)-1] != 10*time.Second {
		t.Errorf("buckets span %v to %v, want 10µs to 10s", latencyBounds[0], latencyBounds[len(latencyBounds)-1])
	}
}

// TestObserverAllocs: the methods the server calls per request allocate
// nothing, failing requests included once their log line is rate-limited.
func TestObserverAllocs(t *testing.T) {
	m := New(Options{Exports: []string{"a", "b"}, LogInterval: time.Hour, NoRuntimeCollectors: true})
	// Prime the limiters: the first failure of each kind logs.
	m.RequestDone("a", bioset.OpWrite, 4096, syscall.EIO, time.Millisecond)
	m.BadRequest("a", syscall.EINVAL)
	cases := map[string]func(){
		"success": func() {
			m.RequestStarted("a", bioset.OpRead)
			m.RequestDone("a", bioset.OpRead, 4096, 0, 120*time.Microsecond)
		},
		"failure": func() {
			m.RequestStarted("a", bioset.OpWrite)
			m.RequestDone("a", bioset.OpWrite, 4096, syscall.ENOSPC, 3*time.Millisecond)
		},
		"bad request": func() { m.BadRequest("a", syscall.EINVAL) },
		"unknown export": func() {
			m.RequestStarted("zz", bioset.OpRead)
			m.RequestDone("zz", bioset.OpRead, 4096, 0, time.Millisecond)
		},
	}
	for name, f := range cases {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s: %v allocations per request", name, n)
		}
	}
}

// TestRateLimitedLog: a burst of failures writes one line, and the next
// line says how many it stands for.
func TestRateLimitedLog(t *testing.T) {
	var buf syncBuffer
	const every = 50 * time.Millisecond
	m := New(Options{
		Exports:             []string{"a"},
		Logger:              slog.New(slog.NewJSONHandler(&buf, nil)),
		LogInterval:         every,
		NoRuntimeCollectors: true,
	})
	start := time.Now()
	for range 100 {
		m.RequestStarted("a", bioset.OpWrite)
		m.RequestDone("a", bioset.OpWrite, 4096, syscall.EROFS, time.Millisecond)
	}
	if time.Since(start) >= every {
		t.Skip("the burst took longer than the log interval; cannot tell")
	}
	lines := buf.lines(t)
	if len(lines) != 1 {
		t.Fatalf("%d lines for a burst of 100 failures, want 1:\n%s", len(lines), buf.String())
	}
	l := lines[0]
	if l["msg"] != "request failed" || l["export"] != "a" || l["op"] != "write" ||
		l["error"] != "EIO" || l["errno"] != "EROFS" || l["suppressed"] != 0.0 {
		t.Errorf("first line: %v", l)
	}
	time.Sleep(every + every/2)
	m.RequestDone("a", bioset.OpWrite, 4096, syscall.EROFS, time.Millisecond)
	lines = buf.lines(t)
	if len(lines) != 2 || lines[1]["suppressed"] != 99.0 {
		t.Fatalf("after the interval, want a second line with suppressed=99:\n%s", buf.String())
	}
	if got := gather(t, m).value(t, "stackd_export_errors_total", "export=a", "op=write", "error=EIO"); got != 101 {
		t.Errorf("errors counted %v, want 101: the log is limited, the count is not", got)
	}

	// Bad requests have a limiter of their own.
	m.BadRequest("a", syscall.EPERM)
	lines = buf.lines(t)
	if len(lines) != 3 || lines[2]["msg"] != "bad request rejected" || lines[2]["error"] != "EPERM" {
		t.Fatalf("want a bad-request line:\n%s", buf.String())
	}
}

// syncBuffer is the log the tests read, line by line.
type syncBuffer struct{ stackdtest.SyncBuffer }

func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestWireErrorNames(t *testing.T) {
	for errno, want := range map[syscall.Errno]string{
		syscall.EPERM: "EPERM", syscall.EIO: "EIO", syscall.ENOMEM: "ENOMEM",
		syscall.EINVAL: "EINVAL", syscall.ENOSPC: "ENOSPC", syscall.EDQUOT: "ENOSPC",
		syscall.EFBIG: "ENOSPC", syscall.EOVERFLOW: "EOVERFLOW", syscall.ENOTSUP: "ENOTSUP",
		syscall.ESHUTDOWN: "ESHUTDOWN",
		syscall.EROFS:     "EIO", syscall.EBADF: "EIO", syscall.Errno(4000): "EIO",
	} {
		if got := wireErrorName(wireIndex(errno)); got != want {
			t.Errorf("%v: %s, want %s", errno, got, want)
		}
	}
	if got := errnoName(syscall.EROFS); got != "EROFS" {
		t.Errorf("errnoName(EROFS) = %q", got)
	}
}

// TestHandshakeReasons: the documented reasons are there from the start;
// reasons outside them are counted, up to a bound.
func TestHandshakeReasons(t *testing.T) {
	m := New(Options{NoRuntimeCollectors: true})
	g := gather(t, m)
	for _, r := range handshakeReasons {
		if v := g.value(t, "stackd_handshake_failures_total", label("reason", r)); v != 0 {
			t.Errorf("reason %s: %v before any handshake", r, v)
		}
	}
	m.HandshakeFailed("timeout")
	for i := range 3 * maxReasons {
		m.HandshakeFailed("odd" + string(rune('a'+i%26)) + string(rune('a'+i/26)))
	}
	g = gather(t, m)
	if v := g.value(t, "stackd_handshake_failures_total", "reason=timeout"); v != 1 {
		t.Errorf("timeout: %v", v)
	}
	if n := len(g["stackd_handshake_failures_total"].GetMetric()); n > maxReasons+1 {
		t.Errorf("%d reasons: the label is unbounded", n)
	}
	if v := g.sum("stackd_handshake_failures_total"); v != 1+3*maxReasons {
		t.Errorf("%v failures counted, want %d", v, 1+3*maxReasons)
	}
}

// TestConnRefused: refusals are counted by reason, every reason from the
// first scrape on, and a client refused in a loop writes one log line per
// interval, not one per attempt.
func TestConnRefused(t *testing.T) {
	var logged bytes.Buffer
	m := New(Options{
		NoRuntimeCollectors: true,
		LogInterval:         time.Hour,
		Logger:              slog.New(slog.NewTextHandler(&logged, nil)),
	})
	g := gather(t, m)
	for _, r := range refusalReasons {
		if v := g.value(t, "stackd_connections_rejected_total", label("reason", r)); v != 0 {
			t.Errorf("reason %s: %v before any refusal", r, v)
		}
	}
	for range 1000 {
		m.ConnRefused(nbd.RefusedPerClient, "127.0.0.1:40000")
	}
	m.ConnRefused(nbd.RefusedMaxConnections, "127.0.0.2:40001")
	g = gather(t, m)
	if v := g.value(t, "stackd_connections_rejected_total", "reason=max_connections_per_client"); v != 1000 {
		t.Errorf("per client: %v, want 1000", v)
	}
	if v := g.value(t, "stackd_connections_rejected_total", "reason=max_connections"); v != 1 {
		t.Errorf("max connections: %v, want 1", v)
	}
	if n := strings.Count(logged.String(), "connection refused"); n != 1 {
		t.Errorf("%d log lines for 1001 refusals in one interval, want 1:\n%s", n, logged.String())
	}
}

func TestHandler(t *testing.T) {
	m := New(Options{Exports: []string{"a"}, Version: "v9.9.9"})
	ts := httptest.NewServer(m.Handler())
	defer ts.Close()
	get := func(path string) (int, string) {
		t.Helper()
		return stackdtest.HTTPGet(t, ts.URL+path)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	if code, _ := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before SetReady: %d, want 503", code)
	}
	m.SetReady(true)
	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after SetReady: %d, want 200", code)
	}
	m.SetReady(false)
	if code, _ := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz once shutting down: %d, want 503", code)
	}
	code, body := get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`stackd_build_info{goversion="go`, `version="v9.9.9"} 1`,
		`stackd_export_requests_total{export="a",op="read"} 0`,
		`go_goroutines `, `process_open_fds `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if code, _ := get("/nonesuch"); code != http.StatusNotFound {
		t.Errorf("/nonesuch: %d", code)
	}
}

// TestFaultErrnosOnTheWire: each errno an error layer can give reaches
// the client as itself, through the NBD error table, and is counted
// under its NBD name. One error layer per op, stacked, each its own
// errno.
func TestFaultErrnosOnTheWire(t *testing.T) {
	r := startRig(t, `
exports:
  - name: e
    stack:
      error:
        {ops: [read], errno: EIO, leg: {error:
        {ops: [write], errno: ENOSPC, leg: {error:
        {ops: [trim], errno: EPERM, leg: {error:
        {ops: [write_zeroes], errno: ENOMEM, leg: {error:
        {ops: [flush], errno: EINVAL, leg: {memory: {size: 1MiB}}}}}}}}}}}
`, true, Options{NoRuntimeCollectors: true})
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	c := r.dial(t, "e")
	buf := make([]byte, 4096)
	for _, x := range []struct {
		op, name string
		err      error
		want     syscall.Errno
	}{
		{"read", "EIO", c.Read(ctx, 0, buf), syscall.EIO},
		{"write", "ENOSPC", c.Write(ctx, 0, buf, 0), syscall.ENOSPC},
		{"trim", "EPERM", c.Trim(ctx, 0, 4096, 0), syscall.EPERM},
		{"write_zeroes", "ENOMEM", c.WriteZeroes(ctx, 0, 4096, 0), syscall.ENOMEM},
		{"flush", "EINVAL", c.Flush(ctx), syscall.EINVAL},
	} {
		if !errors.Is(x.err, x.want) {
			t.Errorf("%s: %v, want %v", x.op, x.err, x.want)
		}
		// A request is counted once its reply is sent, which may be
		// just after the client has it.
		waitFor(t, x.op+" counted as "+x.name, func() bool {
			return gather(t, r.m).sum("stackd_export_errors_total", "export=e", "op="+x.op, "error="+x.name) == 1
		})
	}
	if err := c.Cache(ctx, 0, 4096); err != nil {
		t.Errorf("cache, which no layer fails: %v", err)
	}
	g := gather(t, r.m)
	if v := g.value(t, "stackd_layer_errors_total", "layer=e/error"); v != 5 {
		t.Errorf("the top layer counts %v errors at or below it, want 5", v)
	}
}

// TestServiceLatencyBounds: a target's service latency histogram is
// exported with the export histogram's bounds, so the two must agree.
func TestServiceLatencyBounds(t *testing.T) {
	if len(targets.LatencyBounds) != len(latencyBounds) {
		t.Fatalf("targets.LatencyBounds has %d bounds, metrics %d", len(targets.LatencyBounds), len(latencyBounds))
	}
	for i := range latencyBounds {
		if targets.LatencyBounds[i] != latencyBounds[i] {
			t.Errorf("bound %d: targets %v, metrics %v", i, targets.LatencyBounds[i], latencyBounds[i])
		}
	}
}
