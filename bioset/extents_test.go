package bioset

import (
	"slices"
	"sync"
	"testing"
)

const hz = ExtentHole | ExtentZero

func TestCompactExtents(t *testing.T) {
	for _, tc := range []struct {
		name      string
		window    []Extent
		off, n    uint64
		want      []Extent
		wantSlots int
	}{
		{
			name: "children's parts join and merge across their seams",
			// Three parts of two slots, the way a layer hands them out,
			// each filled from its front.
			window: []Extent{{0, 10, hz}, {}, {10, 5, hz}, {15, 5, 0}, {20, 30, 0}, {}},
			off:    0, n: 50,
			want: []Extent{{0, 15, hz}, {15, 35, 0}},
		},
		{
			name:   "a part that falls short ends the answer",
			window: []Extent{{0, 8, hz}, {}, {10, 5, hz}, {}},
			off:    0, n: 15,
			want: []Extent{{0, 8, hz}},
		},
		{
			name:   "clipped to the range, overlaps skipped",
			window: []Extent{{90, 20, 0}, {100, 5, 0}, {110, 100, hz}},
			off:    100, n: 50,
			want: []Extent{{100, 10, 0}, {110, 40, hz}},
		},
		{
			name:   "an answer that does not start at off is none",
			window: []Extent{{5, 10, 0}},
			off:    0, n: 15,
			want: nil,
		},
		{
			name:   "flags stay as they are",
			window: []Extent{{0, 1, 4 | ExtentZero}, {1, 1, 4 | ExtentZero}, {2, 1, ExtentZero}},
			off:    0, n: 3,
			want: []Extent{{0, 2, 4 | ExtentZero}, {2, 1, ExtentZero}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := slices.Clone(tc.window)
			n := CompactExtents(w, tc.off, tc.n)
			if got := w[:n]; !slices.Equal(got, tc.want) {
				t.Fatalf("answer %v, want %v", got, tc.want)
			}
			for i, e := range w[n:] {
				if e != (Extent{}) {
					t.Fatalf("slot %d after the answer is %v, want unused", n+i, e)
				}
			}
		})
	}
}

func TestExtentWriterRoom(t *testing.T) {
	w := []Extent{{}, {}, {7, 7, 7}}
	ew := NewExtentWriter(w, 2)
	for _, e := range []Extent{{0, 1, 0}, {1, 1, 0}, {2, 1, hz}} {
		if !ew.Add(e.Offset, e.Length, e.Flags) {
			t.Fatalf("Add(%v) found no room", e)
		}
	}
	if ew.Add(3, 1, 0) {
		t.Fatal("Add of a third extent into room for two succeeded")
	}
	if !ew.Add(3, 4, hz) { // merges: needs no slot
		t.Fatal("Add that merges into the last extent failed")
	}
	ew.Finish()
	if want := []Extent{{0, 2, 0}, {2, 5, hz}, {}}; !slices.Equal(w, want) {
		t.Fatalf("window %v, want %v", w, want)
	}
}

// TestGatherRunsOnceAfterEveryChild ends the children of a fanned-out bio
// on goroutines of their own, in any order, and requires the gather to see
// every child's answer and to run before the parent passes its outcome
// on. The race detector checks that the answers need no lock.
func TestGatherRunsOnceAfterEveryChild(t *testing.T) {
	const width = 16
	bs := New(Options{Name: "gather", Capacity: width})
	defer bs.Close()
	for round := 0; round < 50; round++ {
		window := make([]Extent, width)
		var parent Bio
		done := make(chan []Extent, 1)
		gathered := 0
		parent.Init(OpBlockStatus, 0, width*10, nil, func(b *Bio) {
			if gathered != 1 {
				t.Errorf("parent completed after %d gathers, want 1", gathered)
			}
			done <- b.Extents
		})
		parent.Extents = window
		parent.SetGather(func(b *Bio) {
			gathered++
			CompactExtents(b.Extents, 0, b.Length)
		})
		var start sync.WaitGroup
		start.Add(1)
		for i := 0; i < width; i++ {
			c := bs.Child(nil, &parent)
			c.Extents = window[i : i+1]
			go func(i int) {
				start.Wait()
				c.Extents[0] = Extent{Offset: uint64(i) * 10, Length: 10, Flags: hz}
				c.End(nil)
			}(i)
		}
		start.Done()
		parent.End(nil)
		got := <-done
		if want := (Extent{Offset: 0, Length: width * 10, Flags: hz}); got[0] != want || got[1] != (Extent{}) {
			t.Fatalf("round %d: answer %v, want %v alone", round, got, want)
		}
	}
}

func TestGatherSetTwicePanics(t *testing.T) {
	var b Bio
	b.Init(OpBlockStatus, 0, 1, nil, nil)
	b.SetGather(func(*Bio) {})
	defer func() {
		if recover() == nil {
			t.Fatal("a second SetGather did not panic")
		}
	}()
	b.SetGather(func(*Bio) {})
}
