// Package bioset is stackd's block core: the Bio (one request to one device),
// the BioSet (a bounded pool of bios with a rescuer) and the Submitter (the
// loop that turns recursive submission into iteration).
//
// It follows the Linux block layer: bio chaining and splitting from
// block/bio.c, the depth-first two-list submission order of
// submit_bio_noacct (block/blk-core.c), and the per-bio_set rescuer that
// guarantees forward progress when a pool runs dry. The rules it enforces
// are numbered and stated in docs/DESIGN.md; the comment beside the code
// that enforces each one cites it by number and says how.
package bioset

import (
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"

	"github.com/stackd/stackd/internal/intrusive"
)

// Op is the operation a bio asks of a device.
type Op uint8

// The operations, one for each NBD command that reaches a device.
const (
	OpRead Op = iota
	OpWrite
	OpFlush
	OpTrim
	OpWriteZeroes
	OpCache
	OpBlockStatus
	numOps
)

// NumOps is the number of ops, for tables indexed by Op.
const NumOps = int(numOps)

var opNames = [numOps]string{"read", "write", "flush", "trim", "write_zeroes", "cache", "block_status"}

// String returns the op's name as metrics and logs spell it.
func (o Op) String() string {
	if o < numOps {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Ops lists every op, in order, for code that keeps per-op tables.
func Ops() []Op {
	return []Op{OpRead, OpWrite, OpFlush, OpTrim, OpWriteZeroes, OpCache, OpBlockStatus}
}

// HasPayload reports whether bios of this op carry a data buffer.
func (o Op) HasPayload() bool { return o == OpRead || o == OpWrite }

// HasRange reports whether the op addresses a byte range. FLUSH does not:
// it covers everything written before it.
func (o Op) HasRange() bool { return o != OpFlush }

// Flags modify an op.
type Flags uint8

// The flags, as NBD defines them for the commands that carry them.
const (
	// FlagFUA: the data reaches stable storage before the bio completes.
	FlagFUA Flags = 1 << iota
	// FlagNoHole: WRITE_ZEROES must leave the range allocated.
	FlagNoHole
	// FlagFastZero: WRITE_ZEROES must fail with ENOTSUP rather than be
	// slower than writing zeroes would be.
	FlagFastZero
)

// Caps is the set of optional operations a device supports. READ and WRITE
// are always supported. A stacking layer reports the intersection of its
// legs' caps, so the top of a stack tells what the whole stack can do.
type Caps uint8

// The capabilities.
const (
	CapFlush Caps = 1 << iota
	CapFUA
	CapTrim
	CapWriteZeroes
	CapFastZero
	CapBlockStatus
	CapCache
)

// CapsAll is every capability.
const CapsAll = CapFlush | CapFUA | CapTrim | CapWriteZeroes | CapFastZero | CapBlockStatus | CapCache

// ExtentFlags describe a range in a BLOCK_STATUS answer, with the bit values
// of NBD's base:allocation context.
type ExtentFlags uint32

// The extent flags.
const (
	ExtentHole ExtentFlags = 1 // not allocated
	ExtentZero ExtentFlags = 2 // reads as zeroes
)

// Extent is one BLOCK_STATUS result. Offset is in the coordinates of the top
// device of the stack (see Bio.TopOffset), so results from legs that
// complete in any order can be put back into device order. An extent of
// zero Length is an unused slot.
type Extent struct {
	Offset uint64
	Length uint64
	Flags  ExtentFlags
}

// Queue is anything a bio can be submitted to: a stacking layer or a leaf
// target. Submit must not block waiting for another bio to complete, except
// inside BioSet.Alloc, whose rescuer makes that wait safe.
//
// A layer's Submit either remaps b in place (sets b.Dev, b.Offset) and
// resubmits it, or allocates children from its own BioSet, chains them to b,
// submits them and ends its own reference to b. A leaf performs the I/O and
// calls b.End, now or later from another goroutine.
type Queue interface {
	Submit(s *Submitter, b *Bio)
}

// Bio is one request to one device. Its range, buffer and Dev belong to
// whoever holds it: a layer may remap them in place before passing it on.
type Bio struct {
	Op     Op
	Flags  Flags
	Offset uint64
	// Length of the range. Payload ops have len(Buf) == Length; no-payload
	// ops may carry up to 4 GiB - 1 (kernels send 2 GiB TRIMs).
	Length uint64
	// Buf is the payload of READ (filled by the target) and WRITE. A split
	// child references a sub-slice of its parent's buffer: no copies.
	Buf []byte
	// Dev is the device the bio is submitted to.
	Dev Queue

	// Extents is this bio's window of BLOCK_STATUS result slots. A target
	// fills it from the front, in increasing offset; a layer that fans a
	// bio out gives each child a disjoint part of the window and, through
	// SetGather, rewrites the window into one merged answer once they have
	// all ended (see extents.go for what an answer is).
	//
	// Invariant: a window handed to a device has every slot unused (zero),
	// so that a reader finds only what was written for this bio. The
	// protocol layer clears the top bio's window; a layer that hands parts
	// of a window to children clears it before it does.
	Extents []Extent
	// TopOffset is the top-device offset that Offset corresponds to.
	// Every layer keeps it as it remaps and splits, so that a leaf can
	// place what it produces in the top bio's terms: BLOCK_STATUS
	// extents, and lent READ memory (see Lend).
	//
	// For BLOCK_STATUS it is, more exactly, the coordinates the window's
	// extents are written in: a layer whose children's ranges are not
	// contiguous in its own (a stripe's legs) has them answer in their
	// leg's offsets, and translates when it gathers.
	TopOffset uint64

	// Private belongs to the bio's owner (the code that allocated it).
	Private any

	endIO     func(*Bio)
	gather    func(*Bio) // see SetGather
	parent    *Bio
	loans     *Loans // a top READ bio's loan table, or nil (see Lend)
	remaining atomic.Int32
	status    atomic.Uint32 // an errno; the first error wins
	pool      *BioSet
	free      bool                // in its pool's free list (guarded by pool.mu)
	link      intrusive.Link[Bio] // on a submitter list or the rescue list
}

// Init prepares a bio that the caller owns outside any pool (tests, or a
// bio on the stack of a synchronous caller). endIO is called once when the
// bio and all its chained children have ended.
func (b *Bio) Init(op Op, off, length uint64, buf []byte, endIO func(*Bio)) {
	*b = Bio{Op: op, Offset: off, Length: length, Buf: buf, endIO: endIO}
	b.remaining.Store(1)
}

// SetEndIO sets the function called when b and its chained children have
// all ended. Only a bio without a parent has one.
func (b *Bio) SetEndIO(fn func(*Bio)) { b.endIO = fn }

// SetGather makes fn run once, when b and every child chained to it have
// ended, before b passes its outcome on (to its parent or its endIO). A
// layer that fans a BLOCK_STATUS bio out sets it before submitting the
// first child, and fn turns the children's answers, in their parts of
// b.Extents, into b's answer. Children end in any order and on any
// goroutine; fn runs on whichever ends last, after every child's answer is
// written (the reference count's atomic decrements order them), so it
// needs no lock of its own.
//
// fn runs inside End, so rule 6 binds it: it must neither allocate nor
// block. A bio has at most one: only the layer that fans it out sets it.
func (b *Bio) SetGather(fn func(*Bio)) {
	if b.gather != nil {
		panic("bioset: gather set twice")
	}
	b.gather = fn
}

// Parent returns the bio b is chained to, or nil.
func (b *Bio) Parent() *Bio { return b.parent }

// Chain makes parent wait for child: parent completes only once child has
// ended, and child's error becomes parent's if parent has none yet. Call it
// while still holding a reference to parent (before ending parent).
func Chain(child, parent *Bio) {
	if child.parent != nil {
		panic("bioset: bio chained twice")
	}
	child.parent = parent
	parent.remaining.Add(1)
}

// Advance moves the start of b forward by n bytes: what a layer does to the
// remainder after splitting off a front piece.
func (b *Bio) Advance(n uint64) {
	if n > b.Length {
		panic("bioset: advance past the end of a bio")
	}
	b.Offset += n
	b.Length -= n
	b.TopOffset += n
	if b.Op.HasPayload() {
		b.Buf = b.Buf[n:]
	}
}

// SetError records err as the bio's outcome unless an earlier error was
// recorded: the first error wins, as in the kernel's bio_chain.
func (b *Bio) SetError(err error) {
	if err == nil {
		return
	}
	b.status.CompareAndSwap(0, uint32(Errno(err)))
}

// Err returns the bio's outcome: nil or a syscall.Errno.
func (b *Bio) Err() error {
	if st := b.status.Load(); st != 0 {
		return syscall.Errno(st)
	}
	return nil
}

// Errno maps an error to the errno a block device reports: the Errno inside
// it if there is one, EIO otherwise.
func Errno(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) && e != 0 {
		return e
	}
	return syscall.EIO
}

// End drops one reference to b, recording err first. When the last
// reference goes — b's own and one per chained child — b is complete: a
// chained bio passes its error to its parent, returns to its pool (waking an
// allocator that waits for it) and drops its reference to the parent; an
// unchained bio calls its endIO.
//
// Completion never allocates and never waits for another bio
// (docs/DESIGN.md rule 6), so End is safe from any goroutine, including a
// target's worker and the Submitter loop itself. The walk up the chain is a
// loop, not recursion.
func (b *Bio) End(err error) {
	b.SetError(err)
	for b != nil {
		left := b.remaining.Add(-1)
		if left > 0 {
			return
		}
		if left < 0 {
			panic("bioset: bio ended more often than it was referenced")
		}
		if g := b.gather; g != nil {
			b.gather = nil
			g(b)
		}
		parent := b.parent
		if parent == nil {
			if b.endIO != nil {
				b.endIO(b)
			}
			return
		}
		if st := b.status.Load(); st != 0 {
			parent.status.CompareAndSwap(0, st)
		}
		b.pool.Free(b)
		b = parent
	}
}

// bioList is an intrusive list of bios linked through Bio.link: queueing
// never allocates, and a whole list moves in O(1).
type bioList = intrusive.List[Bio]
