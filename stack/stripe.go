package stack

import (
	"fmt"
	"math/bits"
	"strconv"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/settings"
)

// Stripe is RAID0 over equal legs, like dm-stripe: device chunk k lives on
// leg k mod N at leg chunk k div N.
//
// A READ or WRITE that spans chunks is served by one child per chunk, all
// allocated and submitted within one Submit: this is the fan-out that can
// exceed the layer's pool, and the reason the pool has a rescuer. TRIM,
// WRITE_ZEROES and CACHE need no buffer, and the part of a contiguous range
// that lands on one leg is contiguous on that leg, so they get at most one
// child per leg, clipped to it. FLUSH goes to every leg.
//
// BLOCK_STATUS gets one child per leg too, answering in the leg's own
// offsets, and the stripe interleaves the legs' answers back into device
// order when the last child ends (gatherStatus). One child per chunk would
// cost a result slot per chunk, however alike the chunks: an empty
// gigabyte over 64 KiB chunks is 16384 chunks, and a reply has 256 slots.
type Stripe struct {
	layer
	legs    []Device
	chunk   uint64
	legSize uint64 // usable bytes per leg: a whole number of chunks
	// gather is gatherStatus bound once, so that setting it on a bio does
	// not allocate.
	gather func(*bioset.Bio)
}

// NewStripe returns a stripe over legs of equal size with the given chunk.
func NewStripe(legs []Device, chunk uint64, pool bioset.Options) (*Stripe, error) {
	if len(legs) < 1 {
		return nil, fmt.Errorf("stripe: no legs")
	}
	if chunk == 0 {
		return nil, fmt.Errorf("stripe: chunk must be positive")
	}
	size := legs[0].Size()
	for i, l := range legs {
		if l.Size() != size {
			return nil, fmt.Errorf("stripe: leg %d is %d bytes, leg 0 is %d: legs must be of equal size", i, l.Size(), size)
		}
	}
	legSize, total, overflow := stripeSize(size, chunk, len(legs))
	switch {
	case legSize == 0:
		return nil, fmt.Errorf("stripe: legs of %d bytes hold no %d-byte chunk", size, chunk)
	case overflow:
		return nil, fmt.Errorf("stripe: larger than 16EiB")
	}
	st := &Stripe{
		layer:   layer{pool: bioset.New(pool), size: total, caps: legCaps(legs)},
		legs:    legs,
		chunk:   chunk,
		legSize: legSize,
	}
	st.gather = st.gatherStatus
	return st, nil
}

// locate maps a device offset to its leg and the offset on that leg.
func (st *Stripe) locate(off uint64) (leg int, legOff uint64) {
	k := off / st.chunk
	n := uint64(len(st.legs))
	return int(k % n), (k/n)*st.chunk + off%st.chunk
}

// below returns how many bytes of leg i lie below device offset x. The part
// of a device range [a, b) on leg i is then [below(a, i), below(b, i)) in
// leg offsets: contiguous, because consecutive chunks of one leg are
// consecutive on the leg.
func (st *Stripe) below(x uint64, i int) uint64 {
	row := st.chunk * uint64(len(st.legs))
	in := x % row
	start := uint64(i) * st.chunk
	var part uint64
	if in > start {
		part = min(in-start, st.chunk)
	}
	return x/row*st.chunk + part
}

// deviceOffset is the device offset of byte legOff of leg i: the inverse
// of below, in that below(deviceOffset(x, i), i) == x.
func (st *Stripe) deviceOffset(legOff uint64, i int) uint64 {
	return (legOff/st.chunk*uint64(len(st.legs))+uint64(i))*st.chunk + legOff%st.chunk
}

// legsTouched returns how many legs hold part of [off, end), and the last
// of them.
func (st *Stripe) legsTouched(off, end uint64) (touched, last int) {
	for i := range st.legs {
		if st.below(end, i) > st.below(off, i) {
			touched++
			last = i
		}
	}
	return touched, last
}

// Submit implements bioset.Queue.
func (st *Stripe) Submit(s *bioset.Submitter, b *bioset.Bio) {
	switch b.Op {
	case bioset.OpFlush:
		st.fanOutFlush(s, b, st.legs)
		return
	case bioset.OpTrim, bioset.OpWriteZeroes, bioset.OpCache:
		st.submitPerLeg(s, b)
		return
	case bioset.OpBlockStatus:
		st.submitStatus(s, b)
		return
	}
	first := b.Offset / st.chunk
	last := first
	if b.Length > 0 {
		last = (b.Offset + b.Length - 1) / st.chunk
	}
	if first == last {
		leg, legOff := st.locate(b.Offset)
		remap(s, b, st.legs[leg], legOff)
		return
	}
	pos, end := b.Offset, b.Offset+b.Length
	for pos < end {
		n := min(st.chunk-pos%st.chunk, end-pos)
		leg, legOff := st.locate(pos)
		// docs/DESIGN.md rule 4: c is submitted before the next child
		// is allocated, so that the rescuer can take it if that
		// allocation finds the pool empty.
		c := st.child(s, b)
		piece(c, b, st.legs[leg], pos, n, legOff)
		s.Submit(c)
		pos += n
	}
	b.End(nil)
}

// submitPerLeg serves a no-payload range op with one clipped child per leg
// it touches. A leg's part of a device range is contiguous on the leg (see
// below), so the child is one range of at most the bio's length: a 4 GiB
// TRIM is four 1 GiB TRIMs over four legs, never a piece per chunk.
func (st *Stripe) submitPerLeg(s *bioset.Submitter, b *bioset.Bio) {
	end := b.Offset + b.Length
	if touched, only := st.legsTouched(b.Offset, end); touched <= 1 {
		lo := st.below(b.Offset, only)
		b.Length = st.below(end, only) - lo
		remap(s, b, st.legs[only], lo)
		return
	}
	for i, leg := range st.legs {
		lo, hi := st.below(b.Offset, i), st.below(end, i)
		if hi <= lo {
			continue
		}
		c := st.child(s, b) // docs/DESIGN.md rule 4, as in Submit
		c.Dev, c.Offset, c.Length = leg, lo, hi-lo
		s.Submit(c)
	}
	b.End(nil)
}

// Direct offers direct writes when every leg does (see bioset.Direct),
// cutting them by chunk as Submit cuts WRITE bios.
func (st *Stripe) Direct() bioset.Direct { return newLayerDirect(st.legs, st.directPiece) }

func (st *Stripe) directPiece(pos, end uint64) (int, uint64, uint64) {
	leg, legOff := st.locate(pos)
	return leg, legOff, min(st.chunk-pos%st.chunk, end-pos)
}

// KindStripe is the stripe layer's kind.
const KindStripe = "stripe"

func init() {
	Register(Kind{New: func() Settings { return new(StripeConfig) }, Rank: 20, Legs: ManyLegs})
}

// StripeConfig is the settings of a stripe node:
//
//	stripe: {chunk: 64KiB, pool: {…}, legs: [NODE, NODE, …]}
type StripeConfig struct {
	// Chunk is how many bytes go to each leg in turn: required, a
	// positive multiple of 512.
	Chunk settings.Size `yaml:"chunk" need:"true"`
	Pool  PoolSpec      `yaml:"pool"`
	// Legs are at least 2 stack nodes of the same size, each at least
	// one chunk. The stripe's size is their number times the leg size
	// rounded down to a whole number of chunks.
	Legs settings.List[Spec] `yaml:"legs" need:"true" item:"leg"`
}

func (c *StripeConfig) Kind() string     { return KindStripe }
func (c *StripeConfig) LegSpecs() []Spec { return c.Legs.Items }

func (c *StripeConfig) Check(p *settings.Problems) {
	checkBlocks(p, "stripe chunk", c.Chunk)
	c.Pool.Check(p)
	checkLegCount(p, KindStripe, c.Legs, 2)
}

func (c *StripeConfig) NodeSize(legs []Sized) (uint64, error) {
	chunk := c.Chunk.Bytes
	if chunk == 0 || len(legs) < 2 {
		return 0, errSizeUnknown // reported by Check
	}
	if err := checkEqualLegs(KindStripe, legs); err != nil {
		return 0, err
	}
	if legs[0].Bytes < chunk {
		return 0, sizeError(legs[0].Line, "stripe legs are %s, smaller than the %s chunk; each leg must hold at least one chunk",
			settings.FormatSize(legs[0].Bytes), c.Chunk)
	}
	_, total, overflow := stripeSize(legs[0].Bytes, chunk, len(legs))
	if overflow {
		return 0, sizeError(legs[0].Line, "stripe is larger than 16EiB")
	}
	return total, nil
}

// stripeSize is the rule for a stripe's size: the leg size rounded down
// to a whole number of chunks, times the legs.
func stripeSize(leg, chunk uint64, legs int) (perLeg, total uint64, overflow bool) {
	perLeg = leg / chunk * chunk
	hi, lo := bits.Mul64(perLeg, uint64(legs))
	return perLeg, lo, hi != 0
}

func (c *StripeConfig) Build(legs []Device, b BuildContext) (Device, error) {
	return NewStripe(legs, c.Chunk.Bytes, c.Pool.Options(b.Path))
}

func (c *StripeConfig) Describe() []string {
	return append([]string{"chunk=" + c.Chunk.String(), "legs=" + strconv.Itoa(len(c.Legs.Items))}, c.Pool.describe()...)
}

// statusLayout divides a BLOCK_STATUS window of slots between the stripe's
// answer, at the front, and its legs' answers, legSlots for each leg at
// the back, in leg order. The split is even: with no two legs alike, the
// answer takes about one slot per leg extent it uses, so neither half runs
// out long before the other. legSlots 0 means the window is too small to
// gather in.
//
// Every leg has a part, touched by the bio or not, so that a leg's part is
// found from the window's size alone, at Submit and again at gather.
func (st *Stripe) statusLayout(slots int) (answer, legSlots int) {
	legSlots = slots / 2 / len(st.legs)
	if legSlots == 0 && slots > len(st.legs) {
		legSlots = 1
	}
	return slots - legSlots*len(st.legs), legSlots
}

// legWindow is leg i's part of a window laid out by statusLayout.
func legWindow(w []bioset.Extent, answer, legSlots, i int) []bioset.Extent {
	lo := answer + i*legSlots
	return w[lo : lo+legSlots : lo+legSlots]
}

// submitStatus serves a BLOCK_STATUS bio with one child per leg it
// touches, each asking about the bio's whole part of its leg and answering
// in leg offsets into its part of b's window; gatherStatus then writes b's
// answer.
func (st *Stripe) submitStatus(s *bioset.Submitter, b *bioset.Bio) {
	end := b.Offset + b.Length
	if touched, only := st.legsTouched(b.Offset, end); touched <= 1 {
		// Within one chunk, or a stripe of one leg: the leg's range maps
		// onto the bio's by a shift, so it answers in b's coordinates.
		remap(s, b, st.legs[only], st.below(b.Offset, only))
		return
	}
	answer, legSlots := st.statusLayout(len(b.Extents))
	if legSlots == 0 {
		// No room to gather (a client that asked for one extent): answer
		// about the first chunk alone, which the protocol allows.
		leg, legOff := st.locate(b.Offset)
		b.Length = min(st.chunk-b.Offset%st.chunk, b.Length)
		remap(s, b, st.legs[leg], legOff)
		return
	}
	clear(b.Extents) // children's parts start unused (see bioset.Bio.Extents)
	// Before the first child: with the rescuer, children may end before
	// this loop does.
	b.SetGather(st.gather)
	for i, leg := range st.legs {
		lo, hi := st.below(b.Offset, i), st.below(end, i)
		if hi <= lo {
			continue
		}
		// docs/DESIGN.md rule 4: allocate, fill, submit, and only then
		// allocate the next.
		c := st.child(s, b)
		c.Dev, c.Offset, c.Length = leg, lo, hi-lo
		c.TopOffset = lo // answer in leg offsets (see bioset.Bio.TopOffset)
		c.Extents = legWindow(b.Extents, answer, legSlots, i)
		s.Submit(c)
	}
	b.End(nil)
}

// legExtent returns the extent of leg answer w that holds legOff, or false
// if the answer does not reach it. w is compacted (bioset.CompactExtents):
// a run from the leg's start, then unused slots.
func legExtent(w []bioset.Extent, legOff uint64) (bioset.Extent, bool) {
	for _, e := range w {
		if e.Length == 0 {
			break
		}
		if legOff < e.Offset+e.Length {
			return e, legOff >= e.Offset
		}
	}
	return bioset.Extent{}, false
}

// gatherStatus writes the answer of a BLOCK_STATUS bio that submitStatus
// fanned out, from its legs' answers, when the last child has ended. It
// runs inside End: it allocates nothing and waits for nothing, and its
// work is bounded by the window, not the range (below).
//
// It walks the range in runs: from pos, the run takes the flags of the
// extent holding pos (on pos's leg) and goes on while every leg agrees.
// For each leg it stops at the first of that leg's bytes the run may not
// take: the end of the leg's current extent if its flags match, else the
// leg's next byte. Every run ends where either some leg's extent ends or
// the flags change, which costs an answer slot, so there are at most about
// as many runs as slots in the window, whether the range is a chunk or
// gigabytes; over empty legs the whole range is one run. The answer ends
// early where a leg's answer does, or when its own slots run out.
func (st *Stripe) gatherStatus(b *bioset.Bio) {
	w := b.Extents
	answer, legSlots := st.statusLayout(len(w))
	end := b.Offset + b.Length
	for i := range st.legs {
		lo, hi := st.below(b.Offset, i), st.below(end, i)
		bioset.CompactExtents(legWindow(w, answer, legSlots, i), lo, hi-lo)
	}
	out := bioset.NewExtentWriter(w, answer)
	for pos := b.Offset; pos < end; {
		leg, legOff := st.locate(pos)
		e, ok := legExtent(legWindow(w, answer, legSlots, leg), legOff)
		if !ok {
			break // the leg's answer ends here, and so does ours
		}
		run := min(end, st.deviceOffset(e.Offset+e.Length, leg))
		for i := range st.legs {
			if i == leg {
				continue
			}
			p := st.below(pos, i) // leg i's next byte is at deviceOffset(p, i)
			stop := st.deviceOffset(p, i)
			if f, ok := legExtent(legWindow(w, answer, legSlots, i), p); ok && f.Flags == e.Flags {
				stop = st.deviceOffset(f.Offset+f.Length, i)
			}
			run = min(run, stop)
		}
		if !out.Add(b.TopOffset+(pos-b.Offset), run-pos, e.Flags) {
			break
		}
		pos = run
	}
	// The legs' parts, behind the answer, go too: a reader above must see
	// only the answer.
	out.Finish()
}
