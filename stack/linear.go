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

// KindLinear is the linear layer's kind.
const KindLinear = "linear"

func init() { Register(Kind{New: func() Settings { return new(LinearConfig) }, Rank: 30}) }

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

// KeyHint implements settings.KeyHinter.
func (c *LinearConfig) KeyHint(key string) string {
	if key == "leg" {
		return `linear takes a list: write "legs:"`
	}
	return ""
}

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
