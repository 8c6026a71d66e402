package stack

import (
	"fmt"
	"sort"
	"strconv"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/settings"
)

// Linear concatenates legs end to end, like dm-linear over several
// targets. A bio inside one leg is remapped in place; one that spans legs
// gets a child per leg. A BLOCK_STATUS child answers into its own part of
// the bio's window, and the parts are joined into one answer, merged
// across the legs' seams, when the last child ends (gatherStatus).
type Linear struct {
	layer
	legs   []Device
	starts []uint64 // device offset where each leg begins
	// gather is gatherStatus bound once, so that setting it on a bio does
	// not allocate.
	gather func(*bioset.Bio)
}

// NewLinear returns the concatenation of legs.
func NewLinear(legs []Device, pool bioset.Options) (*Linear, error) {
	if len(legs) < 1 {
		return nil, fmt.Errorf("linear: no legs")
	}
	starts := make([]uint64, len(legs))
	var size uint64
	for i, l := range legs {
		starts[i] = size
		size += l.Size()
	}
	ln := &Linear{
		layer:  layer{pool: bioset.New(pool), size: size, caps: legCaps(legs)},
		legs:   legs,
		starts: starts,
	}
	ln.gather = ln.gatherStatus
	return ln, nil
}

// legAt returns the index of the leg holding device offset off.
func (ln *Linear) legAt(off uint64) int {
	return sort.Search(len(ln.starts), func(i int) bool { return ln.starts[i] > off }) - 1
}

// Submit implements bioset.Queue.
func (ln *Linear) Submit(s *bioset.Submitter, b *bioset.Bio) {
	if b.Op == bioset.OpFlush {
		ln.fanOutFlush(s, b, ln.legs)
		return
	}
	first := ln.legAt(b.Offset)
	last := first
	if b.Length > 0 {
		last = ln.legAt(b.Offset + b.Length - 1)
	}
	if first == last {
		remap(s, b, ln.legs[first], b.Offset-ln.starts[first])
		return
	}
	pieces := last - first + 1
	if b.Op == bioset.OpBlockStatus {
		// At most one piece per result slot. A reply may cover less
		// than was asked (the NBD spec allows it), so the pieces beyond
		// are simply not asked.
		pieces = min(pieces, len(b.Extents))
		clear(b.Extents) // children's parts start unused (see bioset.Bio.Extents)
		// Before the first child: with the rescuer, children may end
		// before this loop does.
		b.SetGather(ln.gather)
	}
	pos, end := b.Offset, b.Offset+b.Length
	for i := 0; i < pieces; i++ {
		leg := first + i
		legEnd := ln.starts[leg] + ln.legs[leg].Size()
		n := min(legEnd, end) - pos
		// docs/DESIGN.md rule 4: allocate, fill, submit, and only then
		// allocate the next.
		c := ln.child(s, b)
		piece(c, b, ln.legs[leg], pos, n, pos-ln.starts[leg])
		if b.Op == bioset.OpBlockStatus {
			c.Extents = extentWindow(b.Extents, i, pieces)
		}
		s.Submit(c)
		pos += n
	}
	b.End(nil)
}

// Direct offers direct writes when every leg does (see bioset.Direct),
// cutting them at the legs' seams as Submit cuts bios.
func (ln *Linear) Direct() bioset.Direct { return newLayerDirect(ln.legs, ln.directPiece) }

func (ln *Linear) directPiece(pos, end uint64) (int, uint64, uint64) {
	leg := ln.legAt(pos)
	return leg, pos - ln.starts[leg], min(ln.starts[leg]+ln.legs[leg].Size(), end) - pos
}

// KindLinear is the linear layer's kind.
const KindLinear = "linear"

func init() {
	Register(Kind{New: func() Settings { return new(LinearConfig) }, Rank: 30, Legs: ManyLegs})
}

// LinearConfig is the settings of a linear node:
//
//	linear: {pool: {…}, legs: [NODE, …]}
type LinearConfig struct {
	Pool PoolSpec `yaml:"pool"`
	// Legs are at least 1 stack node, of any sizes, end to end; the
	// linear's size is their sum.
	Legs settings.List[Spec] `yaml:"legs" need:"true" item:"leg"`
}

func (c *LinearConfig) Kind() string     { return KindLinear }
func (c *LinearConfig) LegSpecs() []Spec { return c.Legs.Items }

func (c *LinearConfig) Check(p *settings.Problems) {
	c.Pool.Check(p)
	checkLegCount(p, KindLinear, c.Legs, 1)
}

func (c *LinearConfig) NodeSize(legs []Sized) (uint64, error) {
	var total uint64
	for _, l := range legs {
		if total+l.Bytes < total {
			return 0, sizeError(l.Line, "linear is larger than 16EiB")
		}
		total += l.Bytes
	}
	return total, nil
}

func (c *LinearConfig) Build(legs []Device, b BuildContext) (Device, error) {
	return NewLinear(legs, c.Pool.Options(b.Path))
}

func (c *LinearConfig) Describe() []string {
	return append([]string{"legs=" + strconv.Itoa(len(c.Legs.Items))}, c.Pool.describe()...)
}

// extentWindow returns part i of n equal, disjoint, ordered parts of the
// result slots. Part i answers for lower offsets than part i+1, so the
// parts read in order are the bio's answer, whichever child finished
// first.
func extentWindow(slots []bioset.Extent, i, n int) []bioset.Extent {
	w := len(slots) / n
	return slots[i*w : (i+1)*w : (i+1)*w]
}

// gatherStatus joins the legs' answers, each in its part of the window and
// in the bio's coordinates, into one, in place, when the last child has
// ended. It runs inside End: one pass over the window, nothing allocated.
// Where a leg's answer falls short of its range, the joined answer ends.
func (ln *Linear) gatherStatus(b *bioset.Bio) {
	bioset.CompactExtents(b.Extents, b.TopOffset, b.Length)
}
