package stack

import (
	"fmt"
	"sort"

	"github.com/stackd/stackd/bioset"
)

// Linear concatenates legs end to end, like dm-linear over several
// targets. A bio inside one leg is remapped in place; one that spans legs
// gets a child per leg.
type Linear struct {
	layer
	legs   []Device
	starts []uint64 // device offset where each leg begins
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
	return &Linear{
		layer:  layer{pool: bioset.New(pool), size: size, caps: legCaps(legs)},
		legs:   legs,
		starts: starts,
	}, nil
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
	pieces := statusPieces(b, last-first+1)
	pos, end := b.Offset, b.Offset+b.Length
	for i := 0; i < pieces; i++ {
		leg := first + i
		legEnd := ln.starts[leg] + ln.legs[leg].Size()
		n := min(legEnd, end) - pos
		c := ln.child(s, b) // docs/DESIGN.md rule 4, as in Stripe.Submit
		piece(c, b, ln.legs[leg], pos, n, pos-ln.starts[leg], i, pieces)
		s.Submit(c)
		pos += n
	}
	b.End(nil)
}
