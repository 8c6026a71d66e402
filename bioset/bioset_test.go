package bioset

import (
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// leaf ends every bio at once, counting them.
type leaf struct{ n atomic.Int64 }

func (l *leaf) Submit(s *Submitter, b *Bio) { l.n.Add(1); b.End(nil) }

// fan serves every bio with width children for lower, allocated from its
// own pool and submitted one by one within a single Submit: the shape of a
// stripe over more chunks than its pool holds.
type fan struct {
	pool  *BioSet
	lower Queue
	width int
}

func (f *fan) Submit(s *Submitter, b *Bio) {
	for i := 0; i < f.width; i++ {
		c := f.pool.Child(s, b)
		c.Dev = f.lower
		s.Submit(c)
	}
	b.End(nil)
}

// grow adds n bios to the pool: the way a test releases a pool it stalled
// on purpose when turning the rescuer on would not help.
func (bs *BioSet) grow(n int) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	for i := 0; i < n; i++ {
		bs.freeList = append(bs.freeList, &Bio{pool: bs, free: true})
	}
	bs.capacity += n
	bs.freed.Broadcast()
}

// submitAsync submits a top bio for dev on a goroutine of its own and
// returns a channel closed when the bio completes.
func submitAsync(dev Queue) (<-chan struct{}, *Bio) {
	done := make(chan struct{})
	top := new(Bio)
	top.Init(OpWrite, 0, 0, nil, func(*Bio) { close(done) })
	top.Dev = dev
	go func() {
		var s Submitter
		s.Submit(top)
	}()
	return done, top
}

// completes is the watchdog: it reports whether done closes within d.
func completes(done <-chan struct{}, d time.Duration) bool {
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// stallBound is how long the watchdog waits before calling a fan-out
// stalled. Without the rescuer the stall is certain, not a race: the test
// only needs to see it persist.
const stallBound = 300 * time.Millisecond

// completeBound is how long a workload that must complete may take on a
// loaded, shared machine before the watchdog calls it a deadlock.
const completeBound = 20 * time.Second

// TestFanOutWithoutRescuerStalls is the first half of the proof: a layer
// whose fan-out exceeds its pool, with no rescuer, waits forever for bios
// that sit unsubmitted on its own Submitter.
func TestFanOutWithoutRescuerStalls(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	lf := &leaf{}
	pool := New(Options{Name: "fan", Capacity: 2, NoRescuer: true})
	f := &fan{pool: pool, lower: lf, width: 4}

	done, _ := submitAsync(f)
	if completes(done, stallBound) {
		t.Fatal("fan-out of 4 over a pool of 2 without a rescuer completed; it must stall")
	}
	st := pool.Stats()
	if st.InUse != 2 || st.Waits == 0 || st.Punted != 0 || lf.n.Load() != 0 {
		t.Fatalf("stalled pool: %+v, leaf saw %d bios; want 2 in use, a waiter, no punts, nothing submitted", st, lf.n.Load())
	}

	// Release: turning the rescuer on lets the waiter punt its pending bios.
	pool.EnableRescuer()
	if !completes(done, completeBound) {
		t.Fatal("still stalled after the rescuer was turned on")
	}
	pool.Close()
}

// TestFanOutWithRescuerCompletes is the second half: the same workload with
// the rescuer on completes, and it took the rescuer to do it.
func TestFanOutWithRescuerCompletes(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	lf := &leaf{}
	pool := New(Options{Name: "fan", Capacity: 2})
	f := &fan{pool: pool, lower: lf, width: 4}

	done, top := submitAsync(f)
	if !completes(done, completeBound) {
		t.Fatalf("fan-out with a rescuer did not complete: %+v", pool.Stats())
	}
	if err := top.Err(); err != nil {
		t.Fatal(err)
	}
	pool.Close()
	st := pool.Stats()
	if st.Punted == 0 || st.Rescued != st.Punted || st.InUse != 0 || lf.n.Load() != 4 {
		t.Fatalf("stats %+v, leaf saw %d; want punts > 0, rescued == punted, none in use, 4 at the leaf", st, lf.n.Load())
	}
}

// twoLevels builds upper (width 4, pool 4) over lower (width 4, pool 2) over
// a leaf. Both pools run empty: upper holds all four of its bios while
// lower fans each of them out wider than its pool.
func twoLevels(puntForeign bool) (upper, lower *fan, lf *leaf) {
	lf = &leaf{}
	lower = &fan{pool: New(Options{Name: "lower", Capacity: 2}), lower: lf, width: 4}
	lower.pool.puntForeign = puntForeign
	upper = &fan{pool: New(Options{Name: "upper", Capacity: 4}), lower: lower, width: 4}
	return upper, lower, lf
}

// TestPuntOnlyOwnBios shows why the rescuer takes only its own pool's bios.
// When lower's pool runs dry, the Submitter also holds upper's bios, queued
// for lower. If lower's rescuer took those too, it would run lower's Submit
// itself, find the pool empty, punt the new children to itself — and wait
// for bios that only it could submit. With the rule, the same stack
// completes.
func TestPuntOnlyOwnBios(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	t.Run("foreign bios punted: stalls", func(t *testing.T) {
		upper, lower, _ := twoLevels(true)
		done, _ := submitAsync(upper)
		if completes(done, stallBound) {
			t.Fatal("completed although the rescuer was given another pool's bios; the rule would be untested")
		}
		if st := lower.pool.Stats(); st.Punted == 0 || st.InUse != st.Capacity {
			t.Fatalf("lower pool %+v: want punts and an exhausted pool", st)
		}
		// Release: enough bios for every waiter to finish.
		lower.pool.grow(16)
		if !completes(done, completeBound) {
			t.Fatal("still stalled after the pool grew")
		}
		upper.pool.Close()
		lower.pool.Close()
	})

	t.Run("own bios only: completes", func(t *testing.T) {
		upper, lower, lf := twoLevels(false)
		done, _ := submitAsync(upper)
		if !completes(done, completeBound) {
			t.Fatalf("two exhausted levels did not complete: upper %+v lower %+v", upper.pool.Stats(), lower.pool.Stats())
		}
		upper.pool.Close()
		lower.pool.Close()
		if n := lf.n.Load(); n != 16 {
			t.Fatalf("leaf saw %d bios, want 16", n)
		}
		if st := lower.pool.Stats(); st.Punted == 0 || st.Rescued != st.Punted {
			t.Fatalf("lower pool %+v: want punts, all rescued", st)
		}
	})
}

// recorder notes the order in which bios reach it.
type recorder struct {
	name string
	log  *[]string
	next func(s *Submitter, b *Bio)
}

func (r *recorder) Submit(s *Submitter, b *Bio) {
	*r.log = append(*r.log, r.name)
	if r.next != nil {
		r.next(s, b)
		return
	}
	b.End(nil)
}

// TestDepthFirstOrder checks docs/DESIGN.md rule 2: after a Submit, bios for lower devices
// run before a requeued bio for the same device, and both before bios that
// were pending earlier; and rule 1: none of it recurses.
func TestDepthFirstOrder(t *testing.T) {
	var log []string
	pool := New(Options{Name: "order", Capacity: 8, NoRescuer: true})
	defer pool.Close()
	low := &recorder{name: "low", log: &log}
	other := &recorder{name: "other", log: &log}
	var top *recorder
	requeued := false
	top = &recorder{name: "top", log: &log, next: func(s *Submitter, b *Bio) {
		if requeued {
			b.End(nil)
			return
		}
		requeued = true
		// Queue, in this order: a bio for another device, the remainder
		// for this device, a bio for a lower device.
		o := pool.Child(s, b)
		o.Dev = other
		s.Submit(o)
		s.Submit(b)
		c := pool.Child(s, b)
		c.Dev = low
		s.Submit(c)
		if got := len(log); got != 1 {
			t.Errorf("children ran inside Submit (log %v): recursion, not iteration", log)
		}
	}}
	var b Bio
	done := false
	b.Init(OpWrite, 0, 0, nil, func(*Bio) { done = true })
	b.Dev = top
	var s Submitter
	s.Submit(&b)
	want := []string{"top", "other", "low", "top"}
	if len(log) != len(want) {
		t.Fatalf("order %v, want %v", log, want)
	}
	for i := range want {
		if log[i] != want[i] {
			t.Fatalf("order %v, want %v", log, want)
		}
	}
	if !done {
		t.Fatal("top bio did not complete")
	}
}

// TestChainErrorFirstWins: a parent reports the first error of its
// children, and only completes when the last of them ends.
func TestChainErrorFirstWins(t *testing.T) {
	pool := New(Options{Name: "chain", Capacity: 4, NoRescuer: true})
	defer pool.Close()
	var parent Bio
	ended := 0
	parent.Init(OpRead, 0, 8, make([]byte, 8), func(*Bio) { ended++ })
	a, b := pool.Child(nil, &parent), pool.Child(nil, &parent)
	parent.End(nil)
	a.End(syscall.ENOSPC)
	if ended != 0 {
		t.Fatal("parent completed with a child outstanding")
	}
	b.End(syscall.EIO)
	if ended != 1 {
		t.Fatalf("parent completed %d times, want 1", ended)
	}
	if parent.Err() != syscall.ENOSPC {
		t.Fatalf("parent error %v, want the first, ENOSPC", parent.Err())
	}
	if st := pool.Stats(); st.InUse != 0 {
		t.Fatalf("children not returned to the pool: %+v", st)
	}
}

// TestSplitSharesBuffer: the front piece references the parent's buffer.
func TestSplitSharesBuffer(t *testing.T) {
	pool := New(Options{Name: "split", Capacity: 1, NoRescuer: true})
	defer pool.Close()
	buf := make([]byte, 100)
	var p Bio
	p.Init(OpWrite, 1000, 100, buf, nil)
	c := pool.Split(nil, &p, 30)
	if c.Offset != 1000 || c.Length != 30 || &c.Buf[0] != &buf[0] || cap(c.Buf) != 30 {
		t.Fatalf("front %d+%d, shares buffer %v, cap %d", c.Offset, c.Length, &c.Buf[0] == &buf[0], cap(c.Buf))
	}
	if p.Offset != 1030 || p.Length != 70 || &p.Buf[0] != &buf[30] {
		t.Fatalf("remainder %d+%d", p.Offset, p.Length)
	}
}

// TestPoolBound hammers a small pool from many goroutines; popLocked panics
// if it ever hands out more than its capacity, and Stats must agree.
func TestPoolBound(t *testing.T) {
	pool := New(Options{Name: "bound", Capacity: 3, NoRescuer: true})
	defer pool.Close()
	var wg sync.WaitGroup
	var maxSeen atomic.Int64
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				b := pool.Alloc(nil)
				if n := int64(pool.Stats().InUse); n > maxSeen.Load() {
					maxSeen.Store(n)
				}
				pool.Free(b)
			}
		}()
	}
	wg.Wait()
	if m := maxSeen.Load(); m > 3 || m < 1 {
		t.Fatalf("saw %d in use, capacity 3", m)
	}
	if st := pool.Stats(); st.InUse != 0 || st.Allocs != 16*2000 {
		t.Fatalf("after the run: %+v", st)
	}
}

func TestDoubleFreePanics(t *testing.T) {
	pool := New(Options{Name: "df", Capacity: 1, NoRescuer: true})
	defer pool.Close()
	b := pool.Alloc(nil)
	pool.Free(b)
	defer func() {
		if recover() == nil {
			t.Fatal("double free did not panic")
		}
	}()
	pool.Free(b)
}

func TestAllocFreeAllocatesNothing(t *testing.T) {
	pool := New(Options{Name: "allocs", Capacity: 4})
	defer pool.Close()
	var s Submitter
	if n := testing.AllocsPerRun(1000, func() { pool.Free(pool.Alloc(&s)) }); n != 0 {
		t.Fatalf("%v heap allocations per alloc/free, want 0", n)
	}
}

func BenchmarkAllocFree(b *testing.B) {
	pool := New(Options{Name: "bench", Capacity: 64})
	defer pool.Close()
	var s Submitter
	b.ReportAllocs()
	for b.Loop() {
		pool.Free(pool.Alloc(&s))
	}
}

func BenchmarkAllocFreeParallel(b *testing.B) {
	pool := New(Options{Name: "bench", Capacity: 64})
	defer pool.Close()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var s Submitter
		for pb.Next() {
			pool.Free(pool.Alloc(&s))
		}
	})
}
