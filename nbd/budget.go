package nbd

import (
	"fmt"
	"sync"

	"github.com/stackd/stackd/internal/intrusive"
)

// budget is a weighted semaphore over the bytes of payload buffers that
// all connections of a server hold at once (docs/DESIGN.md rule 7:
// bounded everywhere). A connection's reader acquires before it reads a WRITE
// payload into a buffer or submits a READ, and releases once the reply is
// sent; a direct write (direct.go) reads its payload into the device and
// holds no buffer, so it takes nothing. When the
// budget is spent the reader stops reading its socket: the client feels
// backpressure through TCP instead of the server growing.
//
// Waiters are served in FIFO order, so a 32 MiB request is not starved by a
// stream of small ones. Each waiter is a connection's reader (one at a
// time per connection), which brings its own budgetWaiter: waiting
// allocates nothing.
//
// Why waiting cannot deadlock: every byte in use belongs to a request that
// has been read in full and handed to a device (or is being read by a
// reader that already holds it). Such a request completes, and its reply
// is sent and the bytes released, without any reader making progress:
// the writer sends it, or the reader did before it began to wait (a
// reader first sends the replies it holds back; see conn.idle).
type budget struct {
	mu       sync.Mutex
	capacity int64
	used     int64 // guarded by mu
	peak     int64 // guarded by mu; high-water mark of used
	waits    uint64
	waiters  intrusive.List[budgetWaiter] // in line, first come first served; guarded by mu
}

// budgetWaiter is one reader's place in the queue.
type budgetWaiter struct {
	n       int64
	granted bool          // guarded by budget.mu
	ready   chan struct{} // cap 1: signalled once when granted
	link    intrusive.Link[budgetWaiter]
}

func newBudgetWaiter() *budgetWaiter {
	return &budgetWaiter{ready: make(chan struct{}, 1)}
}

func newBudget(capacity int64) *budget {
	return &budget{capacity: capacity}
}

// acquire takes n bytes, waiting in line while they are not available. It
// returns false, holding nothing, if cancel is closed first. n must not
// exceed the capacity (NewServer checks PayloadBudget >= MaxPayload).
func (b *budget) acquire(w *budgetWaiter, n int64, cancel <-chan struct{}) bool {
	b.checkRequest(n)
	b.mu.Lock()
	if b.takeNowLocked(n) {
		b.mu.Unlock()
		return true
	}
	b.waits++
	w.n, w.granted = n, false
	b.waiters.PushBack(w, &w.link)
	b.mu.Unlock()

	select {
	case <-w.ready:
		return true
	case <-cancel:
	}
	b.mu.Lock()
	if w.granted {
		// Granted while we were giving up: keep it, the caller releases.
		b.mu.Unlock()
		<-w.ready
		return true
	}
	b.waiters.Remove(&w.link)
	// Our place at the head may have held back smaller waiters behind us.
	b.grantLocked()
	b.mu.Unlock()
	return false
}

// checkRequest panics on a request that could never be granted; capacity
// never changes, so no lock is needed.
func (b *budget) checkRequest(n int64) {
	if n > b.capacity {
		panic(fmt.Sprintf("nbd: payload budget: acquiring %d bytes of %d", n, b.capacity))
	}
}

// tryAcquire takes n bytes if they are available now and nobody waits.
func (b *budget) tryAcquire(n int64) bool {
	b.checkRequest(n)
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.takeNowLocked(n)
}

// takeNowLocked takes n bytes if they are free and nobody is in line
// before us (FIFO: a waiter's bytes are not taken from under it).
func (b *budget) takeNowLocked(n int64) bool {
	if b.waiters.Empty() && b.used+n <= b.capacity {
		b.takeLocked(n)
		return true
	}
	return false
}

// release returns n bytes and wakes the waiters that now fit, in order.
func (b *budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	if b.used < 0 {
		used := b.used
		b.mu.Unlock()
		panic(fmt.Sprintf("nbd: payload budget: released %d bytes more than taken", -used))
	}
	b.grantLocked()
	b.mu.Unlock()
}

func (b *budget) grantLocked() {
	for w := b.waiters.Front(); w != nil && b.used+w.n <= b.capacity; w = b.waiters.Front() {
		b.waiters.PopFront()
		b.takeLocked(w.n)
		w.granted = true
		w.ready <- struct{}{} // never blocks: cap 1, signalled once per wait
	}
}

// takeLocked is the one place bytes are taken, so the invariant is checked
// here: the budget never hands out more than its capacity.
func (b *budget) takeLocked(n int64) {
	b.used += n
	if b.used > b.capacity {
		panic(fmt.Sprintf("nbd: payload budget: %d bytes in use, capacity %d", b.used, b.capacity))
	}
	if b.used > b.peak {
		b.peak = b.used
	}
}

// budgetStats is a snapshot for ServerStats.
type budgetStats struct {
	used, peak, capacity int64
	waits                uint64
}

func (b *budget) stats() budgetStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return budgetStats{used: b.used, peak: b.peak, capacity: b.capacity, waits: b.waits}
}
