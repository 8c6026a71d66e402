package stack

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stackd/stackd/bioset"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

// replySlots is how many result slots the protocol layer gives a
// BLOCK_STATUS request (nbd's maxExtents).
const replySlots = 256

const holeZero = bioset.ExtentHole | bioset.ExtentZero

// memLeg is a RAM leaf of the default allocation chunk (64 KiB).
func memLeg(size uint64) Spec { return memorySpec(size, 0) }

// defaultShape is configs/default.yaml's stack (a 1 MiB split over a
// 4-way 64 KiB stripe) over RAM legs of legSize bytes, with boundary on
// the split.
func defaultShape(legSize, boundary uint64) Spec {
	var legs []Spec
	for range 4 {
		legs = append(legs, memLeg(legSize))
	}
	return splitSpec(mib, boundary, PoolSpec{}, stripeSpec(64*kib, PoolSpec{}, legs...))
}

// blockStatus asks dev about [off, off+n) with slots result slots and
// returns the answer as the protocol layer reads it: the used slots, in
// order, up to the first gap.
func blockStatus(t *testing.T, s *bioset.Submitter, dev Device, off, n uint64, slots int) []bioset.Extent {
	t.Helper()
	w := make([]bioset.Extent, slots)
	if err := request(t, s, dev, bioset.OpBlockStatus, 0, off, n, nil, w); err != nil {
		t.Fatalf("block status %d+%d: %v", off, n, err)
	}
	var out []bioset.Extent
	pos := off
	for _, e := range w {
		if e.Length == 0 {
			continue
		}
		if e.Offset != pos {
			break
		}
		out = append(out, e)
		pos += e.Length
	}
	return out
}

// allocation models which 64 KiB chunks of a device over RAM legs of 64 KiB
// chunks are allocated, when every layer's geometry is a multiple of that
// chunk: a device chunk is then a whole leaf chunk.
type allocation []bool

const allocChunk = 64 * kib

func (a allocation) write(off, n uint64) {
	for k := off / allocChunk; k*allocChunk < off+n; k++ {
		a[k] = true
	}
}

func (a allocation) trim(off, n uint64) { // whole chunks only
	for k := off / allocChunk; k < (off+n)/allocChunk; k++ {
		a[k] = false
	}
}

// extents is the exact answer for [off, off+n): merged runs of data and of
// hole,zero.
func (a allocation) extents(off, n uint64) []bioset.Extent {
	var out []bioset.Extent
	for pos, end := off, off+n; pos < end; {
		k := pos / allocChunk
		next := min(end, (k+1)*allocChunk)
		flags := holeZero
		if a[k] {
			flags = 0
		}
		if l := len(out); l > 0 && out[l-1].Flags == flags {
			out[l-1].Length += next - pos
		} else {
			out = append(out, bioset.Extent{Offset: pos, Length: next - pos, Flags: flags})
		}
		pos = next
	}
	return out
}

// mapDevice maps [off, off+n) as nbdinfo --map does: it asks about the
// rest of the range until the answers cover it, each answer with the slots
// of one reply. It returns the answers joined (merged across them, as a
// client's map is) and how many requests it took. An answer must start
// where it was asked to.
func mapDevice(t *testing.T, s *bioset.Submitter, dev Device, off, n uint64) ([]bioset.Extent, int) {
	t.Helper()
	var out []bioset.Extent
	requests := 0
	for pos, end := off, off+n; pos < end; requests++ {
		if requests == 1000 {
			t.Fatalf("mapping %d+%d: still at %d after %d requests", off, n, pos, requests)
		}
		got := blockStatus(t, s, dev, pos, end-pos, replySlots)
		if len(got) == 0 || got[0].Offset != pos {
			t.Fatalf("block status %d+%d: answer %v does not start at %d", pos, end-pos, got, pos)
		}
		for _, e := range got {
			if l := len(out); l > 0 && out[l-1].Flags == e.Flags {
				out[l-1].Length += e.Length
			} else {
				out = append(out, e)
			}
			pos = e.Offset + e.Length
		}
	}
	return out, requests
}

// TestBlockStatusWholeDevice maps each stack with requests of one reply's
// slots: empty, one request answers for the whole device with one
// extent; after writes and a TRIM the map is exactly the allocated chunks
// and the holes between them, in one request where the windows below
// allow. Before a split passed BLOCK_STATUS whole and layers merged what
// their legs answered, a request of the default shape answered for 64 KiB.
func TestBlockStatusWholeDevice(t *testing.T) {
	stripeOf := func(chunk uint64, legs ...Spec) Spec { return stripeSpec(chunk, PoolSpec{}, legs...) }
	linearOf := func(legs ...Spec) Spec { return linearSpec(PoolSpec{}, legs...) }
	splitOver := func(leg Spec) Spec { return splitSpec(mib, 0, PoolSpec{}, leg) }
	m := memLeg
	for _, tc := range []struct {
		name string
		spec Spec
		// written is how many requests mapping the written device may
		// take: nested stripes give their inner legs few slots each.
		written int
	}{
		{"default", defaultShape(256*mib, 0), 1},
		{"default-boundary", defaultShape(256*mib, 4*mib), 1},
		{"stripe-of-linears", splitOver(stripeOf(64*kib,
			linearOf(m(128*mib), m(128*mib)), linearOf(m(128*mib), m(128*mib)),
			linearOf(m(128*mib), m(128*mib)), linearOf(m(128*mib), m(128*mib)))), 1},
		{"linear-of-stripes", splitOver(linearOf(
			stripeOf(64*kib, m(128*mib), m(128*mib), m(128*mib), m(128*mib)),
			stripeOf(256*kib, m(256*mib), m(256*mib)))), 1},
		{"stripe-of-stripes", splitOver(stripeOf(64*kib,
			stripeOf(64*kib, m(128*mib), m(128*mib)), stripeOf(64*kib, m(128*mib), m(128*mib)),
			stripeOf(64*kib, m(128*mib), m(128*mib)), stripeOf(64*kib, m(128*mib), m(128*mib)))), 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := mustBuild(t, "bs", tc.spec, BuildOptions{})
			defer st.Close()
			dev := st.Root
			if dev.Size() != gib {
				t.Fatalf("size %d, want 1 GiB", dev.Size())
			}
			var s bioset.Submitter
			a := make(allocation, gib/allocChunk)
			check := func(when string, off, n uint64, maxRequests int) {
				t.Helper()
				got, requests := mapDevice(t, &s, dev, off, n)
				if want := a.extents(off, n); !slices.Equal(got, want) {
					t.Fatalf("%s: map of %d+%d:\n got %v\nwant %v", when, off, n, got, want)
				}
				if requests > maxRequests {
					t.Errorf("%s: mapping %d+%d took %d requests, want at most %d", when, off, n, requests, maxRequests)
				}
			}
			check("empty", 0, gib, 1)
			check("empty, unaligned", 12345, gib-12345-678, 1)

			for _, w := range []struct{ off, n uint64 }{
				{mib, 64 * kib},               // one chunk
				{5*mib + 100, 300 * kib},      // unaligned, over several legs
				{100*mib - 4096, 8 * kib},     // across a chunk edge
				{512 * mib, 3 * mib},          // many rows
				{700*mib + 64*kib, 128 * kib}, // two chunks of a row
				{gib - 1, 1},                  // the last byte
			} {
				buf := make([]byte, w.n)
				for i := range buf {
					buf[i] = byte(i%251) + 1
				}
				if err := request(t, &s, dev, bioset.OpWrite, 0, w.off, w.n, buf, nil); err != nil {
					t.Fatal(err)
				}
				a.write(w.off, w.n)
			}
			if err := request(t, &s, dev, bioset.OpTrim, 0, 513*mib, mib, nil, nil); err != nil {
				t.Fatal(err)
			}
			a.trim(513*mib, mib)
			check("written", 0, gib, tc.written)
			check("written, unaligned", 5*mib+77, 600*mib, tc.written)
			check("written, inside one extent", 512*mib+5, 1000, 1)
		})
	}
}

// TestBlockStatusFewSlots: a window too small to hold every leg's answer
// (down to a client that asks for one extent) still gets a correct answer
// from the start, if a shorter one; from 16 slots on the default shape
// answers for the whole device here.
func TestBlockStatusFewSlots(t *testing.T) {
	st := mustBuild(t, "bs", defaultShape(256*mib, 0), BuildOptions{})
	defer st.Close()
	var s bioset.Submitter
	buf := make([]byte, 64*kib)
	buf[0] = 1
	if err := request(t, &s, st.Root, bioset.OpWrite, 0, 0, 64*kib, buf, nil); err != nil {
		t.Fatal(err)
	}
	want := []bioset.Extent{{Offset: 0, Length: 64 * kib}, {Offset: 64 * kib, Length: gib - 64*kib, Flags: holeZero}}
	for slots := 1; slots <= 16; slots++ {
		got := blockStatus(t, &s, st.Root, 0, gib, slots)
		ok := len(got) > 0 && len(got) <= len(want)
		for i := 0; ok && i < len(got); i++ {
			last := i == len(got)-1
			ok = got[i].Offset == want[i].Offset && got[i].Flags == want[i].Flags &&
				(got[i].Length == want[i].Length || last && got[i].Length < want[i].Length)
		}
		if !ok {
			t.Fatalf("%d slots: answer %v, want a prefix of %v", slots, got, want)
		}
		if slots == 16 && !slices.Equal(got, want) {
			t.Fatalf("%d slots: answer %v, want %v", slots, got, want)
		}
	}
}

// TestNoPayloadOpsWhole: TRIM, WRITE_ZEROES and CACHE of NBD's largest
// length (4 GiB - 64 KiB here) and a BLOCK_STATUS of the same reach each
// RAM leg of the default shape as one bio, not one per 1 MiB: max_bytes
// limits payloads. With a boundary, the split still cuts the first three
// there, and BLOCK_STATUS still goes whole.
func TestNoPayloadOpsWhole(t *testing.T) {
	const n = 4*gib - 64*kib
	for _, boundary := range []uint64{0, 256 * mib} {
		t.Run(fmt.Sprintf("boundary=%d", boundary), func(t *testing.T) {
			st := mustBuild(t, "bs", defaultShape(gib, boundary), BuildOptions{})
			defer st.Close()
			var s bioset.Submitter
			for _, op := range []bioset.Op{bioset.OpTrim, bioset.OpWriteZeroes, bioset.OpCache, bioset.OpBlockStatus} {
				var slots []bioset.Extent
				if op == bioset.OpBlockStatus {
					slots = make([]bioset.Extent, replySlots)
				}
				if err := request(t, &s, st.Root, op, 0, 0, n, nil, slots); err != nil {
					t.Fatalf("%v: %v", op, err)
				}
				// Per leg: one bio, or one per piece the boundary cuts
				// (each piece spans every leg).
				want := uint64(1)
				if boundary != 0 && op != bioset.OpBlockStatus {
					want = (n + boundary - 1) / boundary
				}
				var bytes uint64
				for _, nd := range st.Nodes {
					if nd.Kind != KindMemory {
						continue
					}
					if got := nd.Stats.Requests(op); got != want {
						t.Errorf("%v: %s got %d bios, want %d", op, nd.Path, got, want)
					}
					bytes += nd.Stats.Bytes(op)
				}
				if bytes != n {
					t.Errorf("%v: the legs got %d bytes in all, want %d", op, bytes, uint64(n))
				}
				if op == bioset.OpBlockStatus && (slots[0] != bioset.Extent{Offset: 0, Length: n, Flags: holeZero}) {
					t.Errorf("block status: %v, want one hole of %d bytes", slots[:2], uint64(n))
				}
			}
		})
	}
}

// TestBlockStatusAllocatesNothing: gathering the answers of a stripe's and
// its linears' legs happens inside End, which must not allocate (rule 6):
// a BLOCK_STATUS over split, stripe and linear allocates nothing in
// steady state, empty or with data.
func TestBlockStatusAllocatesNothing(t *testing.T) {
	dev := benchStack(t, 3, benchLeaves["memory"])
	var s bioset.Submitter
	r := newSyncRequest()
	r.extents = make([]bioset.Extent, replySlots)
	buf := make([]byte, 64*kib)
	buf[0] = 1
	for _, when := range []string{"empty", "written"} {
		if when == "written" {
			for _, off := range []uint64{0, 3 * mib, 17 * mib} {
				r.run(&s, dev, bioset.OpWrite, off, uint64(len(buf)), buf)
			}
		}
		r.run(&s, dev, bioset.OpBlockStatus, 0, dev.Size(), nil)
		if r.extents[0].Length == 0 {
			t.Fatalf("%s: no answer", when)
		}
		allocs := testing.AllocsPerRun(200, func() { r.run(&s, dev, bioset.OpBlockStatus, 0, dev.Size(), nil) })
		if allocs != 0 {
			t.Errorf("%s: block status of %d bytes through 3 layers: %v heap allocations per request, want 0", when, dev.Size(), allocs)
		}
	}
}
