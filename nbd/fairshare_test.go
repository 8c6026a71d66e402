package nbd

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/nbd/wire"
)

// readThroughput has c read total bytes in 1 MiB reads, 8 in flight, and
// returns how long that took: the well-behaved client of the fair-share
// tests. It fails the test if the reads do not finish within ioTimeout,
// which is what starvation looks like.
func readThroughput(t *testing.T, c *client.Client, total int) time.Duration {
	t.Helper()
	const size, depth = 1 << 20, 8
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	var next atomic.Int64
	start := time.Now()
	errs := make(chan error, depth)
	for range depth {
		go func() {
			buf := make([]byte, size)
			for {
				i := next.Add(1) - 1
				if i >= int64(total/size) {
					errs <- nil
					return
				}
				if err := c.Read(ctx, uint64(i%32)*size, buf); err != nil {
					errs <- fmt.Errorf("read %d: %w", i, err)
					return
				}
			}
		}()
	}
	for range depth {
		if err := <-errs; err != nil {
			t.Fatalf("well-behaved client: %v", err)
		}
	}
	return time.Since(start)
}

// fastest is the least of n runs of f: the machine is shared, and the least
// is the run that other load disturbed least.
func fastest(n int, f func() time.Duration) time.Duration {
	best := f()
	for range n - 1 {
		best = min(best, f())
	}
	return best
}

// TestConnectionPayloadShare: a client that holds its replies back, by
// never reading them or by reading them slowly, holds at most its
// connection's share of the payload budget, and a well-behaved client
// beside it still gets its reads done (the test logs how fast). Without the
// share, the first attacker holds the whole budget within a second and the
// well-behaved client stops until ReplyTimeout.
func TestConnectionPayloadShare(t *testing.T) {
	for _, attack := range []struct {
		name string
		// bytesPerSecond the attacker reads its replies at; 0: never.
		bytesPerSecond int
	}{
		{"never-reads", 0},
		{"reads-slowly", 4 << 20},
	} {
		t.Run(attack.name, func(t *testing.T) {
			dev := newMemDev(64<<20, allCaps)
			o := oneExport(dev)
			o.ReplyTimeout = 10 * time.Minute // longer than the test: the share alone must protect
			ts := startServer(t, o, "tcp")
			share := ts.srv.opts.ConnectionPayload
			if budget := ts.srv.opts.PayloadBudget; share >= budget {
				t.Fatalf("default share %d is not below the budget %d", share, budget)
			}

			good := ts.dial(t, client.Options{ExportName: "mem"})
			const total = 128 << 20
			alone := fastest(3, func() time.Duration { return readThroughput(t, good, total) })

			attacker := dialRaw(t, ts)
			attacker.start("mem", false, false)
			attacker.nc.SetDeadline(time.Time{}) // the test's own timers bound it
			const maxReads = 64
			for i := range maxReads {
				attacker.request(wire.CmdRead, 0, uint64(i), 0, MaxPayload, nil)
			}
			var received atomic.Int64
			stopReading := make(chan struct{})
			var wg sync.WaitGroup
			if attack.bytesPerSecond > 0 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					slowReader(attacker, attack.bytesPerSecond, &received, stopReading)
				}()
			}
			t.Cleanup(func() {
				close(stopReading)
				attacker.nc.Close()
				wg.Wait()
			})
			waitFor(t, "the attacker to hold its whole share", func() bool {
				return ts.srv.Stats().PayloadInUse >= share
			})

			beside := fastest(3, func() time.Duration { return readThroughput(t, good, total) })
			st := ts.srv.Stats()
			ratio := alone.Seconds() / beside.Seconds()
			t.Logf("alone %v, beside the attacker %v: %.2f of the throughput; payload in use %d MiB of %d (share %d MiB); share waits %d",
				alone, beside, ratio, st.PayloadInUse>>20, st.PayloadCapacity>>20, share>>20, st.PayloadShareWaits)
			// The throughput ratio is logged, not asserted: on a shared
			// machine it measures the other load as much as the share.
			// What the share guarantees is asserted instead: the
			// well-behaved client finished (readThroughput fails the
			// test on starvation), and the attacker, after it, holds no
			// more than its share of the budget, where without the share
			// it holds all of it.
			// The good client's last buffers are released just after
			// their replies went out; the attacker's never are.
			waitFor(t, "the payload in use to come down to the attacker's share", func() bool {
				return ts.srv.Stats().PayloadInUse <= share
			})
			if st.PayloadShareWaits == 0 {
				t.Errorf("the attacker never waited for its share")
			}
			if attack.bytesPerSecond > 0 {
				if got := received.Load(); got == 0 {
					t.Errorf("the slow attacker received nothing: it must still be served at its own pace")
				}
			}
		})
	}
}

// slowReader reads the attacker's replies at about rate bytes a second,
// sending a new 32 MiB READ for each reply it has read in full, until stop
// is closed or the connection fails.
func slowReader(r *rawConn, rate int, received *atomic.Int64, stop <-chan struct{}) {
	const step = 64 << 10
	pause := time.Duration(step) * time.Second / time.Duration(rate)
	buf := make([]byte, step)
	left := wire.SimpleReplyLen + MaxPayload // of the reply being read
	cookie := uint64(1 << 32)
	for {
		select {
		case <-stop:
			return
		case <-time.After(pause):
		}
		n, err := io.ReadFull(r.br, buf[:min(step, left)])
		if err != nil {
			return
		}
		received.Add(int64(n))
		if left -= n; left == 0 {
			left = wire.SimpleReplyLen + MaxPayload
			cookie++
			if _, err := r.nc.Write(requestBytes(wire.CmdRead, 0, cookie, 0, MaxPayload, nil)); err != nil {
				return
			}
		}
	}
}
