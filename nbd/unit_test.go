package nbd

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
)

func TestBudgetFIFOAndCancel(t *testing.T) {
	b := newBudget(100)
	never := make(chan struct{})
	w1, w2, w3 := newBudgetWaiter(), newBudgetWaiter(), newBudgetWaiter()
	if !b.acquire(w1, 60, never) {
		t.Fatal("first acquire failed")
	}
	got := make(chan string, 3)
	go func() {
		if b.acquire(w2, 80, never) {
			got <- "big"
		}
	}()
	waitFor(t, "big waiter queued", func() bool { return b.stats().waits == 1 })
	// A small request that would fit waits behind the big one (FIFO).
	cancel := make(chan struct{})
	go func() {
		if !b.acquire(w3, 10, cancel) {
			got <- "cancelled"
		}
	}()
	waitFor(t, "small waiter queued", func() bool { return b.stats().waits == 2 })
	select {
	case s := <-got:
		t.Fatalf("%s acquired out of order", s)
	case <-time.After(10 * time.Millisecond):
	}
	close(cancel)
	if s := <-got; s != "cancelled" {
		t.Fatalf("got %s", s)
	}
	b.release(60)
	if s := <-got; s != "big" {
		t.Fatalf("got %s", s)
	}
	if st := b.stats(); st.used != 80 || st.peak != 80 {
		t.Fatalf("stats %+v", st)
	}
	b.release(80)
}

// TestBudgetHammer races many acquirers; the invariant check inside the
// budget panics if it ever hands out more than its capacity.
func TestBudgetHammer(t *testing.T) {
	const capacity = 1000
	b := newBudget(capacity)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := newBudgetWaiter()
			rng := rand.New(rand.NewPCG(uint64(i), 2))
			for range 500 {
				n := int64(1 + rng.IntN(capacity))
				if b.acquire(w, n, stop) {
					b.release(n)
				}
			}
		}()
	}
	wg.Wait()
	if st := b.stats(); st.used != 0 || st.peak > capacity {
		t.Fatalf("stats %+v", st)
	}
}

func TestBufClass(t *testing.T) {
	for _, tc := range []struct{ n, size int }{
		{1, 4096}, {4096, 4096}, {4097, 8192}, {1 << 20, 1 << 20}, {1<<20 + 1, 2 << 20}, {MaxPayload, MaxPayload},
	} {
		if got := classSize(bufClass(tc.n)); got != int64(tc.size) {
			t.Errorf("class of %d: %d bytes, want %d", tc.n, got, tc.size)
		}
		p := getBuf(tc.n)
		if len(*p) != tc.size {
			t.Errorf("getBuf(%d) has %d bytes", tc.n, len(*p))
		}
		putBuf(p)
	}
}

func TestCompactExtents(t *testing.T) {
	const h, z = bioset.ExtentHole, bioset.ExtentZero
	e := func(off, n uint64, f bioset.ExtentFlags) bioset.Extent {
		return bioset.Extent{Offset: off, Length: n, Flags: f}
	}
	for _, tc := range []struct {
		name   string
		off, n uint64
		slots  []bioset.Extent
		want   []bioset.Extent
	}{
		{"empty", 0, 100, nil, nil},
		{"all unused", 0, 100, make([]bioset.Extent, 3), nil},
		{"one", 10, 100, []bioset.Extent{e(10, 100, 0)}, []bioset.Extent{e(10, 100, 0)}},
		{"clipped", 10, 50, []bioset.Extent{e(10, 100, h)}, []bioset.Extent{e(10, 50, h)}},
		{"merge equal", 0, 30, []bioset.Extent{e(0, 10, h|z), e(10, 10, h|z), e(20, 10, 0)},
			[]bioset.Extent{e(0, 20, h|z), e(20, 10, 0)}},
		{"skip unused slots", 0, 30, []bioset.Extent{e(0, 10, 0), {}, {}, e(10, 20, h)},
			[]bioset.Extent{e(0, 10, 0), e(10, 20, h)}},
		{"stop at gap", 0, 100, []bioset.Extent{e(0, 10, 0), e(20, 10, h)}, []bioset.Extent{e(0, 10, 0)}},
		{"gap at start", 0, 100, []bioset.Extent{e(5, 10, 0)}, nil},
		{"overlap trimmed", 0, 30, []bioset.Extent{e(0, 10, 0), e(5, 10, h), e(15, 15, h)},
			[]bioset.Extent{e(0, 10, 0), e(10, 20, h)}},
		{"unknown flags dropped", 0, 10, []bioset.Extent{e(0, 10, 0xf0|z)}, []bioset.Extent{e(0, 10, z)}},
		{"overflowing length", 0, 10, []bioset.Extent{e(0, ^uint64(0), 0)}, []bioset.Extent{e(0, 10, 0)}},
	} {
		got := compactExtents(tc.slots, tc.off, tc.n)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
