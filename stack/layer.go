package stack

import (
	"github.com/stackd/stackd/bioset"
)

// layer is what every stacking layer has: its own pool (docs/DESIGN.md
// rule 3), its size and the capabilities it passes up.
type layer struct {
	pool *bioset.BioSet
	size uint64
	caps bioset.Caps
}

func (l *layer) Size() uint64                                         { return l.size }
func (l *layer) Caps() bioset.Caps                                    { return l.caps }
func (l *layer) Pool() *bioset.BioSet                                 { return l.pool }
func (l *layer) Close() error                                         { l.pool.Close(); return nil }
func (l *layer) child(s *bioset.Submitter, b *bioset.Bio) *bioset.Bio { return l.pool.Child(s, b) }

// legCaps is what a layer over legs can promise: only what every leg can do.
func legCaps(legs []Device) bioset.Caps {
	c := bioset.CapsAll
	for _, l := range legs {
		c &= l.Caps()
	}
	return c
}

// layerDirect is a layer's direct access over its legs' (see
// bioset.Direct). piece says where each piece of a direct write goes, cut
// as the layer's Submit cuts a WRITE bio: the leg holding device offset
// pos, pos's offset on it, and how many bytes of [pos, end) go there in
// one piece.
type layerDirect struct {
	legs  []bioset.Direct
	piece func(pos, end uint64) (leg int, legOff, n uint64)
}

// newLayerDirect returns the direct access of a layer over legs, or nil
// if a leg has none: a layer offers direct writes only when all of its
// legs take them.
func newLayerDirect(legs []Device, piece func(pos, end uint64) (int, uint64, uint64)) bioset.Direct {
	ds := make([]bioset.Direct, len(legs))
	for i, l := range legs {
		if ds[i] = bioset.DirectOf(l); ds[i] == nil {
			return nil
		}
	}
	return &layerDirect{legs: ds, piece: piece}
}

// WriteDirect sends each piece of [off, off+length) to its leg, with the
// part of head that falls in it.
func (ld *layerDirect) WriteDirect(off, length uint64, head []byte, fill func([]byte) error) error {
	for pos, end := off, off+length; pos < end; {
		leg, legOff, n := ld.piece(pos, end)
		if err := ld.legs[leg].WriteDirect(legOff, n, headPart(head, pos-off, n), fill); err != nil {
			return err
		}
		pos += n
	}
	return nil
}

// headPart returns the part of a direct write's head that falls in [rel,
// rel+n) of its range: what goes to a leg with that piece.
func headPart(head []byte, rel, n uint64) []byte {
	h := uint64(len(head))
	return head[min(rel, h):min(rel+n, h)]
}

// remap points b at dev at offset off and resubmits it: the zero-allocation
// path for a bio that falls on a single leg. The extent window and
// TopOffset stay as they are, since the bio still covers the same range of
// the top device.
func remap(s *bioset.Submitter, b *bioset.Bio, dev Device, off uint64) {
	b.Dev = dev
	b.Offset = off
	s.Submit(b)
}

// piece sets up child c to serve bytes [pos, pos+n) of parent b, which
// starts at device offset b.Offset, as bytes [legOff, legOff+n) of dev.
func piece(c, b *bioset.Bio, dev Device, pos, n, legOff uint64) {
	c.Dev = dev
	c.Offset = legOff
	c.Length = n
	rel := pos - b.Offset
	c.TopOffset = b.TopOffset + rel
	if b.Op.HasPayload() {
		c.Buf = b.Buf[rel : rel+n : rel+n]
	}
}

// fanOutFlush sends a FLUSH to every leg: a flush must cover every write
// that completed before it, wherever it landed.
func (l *layer) fanOutFlush(s *bioset.Submitter, b *bioset.Bio, legs []Device) {
	if len(legs) == 1 {
		b.Dev = legs[0]
		s.Submit(b)
		return
	}
	for _, leg := range legs {
		// docs/DESIGN.md rule 4: each child is submitted before the next
		// allocation, so the rescuer can take it if that allocation finds
		// the pool empty.
		c := l.child(s, b)
		c.Dev = leg
		s.Submit(c)
	}
	b.End(nil)
}
