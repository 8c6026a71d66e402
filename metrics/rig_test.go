package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/stackd/stackd/configs"
	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/stack"
)

// ioTimeout bounds every blocking step of a test.
const ioTimeout = 10 * time.Second

// rig is an in-process stackd: the stacks a configuration describes,
// served by an nbd.Server on a unix socket in t.TempDir(), observed by m
// (or by nothing, when m is nil).
type rig struct {
	m    *Metrics
	srv  *nbd.Server
	sock string
}

// waitMirrorsSynced waits for the initial resync of every mirror of st, so
// that a scrape finds its pool idle and its legs in sync.
func waitMirrorsSynced(tb testing.TB, st *stack.Stack) {
	tb.Helper()
	for _, n := range st.Nodes {
		m, ok := n.Control.(*stack.Mirror)
		if !ok {
			continue
		}
		for deadline := time.Now().Add(ioTimeout); ; time.Sleep(time.Millisecond) {
			if m.MirrorState().Synced() {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("%s: not in sync after %v: %+v", n.Path, ioTimeout, m.MirrorState())
			}
		}
	}
}

// startRig serves the exports of the configuration text cfgYAML. With
// observe false the server runs without an Observer, as the benchmark's
// baseline.
func startRig(tb testing.TB, cfgYAML string, observe bool, o Options) *rig {
	tb.Helper()
	cfg, err := configs.Parse("<test>", []byte(cfgYAML))
	if err != nil {
		tb.Fatal(err)
	}
	return startRigConfig(tb, cfg, observe, o)
}

func startRigConfig(tb testing.TB, cfg *configs.Config, observe bool, o Options) *rig {
	tb.Helper()
	r := &rig{sock: filepath.Join(tb.TempDir(), "nbd.sock")}
	for _, e := range cfg.Exports {
		o.Exports = append(o.Exports, e.Name)
	}
	if observe {
		r.m = New(o)
	}
	var exports []nbd.ExportConfig
	for _, e := range cfg.Exports {
		st, err := e.Build(slog.New(slog.DiscardHandler))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { st.Close() })
		waitMirrorsSynced(tb, st)
		if r.m != nil {
			r.m.WatchStack(e.Name, st)
		}
		exports = append(exports, nbd.ExportConfig{
			Name: e.Name, Device: st.Root, ReadOnly: e.ReadOnly, Default: e.Default,
		})
	}
	opts := nbd.Options{Exports: exports, Logger: slog.New(slog.DiscardHandler)}
	if r.m != nil {
		opts.Observer = r.m
	}
	srv, err := nbd.NewServer(opts)
	if err != nil {
		tb.Fatal(err)
	}
	r.srv = srv
	if r.m != nil {
		r.m.WatchServer(srv)
	}
	ln, err := net.Listen("unix", r.sock)
	if err != nil {
		tb.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			tb.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			tb.Errorf("Serve: %v", err)
		}
	})
	return r
}

func (r *rig) dial(tb testing.TB, export string) *client.Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	c, err := client.Dial(ctx, "unix", r.sock, client.Options{ExportName: export})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// gathered indexes a scrape by metric name.
type gathered map[string]*dto.MetricFamily

func gather(tb testing.TB, m *Metrics) gathered {
	tb.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		tb.Fatal(err)
	}
	g := make(gathered, len(mfs))
	for _, mf := range mfs {
		g[mf.GetName()] = mf
	}
	return g
}

// find returns the series of name whose labels include want (given as
// "k=v" pairs), failing unless there is exactly one.
func (g gathered) find(tb testing.TB, name string, want ...string) *dto.Metric {
	tb.Helper()
	var found []*dto.Metric
	for _, m := range g[name].GetMetric() {
		if hasLabels(m, want) {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		tb.Fatalf("%s{%s}: %d series, want 1", name, strings.Join(want, ","), len(found))
	}
	return found[0]
}

// value is the value of the one series of a counter or gauge.
func (g gathered) value(tb testing.TB, name string, want ...string) float64 {
	tb.Helper()
	m := g.find(tb, name, want...)
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	tb.Fatalf("%s: neither counter nor gauge", name)
	return 0
}

// sum adds the values of every series of name whose labels include want.
func (g gathered) sum(name string, want ...string) float64 {
	var s float64
	for _, m := range g[name].GetMetric() {
		if hasLabels(m, want) {
			s += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return s
}

// each calls f for every series of name, with its labels as a map.
func (g gathered) each(name string, f func(labels map[string]string, m *dto.Metric)) {
	for _, m := range g[name].GetMetric() {
		labels := make(map[string]string)
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		f(labels, m)
	}
}

func hasLabels(m *dto.Metric, want []string) bool {
	for _, kv := range want {
		k, v, _ := strings.Cut(kv, "=")
		ok := false
		for _, l := range m.GetLabel() {
			if l.GetName() == k && l.GetValue() == v {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func label(k, v string) string { return fmt.Sprintf("%s=%s", k, v) }
