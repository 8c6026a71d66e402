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

// frontLen is the length of the first piece of a bio at off of length n.
func (sp *Split) frontLen(off, n uint64) uint64 {
	n = min(n, sp.maxBytes)
	if sp.boundary != 0 {
		n = min(n, sp.boundary-off%sp.boundary)
	}
	return n
}

// Submit implements bioset.Queue.
func (sp *Split) Submit(s *bioset.Submitter, b *bioset.Bio) {
	if !b.Op.HasRange() {
		remap(s, b, sp.leg, b.Offset)
		return
	}
	n := sp.frontLen(b.Offset, b.Length)
	if n >= b.Length {
		remap(s, b, sp.leg, b.Offset)
		return
	}
	var window []bioset.Extent
	if b.Op == bioset.OpBlockStatus {
		// Give the front piece its share of the result slots: one slot
		// per remaining piece, or all that are left if there are fewer.
		pieces := 1 + (b.Length-n+sp.maxBytes-1)/sp.maxBytes
		w := max(1, uint64(len(b.Extents))/pieces)
		window = b.Extents[:w:w]
		b.Extents = b.Extents[w:]
	}
	front := sp.pool.Split(s, b, n)
	front.Dev = sp.leg
	front.Extents = window
	if b.Op == bioset.OpBlockStatus && len(b.Extents) == 0 {
		// No slots left for the rest: the reply will cover less than
		// was asked, which NBD allows. Drop the remainder.
		s.Submit(front)
		b.End(nil)
		return
	}
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

// KindSplit is the split layer's kind.
const KindSplit = "split"

func init() { Register(Kind{New: func() Settings { return new(SplitConfig) }, Rank: 10, OneLeg: true}) }

// SplitConfig is the settings of a split node:
//
//	split: {max_bytes: 1MiB, boundary: 0, pool: {…}, leg: NODE}
type SplitConfig struct {
	// MaxBytes is the longest piece a request is cut into: required, a
	// positive multiple of 512.
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

// KeyHint implements settings.KeyHinter.
func (c *SplitConfig) KeyHint(key string) string {
	if key == "legs" {
		return `split has exactly one leg: write "leg:" and a single stack node`
	}
	return ""
}

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
