package targets

import (
	"sync"
	"syscall"

	"github.com/stackd/stackd/bioset"
)

// DefaultWorkers is the number of I/O goroutines a File runs when not
// told otherwise: enough to keep a disk's
// queue busy without turning every in-flight bio into a goroutine.
const DefaultWorkers = 8

// DefaultBackendWorkers is the size of a Backend's pool. go-nbd backends
// usually serialise on a lock of their own, so more goroutines would only
// queue there.
const DefaultBackendWorkers = 4

// workers runs bios on a fixed set of goroutines, for targets whose I/O can
// block (a syscall, a slow backend). Submit must never
// block, so enqueue never waits: the queue is a ring buffer that grows when
// full instead of a bounded channel that would make the submitter wait.
//
// Growing is safe because the number of bios that can be queued here is
// already bounded above: every bio comes from a connection's bounded request
// pool or a layer's bounded BioSet, so the ring stops growing at the total
// in flight and steady state allocates nothing. A fixed-size channel would
// have to be sized for that same worst case up front, or else block — and a
// blocked Submit would stall a Submitter holding other layers' bios, with no
// rescuer to release them (docs/DESIGN.md rule 8).
type workers struct {
	do func(*bioset.Bio)

	mu     sync.Mutex
	more   sync.Cond // signalled when the ring gains a bio, or on close
	ring   []*bioset.Bio
	head   int
	n      int
	closed bool
	wg     sync.WaitGroup
}

// newWorkers starts n goroutines that call do for every queued bio.
func newWorkers(n int, do func(*bioset.Bio)) *workers {
	if n < 1 {
		n = DefaultWorkers
	}
	w := &workers{do: do, ring: make([]*bioset.Bio, 64)}
	w.more.L = &w.mu
	w.wg.Add(n)
	for range n {
		go w.run()
	}
	return w
}

// push queues b for a worker. It never waits for a worker to be free.
func (w *workers) push(b *bioset.Bio) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		// A bio after Close is a caller bug; ending it keeps the
		// caller's request from hanging forever.
		b.End(syscall.ESHUTDOWN)
		return
	}
	if w.n == len(w.ring) {
		w.grow()
	}
	w.ring[(w.head+w.n)&(len(w.ring)-1)] = b
	w.n++
	w.mu.Unlock()
	w.more.Signal()
}

// grow doubles the ring, keeping the queue's order. len(ring) stays a power
// of two so that indexing is a mask.
func (w *workers) grow() {
	ring := make([]*bioset.Bio, 2*len(w.ring))
	for i := range w.n {
		ring[i] = w.ring[(w.head+i)&(len(w.ring)-1)]
	}
	w.ring, w.head = ring, 0
}

func (w *workers) run() {
	defer w.wg.Done()
	w.mu.Lock()
	for {
		for w.n == 0 && !w.closed {
			w.more.Wait()
		}
		if w.n == 0 {
			w.mu.Unlock()
			return
		}
		b := w.ring[w.head]
		w.ring[w.head] = nil // pin no bio once it is done
		w.head = (w.head + 1) & (len(w.ring) - 1)
		w.n--
		w.mu.Unlock()
		w.do(b)
		w.mu.Lock()
	}
}

// close lets the workers finish what is queued — so that no bio is left
// without an End — and waits for them to exit.
func (w *workers) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.more.Broadcast()
	w.wg.Wait()
}
