package stack

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
)

// TestDirectThroughLayers: direct writes through split -> stripe -> linear
// -> memory, each cut by every layer on the way and partly copied from a
// head, land exactly where WRITE bios of the same bytes would, with the
// rest handed to fill in increasing offset; each node counts them as the
// WRITEs they stand for.
func TestDirectThroughLayers(t *testing.T) {
	const chunk = 64 << 10
	spec := splitSpec(1<<20, 0, PoolSpec{}, stripeSpec(chunk, PoolSpec{},
		linearSpec(PoolSpec{}, memorySpec(1<<20, 0), memorySpec(1<<20, 0)),
		linearSpec(PoolSpec{}, memorySpec(1<<20, 0), memorySpec(1<<20, 0)),
		linearSpec(PoolSpec{}, memorySpec(1<<20, 0), memorySpec(1<<20, 0)),
	))
	st, err := Build("d", spec, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	d := bioset.DirectOf(st.Root)
	if d == nil {
		t.Fatal("split -> stripe -> linear -> memory offers no direct access")
	}
	size := st.Root.Size()
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	var s bioset.Submitter
	for i := range 200 {
		n := uint64(1 + rng.IntN(3<<20))
		if i%4 == 0 {
			n = uint64(1 + rng.IntN(8<<10))
		}
		off := rng.Uint64N(size - n + 1)
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		copy(model[off:], p)
		if i%5 == 0 {
			// Bios in between: both paths write the same memory.
			if err := request(t, &s, st.Root, bioset.OpWrite, 0, off, n, p, nil); err != nil {
				t.Fatal(err)
			}
			continue
		}
		head := p[:rng.Uint64N(n+1)]
		rest := p[len(head):]
		err := d.WriteDirect(off, n, head, func(dst []byte) error {
			if len(dst) == 0 || len(dst) > len(rest) {
				t.Fatalf("write %d+%d: fill given %d bytes with %d left", off, n, len(dst), len(rest))
			}
			copy(dst, rest)
			rest = rest[len(dst):]
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(rest) != 0 {
			t.Fatalf("write %d+%d with a head of %d: fill left %d bytes unwritten", off, n, len(head), len(rest))
		}
	}
	got := make([]byte, size)
	if err := request(t, &s, st.Root, bioset.OpRead, 0, 0, size, got, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("what direct writes left differs from what WRITE bios would have")
	}

	// Counting: a 3 MiB direct write is one WRITE at the split, three at
	// the stripe (its 1 MiB pieces, as bios would be split), and one per
	// stripe chunk at the legs.
	before := make([]uint64, len(st.Nodes))
	for i, n := range st.Nodes {
		before[i] = n.Stats.Requests(bioset.OpWrite)
	}
	if err := d.WriteDirect(0, 3<<20, make([]byte, 3<<20), nil); err != nil {
		t.Fatal(err)
	}
	for i, want := range []uint64{1, 3} {
		n := st.Nodes[i]
		if got := n.Stats.Requests(bioset.OpWrite) - before[i]; got != want {
			t.Errorf("%s counted %d writes for a 3 MiB direct write, want %d", n.Path, got, want)
		}
	}
	var legs uint64
	for i, n := range st.Nodes {
		if n.Kind == KindLinear {
			legs += n.Stats.Requests(bioset.OpWrite) - before[i]
		}
	}
	if want := uint64(3 << 20 / chunk); legs != want {
		t.Errorf("the stripe's legs counted %d writes for 3 MiB over %d-byte chunks, want %d", legs, chunk, want)
	}
}

// TestDirectOnlyWhereEveryNodeHasIt: a stack offers direct writes only when
// every node on every path takes them; a mirror, a delay, a fault layer or
// a file anywhere below means WRITE bios, which those nodes must see.
func TestDirectOnlyWhereEveryNodeHasIt(t *testing.T) {
	mem := func() Spec { return memorySpec(1<<20, 0) }
	for _, tc := range []struct {
		name   string
		spec   Spec
		direct bool
	}{
		{"memory", mem(), true},
		{"null", Spec{Config: &NullConfig{Size: memorySpec(1<<20, 0).Config.(*MemoryConfig).Size}}, true},
		{"split-stripe-memory", splitSpec(1<<20, 0, PoolSpec{}, stripeSpec(4096, PoolSpec{}, mem(), mem())), true},
		{"stripe-over-a-delay", stripeSpec(4096, PoolSpec{}, mem(), delaySpec(DelayLatencies{Write: time.Millisecond}, mem())), false},
		{"error", errorSpec(ErrorOptions{Rate: 0}, mem()), false},
		{"mirror", mirrorSpec("", 0, PoolSpec{}, mem(), mem()), false},
		{"linear-over-a-file", linearSpec(PoolSpec{}, mem(), fileSpec(t.TempDir()+"/img", 1<<20)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := Build("d", tc.spec, BuildOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if got := bioset.DirectOf(st.Root) != nil; got != tc.direct {
				t.Errorf("direct access %v, want %v", got, tc.direct)
			}
		})
	}
}
