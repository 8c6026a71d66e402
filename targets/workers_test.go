package targets

import (
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stackd/stackd/bioset"
)

// push never waits for a worker: with every worker stuck, a large backlog
// still queues at once, and drains in order once the workers move again.
func TestWorkersNeverBlock(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	release := make(chan struct{})
	var mu sync.Mutex
	var order []uint64
	w := newWorkers(1, func(b *bioset.Bio) {
		<-release
		mu.Lock()
		order = append(order, b.Offset)
		mu.Unlock()
		b.End(nil)
	})
	const n = 5000
	bios := make([]bioset.Bio, n)
	var wg sync.WaitGroup
	wg.Add(n)
	start := time.Now()
	for i := range bios {
		bios[i].Init(bioset.OpRead, uint64(i), 0, nil, func(*bioset.Bio) { wg.Done() })
		w.push(&bios[i])
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("queueing %d bios behind a stuck worker took %v", n, d)
	}
	close(release)
	wg.Wait()
	for i, off := range order {
		if off != uint64(i) {
			t.Fatalf("bio %d ran in place %d: one worker must keep FIFO order", off, i)
		}
	}
	w.close()

	// After close, a bio is ended rather than lost.
	var b bioset.Bio
	done := make(chan struct{})
	b.Init(bioset.OpRead, 0, 0, nil, func(*bioset.Bio) { close(done) })
	w.push(&b)
	<-done
	if b.Err() != syscall.ESHUTDOWN {
		t.Fatalf("bio after close: %v, want ESHUTDOWN", b.Err())
	}
}

// close runs what is queued before the workers exit: no bio is left
// without an End.
func TestWorkersCloseDrains(t *testing.T) {
	var ended atomic.Int32
	// A slow worker, so that close finds bios still queued.
	w := newWorkers(2, func(b *bioset.Bio) { time.Sleep(time.Millisecond); b.End(nil) })
	bios := make([]bioset.Bio, 100)
	for i := range bios {
		bios[i].Init(bioset.OpFlush, 0, 0, nil, func(*bioset.Bio) { ended.Add(1) })
		w.push(&bios[i])
	}
	w.close()
	if n := ended.Load(); n != int32(len(bios)) {
		t.Fatalf("%d of %d bios ended by the time close returned", n, len(bios))
	}
}
