package metrics

import (
	"sync/atomic"
	"time"
)

// latencyBounds are the upper bounds of the latency histogram's buckets,
// 10 µs (a RAM disk over a unix socket) to 10 s (a device that is
// failing), in the 1-2.5-5 steps Prometheus' own defaults use.
var latencyBounds = [...]time.Duration{
	10 * time.Microsecond, 25 * time.Microsecond, 50 * time.Microsecond,
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	1 * time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	1 * time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// latencyBoundsSeconds are latencyBounds as Prometheus' "le" values.
var latencyBoundsSeconds = func() []float64 {
	s := make([]float64, len(latencyBounds))
	for i, b := range latencyBounds {
		s[i] = b.Seconds()
	}
	return s
}()

// histogram is a latency histogram made of integer atomics: observing
// costs a short search and two atomic adds, with none of the
// compare-and-swap loops a float sum needs. A scrape turns it into a
// constant histogram.
type histogram struct {
	counts   [len(latencyBounds) + 1]atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sumNanos atomic.Uint64
}

func (h *histogram) observe(d time.Duration) {
	if d < 0 {
		d = 0
	}
	// The first bucket whose bound is >= d ("le" is inclusive).
	lo, hi := 0, len(latencyBounds)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if latencyBounds[mid] < d {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	h.counts[lo].Add(1)
	h.sumNanos.Add(uint64(d))
}

// snapshot returns the cumulative bucket counts, keyed by upper bound, the
// total count and the sum in seconds. The count is the sum of the buckets
// read, so the three agree with each other even while observations race
// with the scrape.
func (h *histogram) snapshot() (buckets map[float64]uint64, count uint64, sum float64) {
	buckets = make(map[float64]uint64, len(latencyBounds))
	for i := range latencyBounds {
		count += h.counts[i].Load()
		buckets[latencyBoundsSeconds[i]] = count
	}
	count += h.counts[len(latencyBounds)].Load()
	return buckets, count, time.Duration(h.sumNanos.Load()).Seconds()
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
