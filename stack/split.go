package stack

import (
	"fmt"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/settings"
)

// Split caps the size of requests and keeps them from crossing a boundary,
// like the kernel's bio_split_to_limits: a bio that is too long loses its
// front piece to a child, which goes down first, and the remainder is
// requeued to the split itself. Each pass allocates one child, so the split
// never holds more than one unsubmitted child of its own.
//
// What is cut, and where:
//   - READ and WRITE at max_bytes and at boundary. max_bytes bounds a
//     payload: the buffer one bio below pins.
//   - TRIM, WRITE_ZEROES and CACHE at boundary only. They carry no
//     payload, so max_bytes does not concern them, and every layer and
//     target takes them whole (up to NBD's 4 GiB - 1: a stripe clips them
//     to one child per leg). boundary is kept because it is an alignment a
//     lower layer may rely on for anything that touches the data.
//   - BLOCK_STATUS not at all. It reads no data and changes none, so no
//     alignment matters to it, and every layer answers any range by its
//     own geometry. Cutting it would only spread its result slots over the
//     pieces, and the answer would end at the first piece that ran short
//     of them: through a 1 MiB split, mapping an empty gigabyte took
//     thousands of requests.
type Split struct {
	layer
	leg      Device
	maxBytes uint64
	boundary uint64
}

// NewSplit returns a split over leg. maxBytes must be at least 1; boundary
// 0 means no boundary.
func NewSplit(leg Device, maxBytes, boundary uint64, pool bioset.Options) (*Split, error) {
	if maxBytes == 0 {
		return nil, fmt.Errorf("split: max_bytes must be positive")
	}
	return &Split{
		layer:    layer{pool: bioset.New(pool), size: leg.Size(), caps: leg.Caps()},
		leg:      leg,
		maxBytes: maxBytes,
		boundary: boundary,
	}, nil
}

// frontLen is the length of the first piece of b (see Split for the rules).
func (sp *Split) frontLen(b *bioset.Bio) uint64 {
	n := b.Length
	if b.Op.HasPayload() {
		n = min(n, sp.maxBytes)
	}
	if sp.boundary != 0 {
		n = min(n, sp.boundary-b.Offset%sp.boundary)
	}
	return n
}

// Submit implements bioset.Queue.
func (sp *Split) Submit(s *bioset.Submitter, b *bioset.Bio) {
	if !b.Op.HasRange() || b.Op == bioset.OpBlockStatus {
		remap(s, b, sp.leg, b.Offset)
		return
	}
	n := sp.frontLen(b)
	if n >= b.Length {
		remap(s, b, sp.leg, b.Offset)
		return
	}
	front := sp.pool.Split(s, b, n)
	front.Dev = sp.leg
	// The remainder goes back to this layer: the Submitter runs the front
	// (for a lower device) first, then comes back for the next piece. It
	// is addressed to the split itself rather than to whatever wrapper it
	// came through (Build's counters), so that it is counted once; on the
	// first pass that makes it look like a lower bio too, which is why
	// the front is queued before it.
	b.Dev = sp
	s.Submit(front)
	s.Submit(b)
}

// Direct offers direct writes when the leg does (see bioset.Direct). A
// direct write is no bio, so nothing below needs it bounded, but it is cut
// as Submit cuts a WRITE all the same: the nodes below then count the
// pieces a bio path would have sent them.
func (sp *Split) Direct() bioset.Direct { return newLayerDirect([]Device{sp.leg}, sp.directPiece) }

func (sp *Split) directPiece(pos, end uint64) (int, uint64, uint64) {
	n := min(end-pos, sp.maxBytes)
	if sp.boundary != 0 {
		n = min(n, sp.boundary-pos%sp.boundary)
	}
	return 0, pos, n
}

// KindSplit is the split layer's kind.
const KindSplit = "split"

func init() {
	Register(Kind{New: func() Settings { return new(SplitConfig) }, Rank: 10, Legs: OneLeg, Example: "max_bytes: 1MiB"})
}

// SplitConfig is the settings of a split node:
//
//	split: {max_bytes: 1MiB, boundary: 0, pool: {…}, leg: NODE}
type SplitConfig struct {
	// MaxBytes is the longest piece a READ or WRITE is cut into:
	// required, a positive multiple of 512. Trims, zeroes and cache
	// requests carry no payload and are cut at Boundary only; block
	// status passes whole (see Split).
	MaxBytes settings.Size `yaml:"max_bytes" need:"true"`
	// Boundary: no piece crosses a multiple of it; a multiple of 512, 0
	// (the default) for none.
	Boundary settings.Size `yaml:"boundary"`
	Pool     PoolSpec      `yaml:"pool"`
	// Leg is the one stack node below.
	Leg Leg `yaml:"leg" need:"true"`
}

func (c *SplitConfig) Kind() string     { return KindSplit }
func (c *SplitConfig) LegSpecs() []Spec { return []Spec{c.Leg.Spec} }

func (c *SplitConfig) Check(p *settings.Problems) {
	checkBlocks(p, "split max_bytes", c.MaxBytes)
	if b := c.Boundary; b.Line > 0 && b.Bytes%blockSize != 0 {
		p.At(b.Line, "split boundary: %s is not a multiple of %d bytes (0: no boundary)", b, blockSize)
	}
	c.Pool.Check(p)
}

// Size is the leg's.
func (c *SplitConfig) NodeSize(legs []Sized) (uint64, error) { return legs[0].Bytes, nil }

func (c *SplitConfig) Build(legs []Device, b BuildContext) (Device, error) {
	return NewSplit(legs[0], c.MaxBytes.Bytes, c.Boundary.Bytes, c.Pool.Options(b.Path))
}

func (c *SplitConfig) Describe() []string {
	words := []string{"max_bytes=" + c.MaxBytes.String()}
	if c.Boundary.Bytes != 0 {
		words = append(words, "boundary="+c.Boundary.String())
	}
	return append(words, c.Pool.describe()...)
}
