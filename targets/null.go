package targets

import (
	"github.com/stackd/stackd/bioset"
)

// Null is a target that stores nothing: reads return zeroes and writes
// vanish. It exists to measure the ceiling of the stack and the protocol
// code above it, so it does no work a benchmark would then count.
type Null struct {
	size uint64
	errorCounter
}

// NewNull returns a null target of size bytes.
func NewNull(size uint64) *Null { return &Null{size: size} }

// Size returns the device size in bytes.
func (n *Null) Size() uint64 { return n.size }

// Caps returns every capability: each is trivially honoured.
func (n *Null) Caps() bioset.Caps { return bioset.CapsAll }

// Close does nothing: a null target holds nothing.
func (n *Null) Close() error { return nil }

// Submit performs b at once.
func (n *Null) Submit(_ *bioset.Submitter, b *bioset.Bio) {
	if !n.admit(b, n.size) {
		return
	}
	switch b.Op {
	case bioset.OpRead:
		clear(b.Buf)
	case bioset.OpBlockStatus:
		f := newExtentFill(b)
		f.add(b.Length, holeZero)
	}
	n.end(b, nil)
}

// Direct returns n itself: a null target can take a write anywhere, by
// keeping none of it (see bioset.Direct).
func (n *Null) Direct() bioset.Direct { return n }

// nullSink is where a null target's WriteDirect has payloads read to, and
// forgotten. Every writer shares it and nothing reads it, so what
// concurrent fills leave in it does not matter.
var nullSink [64 << 10]byte

// WriteDirect implements bioset.Direct: head is ignored, and fill writes
// the rest into the sink, a piece at a time, as a null target would throw
// the bytes away.
func (n *Null) WriteDirect(_, length uint64, head []byte, fill func(dst []byte) error) error {
	length -= min(uint64(len(head)), length)
	for length > 0 {
		k := min(length, uint64(len(nullSink)))
		if err := fill(nullSink[:k:k]); err != nil {
			return err
		}
		length -= k
	}
	return nil
}
