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
type Stripe struct {
	layer
	legs    []Device
	chunk   uint64
	legSize uint64 // usable bytes per leg: a whole number of chunks
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
	return &Stripe{
		layer:   layer{pool: bioset.New(pool), size: total, caps: legCaps(legs)},
		legs:    legs,
		chunk:   chunk,
		legSize: legSize,
	}, nil
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

// Submit implements bioset.Queue.
func (st *Stripe) Submit(s *bioset.Submitter, b *bioset.Bio) {
	switch b.Op {
	case bioset.OpFlush:
		st.fanOutFlush(s, b, st.legs)
		return
	case bioset.OpTrim, bioset.OpWriteZeroes, bioset.OpCache:
		st.submitPerLeg(s, b)
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
	pieces := statusPieces(b, int(last-first+1))
	pos, end := b.Offset, b.Offset+b.Length
	for i := 0; i < pieces && pos < end; i++ {
		n := min(st.chunk-pos%st.chunk, end-pos)
		leg, legOff := st.locate(pos)
		// docs/DESIGN.md rule 4: c is submitted before the next child
		// is allocated, so that the rescuer can take it if that
		// allocation finds the pool empty.
		c := st.child(s, b)
		piece(c, b, st.legs[leg], pos, n, legOff, i, pieces)
		s.Submit(c)
		pos += n
	}
	b.End(nil)
}

// submitPerLeg serves a no-payload range op with one clipped child per leg
// it touches.
func (st *Stripe) submitPerLeg(s *bioset.Submitter, b *bioset.Bio) {
	end := b.Offset + b.Length
	touched, only := 0, 0
	for i := range st.legs {
		if st.below(end, i) > st.below(b.Offset, i) {
			touched++
			only = i
		}
	}
	if touched <= 1 {
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

// KindStripe is the stripe layer's kind.
const KindStripe = "stripe"

func init() { Register(Kind{New: func() Settings { return new(StripeConfig) }, Rank: 20}) }

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

// KeyHint implements settings.KeyHinter.
func (c *StripeConfig) KeyHint(key string) string {
	if key == "leg" {
		return `stripe takes a list: write "legs:"`
	}
	return ""
}

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
	for i := 1; i < len(legs); i++ {
		if legs[i].Bytes != legs[0].Bytes {
			return 0, sizeError(legs[i].Line, "stripe leg %d is %s but leg 1 (line %d) is %s; the legs of a stripe must be the same size",
				i+1, settings.FormatSize(legs[i].Bytes), legs[0].Line, settings.FormatSize(legs[0].Bytes))
		}
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
