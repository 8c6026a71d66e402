package bioset

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a BioSet.
type Options struct {
	// Name identifies the pool in panics and metrics: the layer's stable
	// path, such as "default/split/stripe".
	Name string
	// Capacity is the number of bios the pool holds; it never hands out
	// more. At least 1.
	Capacity int
	// NoRescuer runs the pool without a rescuer. A layer whose fan-out
	// exceeds Capacity can then deadlock: the switch exists so the test
	// suite can show that it does, and for top-level pools (a connection's
	// request bios) that are never allocated from inside a Submit.
	NoRescuer bool
}

// BioSet is a bounded pool of bios owned by one layer, with a rescuer.
//
// docs/DESIGN.md rule 3, one layer, one pool: a layer allocates its children only from its
// own BioSet. If two layers shared one, the lower could wait for bios that
// only the upper can free while the upper waits for the lower.
type BioSet struct {
	name     string
	capacity int

	mu        sync.Mutex
	freed     sync.Cond // signalled when a bio returns to freeList
	freeList  []*Bio
	inUse     int
	rescuerOn bool
	// puntForeign breaks docs/DESIGN.md rule 5 on purpose: the test suite sets it to show
	// the deadlock that punting another pool's bios causes.
	puntForeign bool

	rescueList  bioList   // guarded by mu
	rescueWake  sync.Cond // signalled when rescueList gains bios or on Close
	rescuerDone chan struct{}
	closed      bool

	allocs    atomic.Uint64
	waits     atomic.Uint64
	waitNanos atomic.Uint64
	punted    atomic.Uint64
	rescued   atomic.Uint64
}

// New creates a pool of o.Capacity bios, all allocated now so that steady
// state allocates nothing, and starts its rescuer unless o.NoRescuer.
func New(o Options) *BioSet {
	if o.Capacity < 1 {
		panic(fmt.Sprintf("bioset %q: capacity %d < 1", o.Name, o.Capacity))
	}
	bs := &BioSet{name: o.Name, capacity: o.Capacity}
	bs.freed.L = &bs.mu
	bs.rescueWake.L = &bs.mu
	bios := make([]Bio, o.Capacity)
	bs.freeList = make([]*Bio, 0, o.Capacity)
	for i := range bios {
		bios[i].pool = bs
		bios[i].free = true
		bs.freeList = append(bs.freeList, &bios[i])
	}
	if !o.NoRescuer {
		bs.EnableRescuer()
	}
	return bs
}

// Name returns the pool's name.
func (bs *BioSet) Name() string { return bs.name }

// Capacity returns the number of bios the pool holds.
func (bs *BioSet) Capacity() int { return bs.capacity }

// TryAlloc returns a bio from the pool, or nil at once if it is empty.
func (bs *BioSet) TryAlloc() *Bio {
	bs.mu.Lock()
	b := bs.popLocked()
	bs.mu.Unlock()
	return b
}

// Alloc returns a bio from the pool, waiting for one to be freed if it is
// empty. s is the Submitter of the calling goroutine (nil outside any
// Submit). The bio has one reference, no parent and no error.
//
// docs/DESIGN.md rule 5, the rescuer. A layer calls Alloc from inside its Submit, and the
// bios it allocated earlier in that Submit (or that are queued from an
// earlier one) sit on s, unsubmitted, until Submit returns. If the pool is
// empty and Alloc simply waited, it could wait for one of those very bios:
// they cannot complete, and so cannot be freed, until this goroutine
// returns — a deadlock, however large the pool, as soon as one request fans
// out wider than the pool. So when the pool is empty and s has pending
// bios, Alloc first punts the pending bios that came from this pool to the
// pool's rescuer goroutine, which submits them on its own Submitter; they
// then reach the devices below, complete and return to the pool, and the
// wait ends.
//
// Only this pool's bios are punted. A bio from a higher layer's pool is
// addressed to a device at or above this layer, whose Submit may allocate
// from this very pool; if the rescuer ran it, the rescuer itself could block
// here waiting for bios that only it can submit. This pool's own bios are
// addressed to devices below it (rule 3, and an acyclic stack), which never
// allocate from it, so the rescuer never waits on its own pool. The pool
// below has a rescuer of its own for the same reason, and so on down.
func (bs *BioSet) Alloc(s *Submitter) *Bio {
	bs.mu.Lock()
	if b := bs.popLocked(); b != nil {
		bs.mu.Unlock()
		return b
	}
	start := time.Now()
	bs.waits.Add(1)
	for {
		if bs.rescuerOn && s.pending() {
			if n := s.takeFrom(bs, &bs.rescueList, bs.puntForeign); n > 0 {
				bs.punted.Add(uint64(n))
				bs.rescueWake.Signal()
			}
		}
		bs.freed.Wait()
		if b := bs.popLocked(); b != nil {
			bs.mu.Unlock()
			bs.waitNanos.Add(uint64(time.Since(start)))
			return b
		}
	}
}

func (bs *BioSet) popLocked() *Bio {
	n := len(bs.freeList)
	if n == 0 {
		return nil
	}
	b := bs.freeList[n-1]
	bs.freeList = bs.freeList[:n-1]
	bs.inUse++
	// Invariant: the pool never hands out more than its capacity. The free
	// list can only hold the pool's own bios, once each (Free checks), so
	// this cannot fire unless that bookkeeping is broken.
	if bs.inUse > bs.capacity {
		panic(fmt.Sprintf("bioset %q: %d bios in use, capacity %d", bs.name, bs.inUse, bs.capacity))
	}
	bs.allocs.Add(1)
	b.free = false
	b.remaining.Store(1)
	return b
}

// Free returns b to its pool and wakes one waiting allocator. End frees
// chained bios itself; an owner frees an unchained bio once it has read the
// result.
func (bs *BioSet) Free(b *Bio) {
	if b.pool != bs {
		panic(fmt.Sprintf("bioset %q: freeing a bio that belongs elsewhere", bs.name))
	}
	bs.mu.Lock()
	if b.free {
		bs.mu.Unlock()
		panic(fmt.Sprintf("bioset %q: bio freed twice", bs.name))
	}
	// Reset here, not in Alloc, so that a free bio pins no buffer.
	*b = Bio{pool: bs, free: true}
	bs.freeList = append(bs.freeList, b)
	bs.inUse--
	bs.freed.Signal()
	bs.mu.Unlock()
}

// Split allocates a child for the first n bytes of b, chains it to b and
// advances b past those bytes. The child has b's op, flags and device, and
// a sub-slice of b's buffer; the caller points it at a lower device and
// submits it, then requeues or ends b.
func (bs *BioSet) Split(s *Submitter, b *Bio, n uint64) *Bio {
	if n == 0 || n >= b.Length {
		panic(fmt.Sprintf("bioset %q: split at %d of a %d-byte bio", bs.name, n, b.Length))
	}
	c := bs.Alloc(s)
	c.Op, c.Flags, c.Dev = b.Op, b.Flags, b.Dev
	c.Offset, c.Length, c.TopOffset = b.Offset, n, b.TopOffset
	if b.Op.HasPayload() {
		c.Buf = b.Buf[:n:n]
	}
	Chain(c, b)
	b.Advance(n)
	return c
}

// Child allocates a child of parent with parent's op and flags, chained to
// it. The caller sets its device, range, buffer and extent window.
func (bs *BioSet) Child(s *Submitter, parent *Bio) *Bio {
	c := bs.Alloc(s)
	c.Op, c.Flags = parent.Op, parent.Flags
	Chain(c, parent)
	return c
}

// EnableRescuer starts the rescuer if it is not running. Pools start with
// it on unless Options.NoRescuer; tests turn it on later to release a pool
// they stalled on purpose.
func (bs *BioSet) EnableRescuer() {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if bs.rescuerOn || bs.closed {
		return
	}
	bs.rescuerOn = true
	bs.rescuerDone = make(chan struct{})
	go bs.rescue(bs.rescuerDone)
	// Wake waiters so that one stalled with pending bios punts them now.
	bs.freed.Broadcast()
}

// rescue is the rescuer goroutine: it submits punted bios on a Submitter of
// its own, so they make progress while the goroutine that punted them waits
// in Alloc.
func (bs *BioSet) rescue(done chan struct{}) {
	defer close(done)
	var s Submitter
	bs.mu.Lock()
	for {
		for bs.rescueList.Empty() && !bs.closed {
			bs.rescueWake.Wait()
		}
		if bs.rescueList.Empty() {
			bs.mu.Unlock()
			return
		}
		work := bs.rescueList.Take()
		bs.mu.Unlock()
		for b := work.PopFront(); b != nil; b = work.PopFront() {
			bs.rescued.Add(1)
			s.Submit(b)
		}
		bs.mu.Lock()
	}
}

// Close stops the rescuer once it has submitted everything punted to it,
// and waits for it to exit. Bios still in flight are not waited for: close
// a pool once its layer is idle.
func (bs *BioSet) Close() {
	bs.mu.Lock()
	bs.closed = true
	done := bs.rescuerDone
	bs.rescueWake.Broadcast()
	bs.mu.Unlock()
	if done != nil {
		<-done
	}
}

// Stats is a snapshot of a pool's counters, for metrics.
type Stats struct {
	Capacity int
	InUse    int
	// Allocs counts bios handed out; Waits the allocations that found the
	// pool empty and waited, for WaitTime in total.
	Allocs   uint64
	Waits    uint64
	WaitTime time.Duration
	// Punted counts bios handed to the rescuer, Rescued those it has
	// submitted; RescueQueue is how many wait for it now.
	Punted      uint64
	Rescued     uint64
	RescueQueue int
	RescuerOn   bool
}

// Stats returns the pool's counters.
func (bs *BioSet) Stats() Stats {
	bs.mu.Lock()
	st := Stats{Capacity: bs.capacity, InUse: bs.inUse, RescueQueue: bs.rescueList.Len(), RescuerOn: bs.rescuerOn}
	bs.mu.Unlock()
	st.Allocs = bs.allocs.Load()
	st.Waits = bs.waits.Load()
	st.WaitTime = time.Duration(bs.waitNanos.Load())
	st.Punted = bs.punted.Load()
	st.Rescued = bs.rescued.Load()
	return st
}
