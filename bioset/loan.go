package bioset

import (
	"cmp"
	"slices"
	"sync/atomic"
)

// A READ normally ends with the data copied into the top bio's buffer, and
// the protocol layer then sends that buffer: two copies of every byte, one
// by the target and one by the kernel into the socket. For a RAM target the
// first copy is pure overhead: the bytes already sit in memory that can be
// sent as it is. So the owner of a top READ bio may offer a loan table
// (SetLoans), and a leaf may then lend the memory that holds a piece of
// the answer (Lend) instead of copying it. The owner sends lent pieces in
// place, and the rest from its buffer.
//
// What a lender promises is only that the lent bytes stay readable: Go's
// collector keeps them alive however long the reply waits for the socket,
// even if the target frees the memory meanwhile. It does not promise that
// they stay unchanged. A write that lands in lent memory before the reply
// is sent shows in the reply: the read then returns data newer than when it
// completed, possibly a mix of old and new. Only a write that was in
// flight at the same time as the read can do that, since the client has
// not seen the read's reply, and NBD (like any block device) leaves
// overlapping requests in flight unordered: either outcome, or a mix, is
// what a client must expect of them. A read with no overlapping write in
// flight returns exactly the data.
//
// Lending is an optimisation, never a requirement: a leaf that cannot lend
// (the table is full, the bio has none, the memory is not its own to lend)
// copies into Buf as always, and a reply may mix lent and copied pieces.
// docs/DESIGN.md ("Lending") places this in the request path and counts
// what lent memory can pin.

// Loan is one lent piece: Data stands for the top buffer's bytes from Pos.
type Loan struct {
	Pos  uint64
	Data []byte
}

// Loans is a top READ bio's table of lent pieces, of a fixed number of
// slots: a read lends its first pieces, as many as there are slots, and has
// the rest copied. Leaves of one bio may lend from several goroutines at
// once; each claims its slot atomically.
type Loans struct {
	buf   []byte // the top bio's buffer
	top   uint64 // the TopOffset of buf[0]
	used  atomic.Int32
	slots []Loan
}

// NewLoans returns an empty table of n slots.
func NewLoans(n int) *Loans {
	return &Loans{slots: make([]Loan, n)}
}

// Cap returns the number of slots.
func (l *Loans) Cap() int { return len(l.slots) }

// SetLoans offers l to the leaves of top READ bio b, whose Buf and
// TopOffset must be set: lent pieces are placed by their TopOffset and
// checked against this buffer. l must be empty (new, or Reset).
func (b *Bio) SetLoans(l *Loans) {
	l.buf, l.top = b.Buf, b.TopOffset
	b.loans = l
}

// Lend offers p, the leaf's own memory holding the bytes b.Buf[at:] up to
// len(p), in place of copying them into b.Buf. It reports whether the loan
// was taken; if not, the caller copies as usual. Only a leaf calls it, on a
// READ bio it is serving, before ending the bio. p must stay readable
// until the top bio's owner is done with it (see the comment at the top of
// this file for what may change it meanwhile).
func (b *Bio) Lend(at uint64, p []byte) bool {
	if b.Op != OpRead || at > uint64(len(b.Buf)) || uint64(len(p)) > uint64(len(b.Buf))-at || len(p) == 0 {
		return false
	}
	root := b
	for root.parent != nil {
		root = root.parent
	}
	l := root.loans
	if l == nil {
		return false
	}
	// b.Buf must be the top buffer's bytes from b's TopOffset: the
	// invariant every layer keeps (docs/DESIGN.md rule 9: children get
	// sub-slices, never copies). Checking it costs one comparison, and a
	// layer that broke it gets copies, not misplaced data.
	pos := b.TopOffset - l.top
	if pos >= uint64(len(l.buf)) || uint64(len(b.Buf)) > uint64(len(l.buf))-pos || &l.buf[pos] != &b.Buf[0] {
		return false
	}
	i := int(l.used.Add(1) - 1)
	if i >= len(l.slots) {
		return false
	}
	l.slots[i] = Loan{Pos: pos + at, Data: p}
	return true
}

// Sorted returns the lent pieces in buffer order. Call it once the top bio
// has ended: every leaf is done lending then.
func (l *Loans) Sorted() []Loan {
	s := l.slots[:min(int(l.used.Load()), len(l.slots))]
	slices.SortFunc(s, func(a, b Loan) int { return cmp.Compare(a.Pos, b.Pos) })
	return s
}

// Reset empties l for another bio, dropping its references to lent memory.
func (l *Loans) Reset() {
	clear(l.slots[:min(int(l.used.Load()), len(l.slots))])
	l.used.Store(0)
	l.buf, l.top = nil, 0
}
