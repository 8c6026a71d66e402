package targets

import (
	"sync/atomic"
	"syscall"

	"github.com/stackd/stackd/bioset"
)

// zeroes is read-only: it is the source for writing zeroes where a target
// cannot deallocate or zero a range in place. It lives in BSS, so until
// something reads it, it costs no memory beyond the shared zero page.
var zeroes [1 << 20]byte

// errorCounter counts the bios a target ends with an error. Errors start
// at the leaves (and at fault layers, which fail bios on purpose); the
// per-layer error metric of a layer is the sum over those below it, so
// each counts only the bios it fails itself, never one failed below it.
type errorCounter struct{ n atomic.Uint64 }

// end ends b with err, counting it if it is an error.
func (c *errorCounter) end(b *bioset.Bio, err error) {
	if err != nil {
		c.n.Add(1)
	}
	b.End(err)
}

// admit ends b with the errno Check gives it, counted, and reports false;
// or reports true, and b is the target's to perform.
func (c *errorCounter) admit(b *bioset.Bio, size uint64) bool {
	if e := Check(b, size); e != 0 {
		c.end(b, e)
		return false
	}
	return true
}

// Errors returns how many bios the target has ended with an error.
func (c *errorCounter) Errors() uint64 { return c.n.Load() }

// Check reports the errno a bio gets before a target of size bytes looks
// at it, or 0. The protocol layer validates requests already; this guards
// a target against a buggy layer above it, because a wrong range here
// would read or write another leg's data, or panic.
func Check(b *bioset.Bio, size uint64) syscall.Errno {
	switch b.Op {
	case bioset.OpFlush:
		return 0
	case bioset.OpRead, bioset.OpWrite:
		if uint64(len(b.Buf)) != b.Length {
			return syscall.EINVAL
		}
	case bioset.OpTrim, bioset.OpWriteZeroes, bioset.OpCache, bioset.OpBlockStatus:
	default:
		return syscall.EINVAL
	}
	end := b.Offset + b.Length
	if end < b.Offset || end > size {
		return syscall.EINVAL
	}
	return 0
}

// extentFill writes a BLOCK_STATUS answer into a bio's window of result
// slots, merging neighbours with equal flags so that a long run of small
// chunks costs one slot, not one per chunk.
type extentFill struct {
	b   *bioset.Bio
	n   int    // slots used
	pos uint64 // device offset the next extent starts at
}

func newExtentFill(b *bioset.Bio) extentFill {
	return extentFill{b: b, pos: b.Offset}
}

// add records the next length bytes as having flags. It returns false when
// no slot is left for them; the answer then covers less than the bio, which
// the protocol allows, and the caller stops.
func (f *extentFill) add(length uint64, flags bioset.ExtentFlags) bool {
	if length == 0 {
		return true
	}
	ext := f.b.Extents
	if f.n > 0 && ext[f.n-1].Flags == flags {
		ext[f.n-1].Length += length
	} else {
		if f.n == len(ext) {
			return false
		}
		ext[f.n] = bioset.Extent{
			Offset: f.b.TopOffset + (f.pos - f.b.Offset),
			Length: length,
			Flags:  flags,
		}
		f.n++
	}
	f.pos += length
	return true
}

const holeZero = bioset.ExtentHole | bioset.ExtentZero
