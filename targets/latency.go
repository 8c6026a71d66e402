package targets

import (
	"sync/atomic"
	"time"

	"github.com/stackd/stackd/bioset"
)

// LatencyBounds are the upper bounds of a Latency's buckets: 10 µs to
// 10 s in the 1-2.5-5 steps Prometheus' own defaults use, the bounds of
// the export latency histogram, so that a leaf's service time and the
// client's wait read on one scale.
var LatencyBounds = [...]time.Duration{
	10 * time.Microsecond, 25 * time.Microsecond, 50 * time.Microsecond,
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	1 * time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	1 * time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// Latency is a histogram of the time a target's backing service took,
// made of integer atomics so that observing from many workers costs two
// atomic adds and no lock.
type Latency struct {
	counts   [len(LatencyBounds) + 1]atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sumNanos atomic.Uint64
}

// Observe records one call that took d.
func (h *Latency) Observe(d time.Duration) {
	d = max(d, 0)
	lo, hi := 0, len(LatencyBounds)
	for lo < hi { // the first bucket whose bound is >= d
		mid := int(uint(lo+hi) >> 1)
		if LatencyBounds[mid] < d {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	h.counts[lo].Add(1)
	h.sumNanos.Add(uint64(d))
}

// Snapshot returns the per-bucket counts (not cumulative; the last is
// +Inf), their total and the sum of the durations observed.
func (h *Latency) Snapshot() (counts [len(LatencyBounds) + 1]uint64, total uint64, sum time.Duration) {
	for i := range h.counts {
		counts[i] = h.counts[i].Load()
		total += counts[i]
	}
	return counts, total, time.Duration(h.sumNanos.Load())
}

// ServiceStats is what a target that waits on a remote service (the rbd
// target on a Ceph cluster) reports beyond the counters every node has:
// how many bios wait on it now, and how long its calls take, by op.
type ServiceStats interface {
	InFlight() int64
	ServiceLatency(op bioset.Op) *Latency
}
