package stack

import (
	"bytes"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/targets"
)

// request runs one bio through dev on submitter s and waits for it, at most
// completeBound.
func request(t testing.TB, s *bioset.Submitter, dev Device, op bioset.Op, flags bioset.Flags, off, n uint64, buf []byte, extents []bioset.Extent) error {
	t.Helper()
	var b bioset.Bio
	b.Init(op, off, n, buf, nil)
	b.Flags = flags
	b.Dev = dev
	b.Extents = extents
	b.TopOffset = off
	return await(t, s, &b)
}

// lendSlots is the size of readLent's loan table.
const lendSlots = 32

// readLent reads like request, but offers the leaves a loan table as the
// protocol layer does (bioset.Lend), and then puts what they lent into buf.
// It returns how many pieces were lent.
func readLent(t testing.TB, s *bioset.Submitter, dev Device, off, n uint64, buf []byte) (int, error) {
	t.Helper()
	var b bioset.Bio
	b.Init(bioset.OpRead, off, n, buf, nil)
	b.Dev = dev
	b.TopOffset = off
	loans := bioset.NewLoans(lendSlots)
	b.SetLoans(loans)
	err := await(t, s, &b)
	lent := loans.Sorted()
	for _, l := range lent {
		copy(buf[l.Pos:], l.Data)
	}
	return len(lent), err
}

// await submits b on s and waits for it to end, at most completeBound.
func await(t testing.TB, s *bioset.Submitter, b *bioset.Bio) error {
	t.Helper()
	return stackdtest.Await(t, s, b, completeBound)
}

const (
	// stallBound is how long the watchdog waits before calling a request
	// stalled; without a rescuer the stall is certain, not a race.
	stallBound = 300 * time.Millisecond
	// completeBound is how long a request that must complete may take on
	// a loaded, shared machine before the watchdog calls it a deadlock.
	completeBound = 30 * time.Second
)

func memoryLegs(n int, size uint64) []Device {
	legs := make([]Device, n)
	for i := range legs {
		legs[i] = targets.NewMemory(size, 0)
	}
	return legs
}

// submitWatched submits a bio of op over buf at offset 0 to dev on a
// goroutine of its own, and returns a channel that yields the bio's error
// once it ends, or is closed if it has not ended within completeBound: a
// request that may stall is watched without blocking the test.
func submitWatched(dev Device, op bioset.Op, buf []byte) <-chan error {
	errc := make(chan error, 1)
	done := make(chan struct{})
	b := new(bioset.Bio)
	b.Init(op, 0, uint64(len(buf)), buf, func(*bioset.Bio) { close(done) })
	b.Dev = dev
	go func() {
		var s bioset.Submitter
		s.Submit(b)
	}()
	go func() {
		select {
		case <-done:
			errc <- b.Err()
		case <-time.After(completeBound):
			close(errc)
		}
	}()
	return errc
}

// mustBuild builds spec for export, failing the test if it cannot.
func mustBuild(t testing.TB, export string, spec Spec, o BuildOptions) *Stack {
	t.Helper()
	st, err := Build(export, spec, o)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// checkStallsWithoutRescuer is the first half of a rescuer proof pair:
// the write errc waits for stalls on a pool without a rescuer, inUse bios
// held and one waiting, none punted, and completes once the rescuer is
// turned on.
func checkStallsWithoutRescuer(t *testing.T, pool *bioset.BioSet, errc <-chan error, inUse int) {
	t.Helper()
	select {
	case <-errc:
		t.Fatal("write completed without a rescuer; it must stall")
	case <-time.After(stallBound):
	}
	if ps := pool.Stats(); ps.InUse != inUse || ps.Waits == 0 || ps.Punted != 0 {
		t.Fatalf("stalled pool %+v: want %d in use, a waiter, no punts", ps, inUse)
	}
	// Release the stall so nothing leaks: the rescuer is the fix.
	pool.EnableRescuer()
	if err, ok := <-errc; !ok || err != nil {
		t.Fatalf("after enabling the rescuer: completed %v, err %v", ok, err)
	}
}

// TestStripeDeadlockProof is the project's central claim, shown on the real
// stripe layer. A 16 KiB write over a 4 KiB-chunk stripe of four legs needs
// four children in one Submit; the pool holds two.
func TestStripeDeadlockProof(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const chunk = 4096
	write := func(st *Stripe) <-chan error {
		buf := make([]byte, 4*chunk)
		for i := range buf {
			buf[i] = byte(i / chunk)
		}
		return submitWatched(st, bioset.OpWrite, buf)
	}

	t.Run("rescuer off: stalls", func(t *testing.T) {
		legs := memoryLegs(4, 1<<20)
		st, err := NewStripe(legs, chunk, bioset.Options{Name: "t/stripe", Capacity: 2, NoRescuer: true})
		if err != nil {
			t.Fatal(err)
		}
		checkStallsWithoutRescuer(t, st.Pool(), write(st), 2)
		st.Close()
	})

	t.Run("rescuer on: completes", func(t *testing.T) {
		legs := memoryLegs(4, 1<<20)
		st, err := NewStripe(legs, chunk, bioset.Options{Name: "t/stripe", Capacity: 2})
		if err != nil {
			t.Fatal(err)
		}
		if err, ok := <-write(st); !ok || err != nil {
			t.Fatalf("completed %v, err %v: %+v", ok, err, st.Pool().Stats())
		}
		st.Close()
		ps := st.Pool().Stats()
		if ps.Punted == 0 || ps.Rescued != ps.Punted {
			t.Fatalf("pool %+v: want punts > 0, all of them rescued", ps)
		}
		// The data went where the stripe mapping says: chunk i on leg i.
		var s bioset.Submitter
		for i, leg := range legs {
			got := make([]byte, chunk)
			if err := request(t, &s, leg, bioset.OpRead, 0, 0, chunk, got, nil); err != nil {
				t.Fatal(err)
			}
			if got[0] != byte(i) || got[chunk-1] != byte(i) {
				t.Fatalf("leg %d holds %d, want %d", i, got[0], i)
			}
		}
	})
}

// TestStripeMapping checks the per-leg clipping of no-payload ops against
// the per-chunk mapping of reads: after writing a pattern everywhere and
// trimming a range, exactly the trimmed bytes read as zero.
func TestStripeMapping(t *testing.T) {
	const chunk = 512
	legs := memoryLegs(3, 8*chunk)
	st, err := NewStripe(legs, chunk, bioset.Options{Name: "t", Capacity: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var s bioset.Submitter
	size := st.Size()
	pattern := make([]byte, size)
	for i := range pattern {
		pattern[i] = byte(i%251) + 1
	}
	for _, r := range [][2]uint64{{0, size}, {1, 1}, {100, 3 * chunk}, {chunk - 1, 2}, {5*chunk + 7, 10 * chunk}, {0, chunk}} {
		if err := request(t, &s, st, bioset.OpWrite, 0, 0, size, pattern, nil); err != nil {
			t.Fatal(err)
		}
		if err := request(t, &s, st, bioset.OpTrim, 0, r[0], r[1], nil, nil); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, size)
		if err := request(t, &s, st, bioset.OpRead, 0, 0, size, got, nil); err != nil {
			t.Fatal(err)
		}
		for i := range got {
			inside := uint64(i) >= r[0] && uint64(i) < r[0]+r[1]
			if inside && got[i] != 0 || !inside && got[i] != pattern[i] {
				t.Fatalf("trim %d+%d: byte %d is %d", r[0], r[1], i, got[i])
			}
		}
	}
}

// TestCapsIntersect: a layer offers only what all its legs can do.
func TestCapsIntersect(t *testing.T) {
	mem := targets.NewMemory(1<<20, 0)
	lim := capsLimited{Device: targets.NewMemory(1<<20, 0), caps: bioset.CapFlush | bioset.CapTrim}
	ln, err := NewLinear([]Device{mem, lim}, bioset.Options{Name: "t", Capacity: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sp, err := NewSplit(ln, 4096, 0, bioset.Options{Name: "t2", Capacity: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	if got := sp.Caps(); got != bioset.CapFlush|bioset.CapTrim {
		t.Fatalf("caps %b, want flush|trim", got)
	}
}

type capsLimited struct {
	Device
	caps bioset.Caps
}

func (c capsLimited) Caps() bioset.Caps { return c.caps }

func TestBuildPathsAndErrors(t *testing.T) {
	spec := splitSpec(1<<20, 0, PoolSpec{}, stripeSpec(65536, PoolSpec{}, memorySpec(1<<20, 0), memorySpec(1<<20, 0)))
	st := mustBuild(t, "default", spec, BuildOptions{})
	defer st.Close()
	want := []string{"default/split", "default/split/stripe", "default/split/stripe/leg0", "default/split/stripe/leg1"}
	if len(st.Nodes) != len(want) {
		t.Fatalf("nodes %v", st.Nodes)
	}
	for i, n := range st.Nodes {
		if n.Path != want[i] {
			t.Fatalf("node %d is %q, want %q", i, n.Path, want[i])
		}
		if (n.Pool != nil) != (i < 2) {
			t.Fatalf("node %s pool %v", n.Path, n.Pool)
		}
	}
	if st.Root.Size() != 2<<20 {
		t.Fatalf("size %d", st.Root.Size())
	}

	bad := stripeSpec(4096, PoolSpec{}, memorySpec(1<<20, 0), memorySpec(2<<20, 0))
	if _, err := Build("x", bad, BuildOptions{}); err == nil {
		t.Fatal("stripe over legs of unequal size built")
	}
}

// TestNodeStats: every node counts the bios that reach it once — a split's
// requeued remainder included only once — and a layer's errors are the
// sum of its targets'.
func TestNodeStats(t *testing.T) {
	spec := splitSpec(1<<20, 0, PoolSpec{}, stripeSpec(65536, PoolSpec{}, memorySpec(4<<20, 0), memorySpec(4<<20, 0)))
	st := mustBuild(t, "s", spec, BuildOptions{})
	defer st.Close()
	var s bioset.Submitter
	const n = 3 << 20
	if err := request(t, &s, st.Root, bioset.OpWrite, 0, 0, n, make([]byte, n), nil); err != nil {
		t.Fatal(err)
	}
	split, stripe, leg0, leg1 := st.Nodes[0], st.Nodes[1], st.Nodes[2], st.Nodes[3]
	check := func(node Node, reqs, bytes uint64) {
		t.Helper()
		if r, b := node.Stats.Requests(bioset.OpWrite), node.Stats.Bytes(bioset.OpWrite); r != reqs || b != bytes {
			t.Errorf("%s: %d writes of %d bytes, want %d of %d", node.Path, r, b, reqs, bytes)
		}
	}
	check(split, 1, n)
	check(stripe, 3, n)
	check(leg0, 24, n/2)
	check(leg1, 24, n/2)

	// A bio past the end, as a buggy client-side check would let through,
	// fails at a target and counts there and in every layer above it.
	if err := request(t, &s, st.Root, bioset.OpRead, 0, st.Root.Size()-512, 4096, make([]byte, 4096), nil); err == nil {
		t.Fatal("read past the end succeeded")
	}
	if split.Errors() != 1 || stripe.Errors() != 1 || leg0.Errors()+leg1.Errors() != 1 {
		t.Fatalf("errors: split %d stripe %d legs %d+%d, want 1, 1, 1 in all", split.Errors(), stripe.Errors(), leg0.Errors(), leg1.Errors())
	}
}

// TestLendingThroughLayers: a read through split -> stripe -> linear ->
// memory, every piece of it remapped or split by each layer on the way,
// gets the memory leaves' bytes lent: one loan per 64 KiB stripe chunk it
// touches, each at its place in the top buffer.
func TestLendingThroughLayers(t *testing.T) {
	const chunk = 64 << 10
	legs := make([]Device, 4)
	for i := range legs {
		// Each stripe leg is two memory halves joined by a linear layer.
		ln, err := NewLinear(memoryLegs(2, 1<<20), bioset.Options{Name: "t/linear", Capacity: 8})
		if err != nil {
			t.Fatal(err)
		}
		legs[i] = ln
	}
	st, err := NewStripe(legs, chunk, bioset.Options{Name: "t/stripe", Capacity: 64})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := NewSplit(st, 1<<20, 0, bioset.Options{Name: "t/split", Capacity: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		sp.Close()
		st.Close()
		for _, l := range legs {
			l.Close()
		}
	}()
	var s bioset.Submitter
	size := sp.Size()
	pattern := make([]byte, size)
	for i := range pattern {
		pattern[i] = byte(i*31 + i>>16)
	}
	if err := request(t, &s, sp, bioset.OpWrite, 0, 0, size, pattern, nil); err != nil {
		t.Fatal(err)
	}
	// Aligned; unaligned across 17 stripe chunks; across the split's 1 MiB
	// pieces and the linear joins.
	for _, r := range [][2]uint64{{0, chunk}, {100, 1 << 20}, {3<<20 - 5000, 2 << 20}} {
		off, n := r[0], r[1]
		got := make([]byte, n)
		lent, err := readLent(t, &s, sp, off, n, got)
		if err != nil {
			t.Fatal(err)
		}
		chunks := int((off+n-1)/chunk - off/chunk + 1)
		if want := min(chunks, lendSlots); lent != want {
			t.Errorf("read %d+%d: %d pieces lent, want %d (one per stripe chunk, up to a full table)", off, n, lent, want)
		}
		if !bytes.Equal(got, pattern[off:off+n]) {
			t.Fatalf("read %d+%d: lent and copied pieces differ from what was written", off, n)
		}
	}
}
