package metrics

import (
	"runtime"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/stack"
)

// allDescs is every descriptor: desc adds each one it makes, so that
// Describe describes every metric Collect sends.
var allDescs []*prometheus.Desc

func desc(name, help string, labels ...string) *prometheus.Desc {
	d := prometheus.NewDesc(name, help, labels, nil)
	allDescs = append(allDescs, d)
	return d
}

// A series is a metric read from a value of type S (a stats struct) at
// scrape time: its descriptor, counter or gauge, and how to read it. The
// tables of series below are the metrics whose value is one field of a
// struct, each declared once with the field it reads; collectSeries sends
// a table.
type series[S any] struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(S) float64
}

func counterSeries[S any](name, help string, value func(S) float64, labels ...string) series[S] {
	return series[S]{desc(name, help, labels...), prometheus.CounterValue, value}
}

func gaugeSeries[S any](name, help string, value func(S) float64, labels ...string) series[S] {
	return series[S]{desc(name, help, labels...), prometheus.GaugeValue, value}
}

func collectSeries[S any](ch chan<- prometheus.Metric, table []series[S], s S, labels ...string) {
	for _, m := range table {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(s), labels...)
	}
}

// The metrics stackd exports. The README's "Operations" section explains
// each and maps it to node_exporter's node_disk_* where the meaning
// matches; keep the two in step.
var (
	buildInfo = desc("stackd_build_info", "Always 1; the labels say which stackd is running.", "version", "goversion")

	// Per export, fed by the nbd.Observer methods.
	exportRequests = desc("stackd_export_requests_total", "Requests answered, by op, failed ones included (cf. node_disk_reads_completed_total).", "export", "op")
	exportBytes    = desc("stackd_export_bytes_total", "Bytes of the requests answered successfully, by op: payload for read and write, the range for trim, write_zeroes, cache and block_status (cf. node_disk_read_bytes_total).", "export", "op")
	exportErrors   = desc("stackd_export_errors_total", "Requests the device failed, by op and the NBD error the client received.", "export", "op", "error")
	exportDuration = desc("stackd_export_request_duration_seconds", "Time from a request's decoded header to its reply handed to the socket, by op (the _sum is cf. node_disk_read_time_seconds_total).", "export", "op")
	exportInFlight = desc("stackd_export_requests_in_flight", "Requests submitted to the export's stack and not yet answered (cf. node_disk_io_now).", "export")
	exportBad      = desc("stackd_export_bad_requests_total", "Requests the protocol engine rejected without reaching the device (out of range, misaligned, unknown command or flag, read-only export), by the NBD error sent.", "export", "error")
	exportSize     = desc("stackd_export_size_bytes", "Size of the export.", "export")

	// Server-wide, counted as the server reports them (serverSeries are
	// those read from nbd.Server.Stats).
	connsRejected     = desc("stackd_connections_rejected_total", "NBD connections closed at accept, by the limit that refused them: max_connections (the server is full), max_connections_per_client or listen_allow (the address is not on the listener's allow list).", "reason")
	optionsRefused    = desc("stackd_options_refused_total", "Handshake options refused by policy, by reason: tls_required (the option or export needs TLS, not up yet) or export_allow (the client is not on the export's allow list); logged at most once a second.", "reason")
	tlsHandshakes     = desc("stackd_tls_handshakes_total", "TLS handshakes after NBD_OPT_STARTTLS, by outcome: ok, bad_certificate, timeout or failed.", "outcome")
	tlsCertExpiry     = desc("stackd_tls_certificate_expiry_timestamp_seconds", "When the server's TLS certificate (tls.cert) expires, as a Unix time; absent without TLS.")
	handshakeFailures = desc("stackd_handshake_failures_total", "Connections that ended before transmission, by reason (a client's NBD_OPT_ABORT is not a failure).", "reason")

	// Per layer and target, read from stack.NodeStats at scrape time.
	layerRequests = desc("stackd_layer_requests_total", "Bios that entered the layer or target from above, by op; a split's requeued remainder is not counted again.", "layer", "op")
	layerBytes    = desc("stackd_layer_bytes_total", "Bytes those bios addressed, by op.", "layer", "op")
	layerErrors   = desc("stackd_layer_errors_total", "Bios that failed at or below the layer (the sum of the failures of its targets and fault layers).", "layer")

	// Per remote leg (the nbd kind), read from stack.RemoteStats.
	remoteConns     = desc("stackd_remote_connections", "The remote leg's connections in each state: connecting, connected, backoff (waiting to dial again), closed, unused (beyond the first while the remote does not allow many).", "layer", "state")
	remoteRoundTrip = desc("stackd_remote_round_trip_seconds", "Time from sending a request to the remote to its reply, for the requests answered.", "layer")

	// Per target that waits on a remote service (an rbd leg), read from
	// stack.Node.Service.
	serviceInFlight = desc("stackd_target_service_requests_in_flight", "Bios submitted to the target and not yet completed by its service (librbd for an rbd leg), queued for a worker included.", "layer")
	serviceDuration = desc("stackd_target_service_request_duration_seconds", "Time the target's service (librbd) took for a bio's call, by op.", "layer", "op")
	// Per mirror leg, read from stack.Mirror.MirrorState.
	mirrorLegState = desc("stackd_mirror_leg_state", "1 for the mirror leg's current state (in_sync, faulty, resyncing), 0 for the others.", "layer", "leg", "state")
)

// Server-wide, read from nbd.Server.Stats.
var serverSeries = []series[nbd.ServerStats]{
	gaugeSeries("stackd_connections_open", "NBD connections open now, handshakes included.", func(s nbd.ServerStats) float64 { return float64(s.ConnsOpen) }),
	counterSeries("stackd_connections_accepted_total", "NBD connections accepted under the max_connections limit.", func(s nbd.ServerStats) float64 { return float64(s.ConnsAccepted) }),
	gaugeSeries("stackd_payload_budget_capacity_bytes", "Payload bytes all connections may hold at once (limits.payload_budget).", func(s nbd.ServerStats) float64 { return float64(s.PayloadCapacity) }),
	gaugeSeries("stackd_payload_budget_in_use_bytes", "Payload bytes held now, in whole buffer size classes.", func(s nbd.ServerStats) float64 { return float64(s.PayloadInUse) }),
	gaugeSeries("stackd_payload_budget_peak_bytes", "The most payload bytes ever held at once.", func(s nbd.ServerStats) float64 { return float64(s.PayloadPeak) }),
	counterSeries("stackd_payload_budget_waits_total", "Times a connection stopped reading its socket because the payload budget was spent.", func(s nbd.ServerStats) float64 { return float64(s.PayloadWaits) }),
	counterSeries("stackd_payload_share_waits_total", "Times a connection stopped reading its socket because it held its whole share of the payload budget (limits.connection_payload): a client slow to read its replies.", func(s nbd.ServerStats) float64 { return float64(s.PayloadShareWaits) }),
}

// Per fault layer (error, flakey), read from stack.FaultStats.
var faultSeries = []series[*stack.FaultStats]{
	counterSeries("stackd_fault_requests_failed_total", "Requests the fault layer failed on purpose.", func(f *stack.FaultStats) float64 { return float64(f.Failed()) }, "layer"),
	counterSeries("stackd_fault_requests_dropped_total", "Writes the fault layer acknowledged and discarded (flakey's drop_writes).", func(f *stack.FaultStats) float64 { return float64(f.Dropped()) }, "layer"),
}

// Per remote leg (the nbd kind), read from stack.RemoteStats; with
// remoteConns and remoteRoundTrip, which are not one field each.
var remoteSeries = []series[stack.RemoteStats]{
	counterSeries("stackd_remote_reconnects_total", "Connections to the remote dialled again, successfully, after one dropped or was aborted.", func(s stack.RemoteStats) float64 { return float64(s.Reconnects) }, "layer"),
	counterSeries("stackd_remote_requests_retried_total", "Requests sent again on a new connection because theirs dropped, or because the remote answered ESHUTDOWN.", func(s stack.RemoteStats) float64 { return float64(s.Retried) }, "layer"),
	counterSeries("stackd_remote_requests_timed_out_total", "Requests that failed with EIO because the remote did not answer within the leg's timeout.", func(s stack.RemoteStats) float64 { return float64(s.TimedOut) }, "layer"),
	gaugeSeries("stackd_remote_requests_in_flight", "Requests submitted to the remote leg and not yet ended, queued or sent.", func(s stack.RemoteStats) float64 { return float64(s.InFlight) }, "layer"),
}

// Per memory target, read from stack.MemoryStats.
var memorySeries = []series[stack.MemoryStats]{
	gaugeSeries("stackd_memory_allocated_bytes", "Bytes of chunks the memory target holds: the chunks written and not trimmed since, at most its size; its chunk table is not counted.", func(m stack.MemoryStats) float64 { return float64(m.Allocated()) }, "layer"),
	counterSeries("stackd_memory_spans_collapsed_total", "Times a 2 MiB span of the memory target's chunks was made one huge page, once all its chunks were allocated; a TRIM in the span and a refill count again.", func(m stack.MemoryStats) float64 { return float64(m.CollapsedSpans()) }, "layer"),
}

// Per layer's bio pool (BioSet), read from bioset.Stats.
var poolSeries = []series[bioset.Stats]{
	gaugeSeries("stackd_layer_pool_capacity_bios", "Bios the layer's pool holds (pool.capacity).", func(p bioset.Stats) float64 { return float64(p.Capacity) }, "layer"),
	gaugeSeries("stackd_layer_pool_in_use_bios", "Bios of the layer's pool in use now.", func(p bioset.Stats) float64 { return float64(p.InUse) }, "layer"),
	counterSeries("stackd_layer_pool_allocations_total", "Bios handed out by the layer's pool.", func(p bioset.Stats) float64 { return float64(p.Allocs) }, "layer"),
	counterSeries("stackd_layer_pool_allocation_waits_total", "Allocations that found the pool empty and waited.", func(p bioset.Stats) float64 { return float64(p.Waits) }, "layer"),
	counterSeries("stackd_layer_pool_allocation_wait_seconds_total", "Time allocations spent waiting for the pool.", func(p bioset.Stats) float64 { return p.WaitTime.Seconds() }, "layer"),
	counterSeries("stackd_layer_pool_punted_bios_total", "Bios handed to the pool's rescuer because the pool ran dry while they waited to be submitted.", func(p bioset.Stats) float64 { return float64(p.Punted) }, "layer"),
	counterSeries("stackd_layer_pool_rescued_bios_total", "Bios the rescuer has submitted.", func(p bioset.Stats) float64 { return float64(p.Rescued) }, "layer"),
	gaugeSeries("stackd_layer_pool_rescue_queue_bios", "Bios waiting for the rescuer now.", func(p bioset.Stats) float64 { return float64(p.RescueQueue) }, "layer"),
	gaugeSeries("stackd_layer_pool_rescuer_enabled",
		"1 if the pool's rescuer runs, 0 if it was turned off (pool.rescuer: false).",
		func(p bioset.Stats) float64 {
			if p.RescuerOn {
				return 1
			}
			return 0
		}, "layer"),
}

// Per mirror leg, read from stack.Mirror.MirrorState; with mirrorLegState,
// a series per state.
var mirrorLegSeries = []series[stack.MirrorLegState]{
	counterSeries("stackd_mirror_resync_bytes_total", "Bytes the resync has copied to the mirror leg.", func(l stack.MirrorLegState) float64 { return float64(l.ResyncedBytes) }, "layer", "leg"),
	gaugeSeries("stackd_mirror_resync_remaining_bytes", "Bytes of dirty regions the mirror leg still needs copied: 0 once in sync.", func(l stack.MirrorLegState) float64 { return float64(l.RemainingBytes) }, "layer", "leg"),
	counterSeries("stackd_mirror_read_errors_retried_total", "Reads that failed on the mirror leg and were retried on another leg.", func(l stack.MirrorLegState) float64 { return float64(l.ReadErrorsRetried) }, "layer", "leg"),
}

// collector turns the counters into constant metrics when Prometheus
// scrapes.
type collector struct{ m *Metrics }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

func counter(d *prometheus.Desc, v uint64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func gauge(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	ch <- gauge(buildInfo, 1, m.version, runtime.Version())

	for _, e := range m.order {
		for _, op := range bioset.Ops() {
			o := &e.ops[op]
			name := op.String()
			ch <- counter(exportRequests, o.requests.Load(), e.name, name)
			ch <- counter(exportBytes, o.bytes.Load(), e.name, name)
			// An op never asked for (most clients never send CACHE)
			// would add twenty empty buckets: its histogram appears
			// with its first request.
			if o.requests.Load() > 0 {
				buckets, count, sum := o.latency.snapshot()
				ch <- prometheus.MustNewConstHistogram(exportDuration, count, sum, buckets, e.name, name)
			}
			for w := range numWireErrors {
				if v := o.errors[w].Load(); v > 0 {
					ch <- counter(exportErrors, v, e.name, name, wireErrorName(w))
				}
			}
		}
		ch <- gauge(exportInFlight, float64(e.inFlight.Load()), e.name)
		for w := range numWireErrors {
			if v := e.bad[w].Load(); v > 0 {
				ch <- counter(exportBad, v, e.name, wireErrorName(w))
			}
		}
	}

	m.mu.Lock()
	srv := m.server
	stacks := m.stacks
	for reason, n := range m.handshakes {
		ch <- counter(handshakeFailures, n, reason)
	}
	for reason, n := range m.refusals {
		ch <- counter(connsRejected, n, reason)
	}
	for reason, n := range m.optRefused {
		ch <- counter(optionsRefused, n, reason)
	}
	for outcome, n := range m.tlsShakes {
		ch <- counter(tlsHandshakes, n, outcome)
	}
	if !m.certExpiry.IsZero() {
		ch <- gauge(tlsCertExpiry, float64(m.certExpiry.Unix()))
	}
	m.mu.Unlock()

	if srv != nil {
		collectSeries(ch, serverSeries, srv.Stats())
	}

	for _, ws := range stacks {
		ch <- gauge(exportSize, float64(ws.st.Root.Size()), ws.export)
		for i := range ws.st.Nodes {
			n := &ws.st.Nodes[i]
			for _, op := range bioset.Ops() {
				ch <- counter(layerRequests, n.Stats.Requests(op), n.Path, op.String())
				ch <- counter(layerBytes, n.Stats.Bytes(op), n.Path, op.String())
			}
			ch <- counter(layerErrors, n.Errors(), n.Path)
			if f := n.Fault; f != nil {
				collectSeries(ch, faultSeries, f, n.Path)
			}
			if svc := n.Service; svc != nil {
				ch <- gauge(serviceInFlight, float64(svc.InFlight()), n.Path)
				for _, op := range bioset.Ops() {
					// As for the export's histograms: an op never
					// asked for has none.
					if h := svc.ServiceLatency(op); h != nil {
						if counts, total, sum := h.Snapshot(); total > 0 {
							ch <- prometheus.MustNewConstHistogram(serviceDuration, total, sum.Seconds(),
								cumulative(counts[:len(latencyBounds)]), n.Path, op.String())
						}
					}
				}
			}
			if mr, ok := n.Control.(interface{ MirrorState() stack.MirrorState }); ok {
				collectMirror(ch, n.Path, mr.MirrorState())
			}
			if r := n.Remote; r != nil {
				collectRemote(ch, n.Path, r.RemoteStats())
			}
			if mem := n.Memory; mem != nil {
				collectSeries(ch, memorySeries, mem, n.Path)
			}
			if n.Pool == nil {
				continue
			}
			collectSeries(ch, poolSeries, n.Pool.Stats(), n.Path)
		}
	}
}

// collectMirror sends a mirror's per-leg series: one state series per
// state, so that an alert can ask for the faulty ones alone.
func collectMirror(ch chan<- prometheus.Metric, layer string, st stack.MirrorState) {
	for _, l := range st.Legs {
		leg := strconv.Itoa(l.Leg)
		for _, state := range stack.MirrorLegStates() {
			v := 0.0
			if state == l.State {
				v = 1
			}
			ch <- gauge(mirrorLegState, v, layer, leg, state)
		}
		collectSeries(ch, mirrorLegSeries, l, layer, leg)
	}
}

// collectRemote sends a remote leg's metrics.
func collectRemote(ch chan<- prometheus.Metric, layer string, s stack.RemoteStats) {
	var inState [len(stack.RemoteStateNames)]int
	for _, st := range s.States {
		inState[st]++
	}
	for st, n := range inState {
		ch <- gauge(remoteConns, float64(n), layer, stack.RemoteStateNames[st])
	}
	collectSeries(ch, remoteSeries, s, layer)
	// The round trips are a targets.Latency: the export histogram's bounds.
	var count uint64
	for _, n := range s.Latency {
		count += n
	}
	ch <- prometheus.MustNewConstHistogram(remoteRoundTrip, count, s.LatencySum.Seconds(),
		cumulative(s.Latency[:len(latencyBounds)]), layer)
}
