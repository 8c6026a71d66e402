package metrics

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/configs"
)

// BenchmarkRead4KiB measures what metrics cost the request path: 4 KiB
// random reads at queue depth 32 through the default stack (split over a
// 4-way stripe of RAM), served over a unix socket, without an Observer and
// with Metrics as the Observer, side by side. Compare the iops of the two
// over several -count runs:
//
//	go test -run '^$' -bench Read4KiB -count 8 ./metrics
func BenchmarkRead4KiB(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "metrics=off"
		if on {
			name = "metrics=on"
		}
		b.Run(name, func(b *testing.B) { benchReads(b, on) })
	}
}

const (
	benchDepth  = 32
	benchBlock  = 4096
	benchRegion = 16 << 20 // written first, so reads copy real data
)

func benchReads(b *testing.B, observe bool) {
	cfg := configs.Default()
	cfg.Exports = cfg.Exports[:1]
	r := startRigConfig(b, cfg, observe, Options{NoRuntimeCollectors: true})
	c := r.dial(b, cfg.Exports[0].Name)
	ctx := context.Background()

	fill := make([]byte, 1<<20)
	for i := range fill {
		fill[i] = byte(i)
	}
	for off := 0; off < benchRegion; off += len(fill) {
		if err := c.Write(ctx, uint64(off), fill, 0); err != nil {
			b.Fatal(err)
		}
	}

	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	errs := make(chan error, benchDepth)
	b.SetBytes(benchBlock)
	b.ResetTimer()
	cpu0 := cpuTime(b)
	start := time.Now()
	for g := range benchDepth {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			buf := make([]byte, benchBlock)
			for left.Add(-1) >= 0 {
				off := rng.Uint64N(benchRegion/benchBlock) * benchBlock
				if err := c.Read(ctx, off, buf); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime(b) - cpu0
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "iops")
	// CPU time per read, client and server together: what metrics add to
	// it shows through other load on the machine better than iops do.
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	if observe {
		// A scrape now would show the reads: make sure they were counted.
		if got := gather(b, r.m).value(b, "stackd_export_requests_total", "export=default", "op=read"); got != float64(b.N) {
			b.Fatalf("counted %v reads, did %d", got, b.N)
		}
	}
}

// cpuTime is the user and system CPU time the process has used.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkObserverRequest is the cost the server pays per request for
// metrics: RequestStarted and RequestDone, from parallel goroutines on
// one export, as connections to one busy export make them.
func BenchmarkObserverRequest(b *testing.B) {
	m := New(Options{Exports: []string{"default"}, NoRuntimeCollectors: true})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.RequestStarted("default", bioset.OpRead)
			m.RequestDone("default", bioset.OpRead, benchBlock, 0, 37*time.Microsecond)
		}
	})
}
