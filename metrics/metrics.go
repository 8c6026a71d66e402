// Package metrics exposes stackd to Prometheus: per-export request
// counters and latency histograms fed by the NBD server (Metrics is its
// nbd.Observer), per-layer and per-pool counters read from the built
// stacks at scrape time, server-wide counters, and the HTTP handler for
// /metrics, /healthz and /readyz.
//
// The request path pays a few atomic adds per request and nothing else:
// everything an Observer call touches is resolved when Metrics is made
// (an array per op, a read-only map from export name to its counters),
// and the counters are plain atomics that a custom collector turns into
// constant metrics when Prometheus scrapes. Layer and pool figures are
// counters the stack keeps anyway; reading them costs the request path
// nothing at all.
//
// Names follow Prometheus conventions (prefix stackd_, base units, counters
// ending in _total) and echo node_exporter's node_disk_* where the meaning
// matches; the README's "Operations" section has the table. No label
// carries anything a client chooses: export names and layer paths come
// from the configuration, op and error names from fixed sets.
package metrics

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/stack"
)

// DefaultLogInterval is Options.LogInterval when zero: at most one line a
// second per export and kind (failed, rejected) keeps a failing disk from
// flooding the journal, and the line says how many it stands for.
const DefaultLogInterval = time.Second

// Options configure New.
type Options struct {
	// Exports names every export the server serves. Observer events for
	// any other name are dropped: the map from name to counters is built
	// once and only read on the request path.
	Exports []string
	// Version is reported in stackd_build_info.
	Version string
	// Logger receives the rate-limited lines for failed and rejected
	// requests. Default: discard.
	Logger *slog.Logger
	// LogInterval is the least time between two such lines for one
	// export. Default DefaultLogInterval.
	LogInterval time.Duration
	// NoRuntimeCollectors leaves out the Go runtime and process
	// collectors, for tests that compare exact output.
	NoRuntimeCollectors bool
}

// Metrics collects stackd's metrics. It implements nbd.Observer; its
// methods are safe for concurrent use.
type Metrics struct {
	reg     *prometheus.Registry
	log     *slog.Logger
	every   int64 // LogInterval in nanoseconds
	epoch   time.Time
	version string

	exports map[string]*exportStats // read-only after New
	order   []*exportStats          // configuration order, for scrapes

	ready atomic.Bool

	mu         sync.Mutex // guards the fields below; never taken per request
	handshakes map[string]uint64
	refusals   map[string]uint64 // connections refused at accept, by reason
	refuseLog  limiter
	optRefused map[string]uint64 // options refused by policy, by reason
	optLog     limiter
	tlsShakes  map[string]uint64 // TLS handshakes, by outcome
	certExpiry time.Time         // the server certificate's NotAfter; zero: no TLS
	server     *nbd.Server
	stacks     []watchedStack
}

type watchedStack struct {
	export string
	st     *stack.Stack
}

// exportStats holds one export's counters.
type exportStats struct {
	name     string
	inFlight atomic.Int64
	ops      [bioset.NumOps]opStats
	bad      [numWireErrors]atomic.Uint64
	failLog  limiter
	badLog   limiter
}

// opStats holds one export's counters for one op.
type opStats struct {
	requests atomic.Uint64
	bytes    atomic.Uint64
	errors   [numWireErrors]atomic.Uint64
	latency  histogram
}

// New returns Metrics for a server with the exports o names, registered
// in a registry of its own together with the Go and process collectors.
func New(o Options) *Metrics {
	m := &Metrics{
		reg:        prometheus.NewRegistry(),
		log:        o.Logger,
		every:      int64(o.LogInterval),
		epoch:      time.Now(),
		version:    o.Version,
		exports:    make(map[string]*exportStats, len(o.Exports)),
		handshakes: make(map[string]uint64, len(handshakeReasons)),
		refusals:   make(map[string]uint64, len(refusalReasons)),
		optRefused: make(map[string]uint64, len(nbd.OptionRefusalReasons)),
		tlsShakes:  make(map[string]uint64, len(nbd.TLSHandshakeOutcomes)),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.every <= 0 {
		m.every = int64(DefaultLogInterval)
	}
	if m.version == "" {
		m.version = "unknown"
	}
	for _, name := range o.Exports {
		if m.exports[name] != nil {
			continue
		}
		e := &exportStats{name: name}
		m.exports[name] = e
		m.order = append(m.order, e)
	}
	// Known reasons start at zero so that an alert on their rate sees
	// the first failure.
	for _, r := range handshakeReasons {
		m.handshakes[r] = 0
	}
	for _, r := range refusalReasons {
		m.refusals[r] = 0
	}
	for _, r := range nbd.OptionRefusalReasons {
		m.optRefused[r] = 0
	}
	for _, r := range nbd.TLSHandshakeOutcomes {
		m.tlsShakes[r] = 0
	}
	m.reg.MustRegister(&collector{m: m})
	if !o.NoRuntimeCollectors {
		m.reg.MustRegister(
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		)
	}
	return m
}

// Registry returns the registry Handler serves, for tests and for callers
// that add collectors of their own.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// WatchServer makes scrapes report srv's connection and payload budget
// counters. One server at a time: a second call replaces the first.
func (m *Metrics) WatchServer(srv *nbd.Server) {
	m.mu.Lock()
	m.server = srv
	m.mu.Unlock()
}

// WatchStack makes scrapes report the layers, targets and pools of st,
// the stack built for export. Each stack once: node paths start with the
// export name, so two exports' nodes never collide, but the same stack
// watched twice would.
func (m *Metrics) WatchStack(export string, st *stack.Stack) {
	m.mu.Lock()
	m.stacks = append(m.stacks, watchedStack{export: export, st: st})
	m.mu.Unlock()
}

// SetReady sets what /readyz answers: 200 once the listeners are up and
// every export's stack is built, 503 before that and once shutdown has
// begun.
func (m *Metrics) SetReady(ready bool) { m.ready.Store(ready) }

// Ready reports what SetReady last set.
func (m *Metrics) Ready() bool { return m.ready.Load() }

// The nbd.Observer methods. They run on connection goroutines, per
// request: a map lookup, an array index and a few atomic adds, no
// allocation, no lock.

var _ nbd.Observer = (*Metrics)(nil)

// ConnOpened does nothing: open and accepted connections are read from
// the server's own counters at scrape time (WatchServer).
func (m *Metrics) ConnOpened() {}

// ConnClosed does nothing; see ConnOpened.
func (m *Metrics) ConnClosed() {}

// ConnRefused counts a connection refused at accept, by reason, and logs
// it rate-limited: a client that reconnects in a loop as it is refused
// would otherwise write a line per attempt. Not on the request path.
func (m *Metrics) ConnRefused(reason, remote string) {
	m.mu.Lock()
	countReason(m.refusals, reason)
	m.mu.Unlock()
	if ok, suppressed := m.refuseLog.allow(m.now(), m.every); ok {
		m.log.Warn("connection refused", "reason", reason, "remote", remote, "suppressed", suppressed)
	}
}

// OptionRefused counts an option refused by policy (TLS required, an
// export's allow list), by reason, and logs it rate-limited, like
// ConnRefused: the log says who was refused, for which export and why.
func (m *Metrics) OptionRefused(reason, export, remote string) {
	m.mu.Lock()
	countReason(m.optRefused, reason)
	m.mu.Unlock()
	if ok, suppressed := m.optLog.allow(m.now(), m.every); ok {
		m.log.Warn("option refused", "reason", reason, "export", export, "remote", remote, "suppressed", suppressed)
	}
}

// TLSHandshake counts a TLS handshake by outcome.
func (m *Metrics) TLSHandshake(outcome string) {
	m.mu.Lock()
	countReason(m.tlsShakes, outcome)
	m.mu.Unlock()
}

// SetCertificateExpiry records when the server's certificate expires, for
// the gauge an alert watches; the zero time removes the gauge (no TLS).
// Called at start and at each reload of the certificates.
func (m *Metrics) SetCertificateExpiry(t time.Time) {
	m.mu.Lock()
	m.certExpiry = t
	m.mu.Unlock()
}

// HandshakeFailed counts a failed handshake by reason. Not on the request
// path, so a lock is fine here.
func (m *Metrics) HandshakeFailed(reason string) {
	m.mu.Lock()
	countReason(m.handshakes, reason)
	m.mu.Unlock()
}

// RequestStarted counts a request in flight.
func (m *Metrics) RequestStarted(export string, op bioset.Op) {
	if e := m.exports[export]; e != nil {
		e.inFlight.Add(1)
	}
}

// RequestDone counts a request answered: requests, bytes (of successful
// requests), latency, and the error by the NBD name the client received.
func (m *Metrics) RequestDone(export string, op bioset.Op, bytes uint64, err syscall.Errno, latency time.Duration) {
	e := m.exports[export]
	if e == nil || int(op) >= bioset.NumOps {
		return
	}
	e.inFlight.Add(-1)
	o := &e.ops[op]
	o.requests.Add(1)
	o.latency.observe(latency)
	if err == 0 {
		o.bytes.Add(bytes)
		return
	}
	w := wireIndex(err)
	o.errors[w].Add(1)
	if ok, suppressed := e.failLog.allow(m.now(), m.every); ok {
		m.log.Warn("request failed", "export", export, "op", op.String(), "error", wireErrorName(w),
			"errno", errnoName(err), "err", err.Error(), "bytes", bytes, "latency", latency,
			"suppressed", suppressed)
	}
}

// BadRequest counts a request the protocol engine rejected, by the error
// it answered with.
func (m *Metrics) BadRequest(export string, err syscall.Errno) {
	e := m.exports[export]
	if e == nil {
		return
	}
	w := wireIndex(err)
	e.bad[w].Add(1)
	if ok, suppressed := e.badLog.allow(m.now(), m.every); ok {
		m.log.Info("bad request rejected", "export", export, "error", wireErrorName(w),
			"suppressed", suppressed)
	}
}

// now is monotonic nanoseconds since New, for the log limiters.
func (m *Metrics) now() int64 { return int64(time.Since(m.epoch)) }

// limiter lets one log line through per interval and counts the rest.
// Lock-free: it sits on the request path (the failing part of it).
type limiter struct {
	next       atomic.Int64 // Metrics.now() before which lines are suppressed
	suppressed atomic.Uint64
}

// allow reports whether a line may be written now and, if so, how many
// were suppressed since the last one.
func (l *limiter) allow(now, every int64) (bool, uint64) {
	next := l.next.Load()
	if now < next || !l.next.CompareAndSwap(next, now+every) {
		l.suppressed.Add(1)
		return false, 0
	}
	return true, l.suppressed.Swap(0)
}
