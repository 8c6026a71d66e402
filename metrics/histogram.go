package metrics

import (
	"time"

	"github.com/stackd/stackd/targets"
)

// latencyBounds are the upper bounds of the latency histograms' buckets:
// the leaves' (targets.LatencyBounds), 10 µs (a RAM disk over a unix
// socket) to 10 s (a device that is failing), so that the client's wait,
// a leaf's service time and a remote leg's round trip read on one scale.
var latencyBounds = targets.LatencyBounds

// latencyBoundsSeconds are latencyBounds as Prometheus' "le" values.
var latencyBoundsSeconds = func() []float64 {
	s := make([]float64, len(latencyBounds))
	for i, b := range latencyBounds {
		s[i] = b.Seconds()
	}
	return s
}()

// histogram is an export's latency histogram: the leaves' integer-atomic
// one (targets.Latency: observing costs a short search and two atomic
// adds, with none of the compare-and-swap loops a float sum needs), which
// a scrape turns into a constant histogram.
type histogram struct{ targets.Latency }

func (h *histogram) observe(d time.Duration) { h.Observe(d) }

// snapshot returns the cumulative bucket counts, keyed by upper bound, the
// total count and the sum in seconds. The count is the sum of the buckets
// read, so the three agree with each other even while observations race
// with the scrape.
func (h *histogram) snapshot() (buckets map[float64]uint64, count uint64, sum float64) {
	counts, count, d := h.Snapshot()
	return cumulative(counts[:len(latencyBounds)]), count, d.Seconds()
}

// cumulative turns per-bucket counts over latencyBounds (a target's
// targets.Latency, whose bounds a test keeps equal to these) into
// Prometheus' cumulative buckets.
func cumulative(counts []uint64) map[float64]uint64 {
	buckets := make(map[float64]uint64, len(counts))
	var sum uint64
	for i, c := range counts {
		sum += c
		buckets[latencyBoundsSeconds[i]] = sum
	}
	return buckets
}
