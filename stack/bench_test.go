package stack

import (
	"fmt"
	"testing"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/targets"
)

// benchStack builds depth layers (split, then stripe, then linear) over
// leaves made by leaf, each leaf 16 MiB.
func benchStack(tb testing.TB, depth int, leaf func() Device) Device {
	tb.Helper()
	pool := bioset.Options{Capacity: 64}
	var dev Device
	switch depth {
	case 0:
		return leaf()
	case 1:
		pool.Name = "b/split"
		sp, err := NewSplit(leaf(), 1<<20, 0, pool)
		if err != nil {
			tb.Fatal(err)
		}
		dev = sp
	case 2, 3:
		legs := make([]Device, 4)
		for i := range legs {
			if depth == 3 {
				ln, err := NewLinear([]Device{leaf(), leaf()}, bioset.Options{Name: fmt.Sprintf("b/lin%d", i), Capacity: 64})
				if err != nil {
					tb.Fatal(err)
				}
				tb.Cleanup(func() { ln.Close() })
				legs[i] = ln
			} else {
				legs[i] = leaf()
			}
		}
		st, err := NewStripe(legs, 65536, bioset.Options{Name: "b/stripe", Capacity: 64})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { st.Close() })
		pool.Name = "b/split"
		sp, err := NewSplit(st, 1<<20, 0, pool)
		if err != nil {
			tb.Fatal(err)
		}
		dev = sp
	}
	tb.Cleanup(func() { dev.Close() })
	return dev
}

var benchLeaves = map[string]func() Device{
	"null":   func() Device { return targets.NewNull(16 << 20) },
	"memory": func() Device { return targets.NewMemory(16<<20, 0) },
}

// syncRequest is a reusable top bio for a synchronous target: the leaves
// used here end bios before Submit returns, so no channel is needed and
// the measurement is the stack alone.
type syncRequest struct {
	b    bioset.Bio
	done bool
	end  func(*bioset.Bio)
	// extents is the result window a BLOCK_STATUS request is given,
	// cleared for each, as the protocol layer does.
	extents []bioset.Extent
}

func newSyncRequest() *syncRequest {
	r := &syncRequest{}
	r.end = func(*bioset.Bio) { r.done = true }
	return r
}

func (r *syncRequest) run(s *bioset.Submitter, dev Device, op bioset.Op, off, n uint64, buf []byte) {
	r.done = false
	r.b.Init(op, off, n, buf, r.end)
	r.b.Dev = dev
	r.b.TopOffset = off
	if op == bioset.OpBlockStatus {
		clear(r.extents)
		r.b.Extents = r.extents
	}
	s.Submit(&r.b)
	if !r.done {
		panic("synchronous leaf left a bio in flight")
	}
}

// TestSteadyStateAllocs: in steady state a request allocates nothing on the
// heap, whether it is remapped in place (inside a chunk) or served with
// children from the layers' pools (across chunks).
func TestSteadyStateAllocs(t *testing.T) {
	dev := benchStack(t, 3, benchLeaves["memory"])
	var s bioset.Submitter
	r := newSyncRequest()
	buf := make([]byte, 256<<10)
	for _, n := range []uint64{4096, 256 << 10} {
		for _, op := range []bioset.Op{bioset.OpWrite, bioset.OpRead} {
			off := uint64(65536 - 2048) // crosses a chunk when n allows
			r.run(&s, dev, bioset.OpWrite, off, n, buf[:n])
			allocs := testing.AllocsPerRun(200, func() { r.run(&s, dev, op, off, n, buf[:n]) })
			if allocs != 0 {
				t.Errorf("%v of %d bytes through 3 layers: %v heap allocations per request, want 0", op, n, allocs)
			}
		}
	}
}

// BenchmarkStack measures a 4 KiB request through 0 to 3 layers into a
// null and a memory leaf. The aligned case is remapped in place at every
// layer; the "cross" case straddles a stripe chunk, so the stripe serves it
// with two children from its pool.
func BenchmarkStack(b *testing.B) {
	for _, leafName := range []string{"null", "memory"} {
		for depth := 0; depth <= 3; depth++ {
			for _, cross := range []bool{false, true} {
				if cross && depth < 2 {
					continue
				}
				name := fmt.Sprintf("%s/layers=%d", leafName, depth)
				if cross {
					name += "/cross"
				}
				b.Run(name, func(b *testing.B) {
					dev := benchStack(b, depth, benchLeaves[leafName])
					var s bioset.Submitter
					r := newSyncRequest()
					buf := make([]byte, 4096)
					off := uint64(8192)
					if cross {
						off = 65536 - 2048
					}
					r.run(&s, dev, bioset.OpWrite, off, 4096, buf)
					b.SetBytes(4096)
					b.ReportAllocs()
					for b.Loop() {
						r.run(&s, dev, bioset.OpRead, off, 4096, buf)
					}
				})
			}
		}
	}
}
