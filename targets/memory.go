package targets

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/stackd/stackd/bioset"
)

// DefaultMemoryChunk is the allocation unit of a Memory target when none is
// given: large enough that the table entry per chunk is negligible overhead,
// small enough that a scattered 4 KiB write pins little memory.
const DefaultMemoryChunk = 64 << 10

// The chunk table is a radix tree over chunk indexes: pages of chunks at
// the bottom, directories of pointers to pages or to lower directories
// above, and a top directory sized to the device. A page holds memPageLen
// consecutive chunks; a directory below the top, memDirLen of the level
// under it.
//
// Pages are small because a write anywhere in a page's span allocates the
// whole page: a 12 KiB page is at most 19% on top of one 64 KiB chunk, so
// scattered writes (a mkfs touching every block group of a huge device)
// cost little beyond their chunks. Directories are large because there are
// few of them and every level is one more load on every bio: a 1 GiB
// device of 64 KiB chunks is a top directory of 32 pages, a 1 TiB one
// three levels, and the largest a configuration allows (8 EiB of 4 KiB
// chunks) five. A full device pays about 24 bytes of table per chunk (a
// slice header, a bit, and for 64 KiB chunks an eighth of a span count):
// 0.04% of 64 KiB chunks, 0.6% of 4 KiB ones.
const (
	memPageBits = 9
	memPageLen  = 1 << memPageBits
	memPageMask = memPageLen - 1
	memDirBits  = 12
	memDirLen   = 1 << memDirBits
	memDirMask  = memDirLen - 1

	// The sizes of a page and of a directory below the top, for
	// tableBytes: a slice header or a pointer per entry, and a page's
	// freed bits and slice of span counts (whose array Memory.pageBytes
	// adds).
	memPageBytes = memPageLen*24 + memPageLen/8 + 24
	memDirBytes  = memDirLen * 8
)

// memStripes is the number of locks guarding chunks, chunk k taking lock
// k mod memStripes: enough that bios to different chunks rarely share one,
// few enough that all of them stay in the CPU cache. A lock kept in each
// chunk would never be shared, but costs a cache miss per bio on a large
// device, which is most of what the table saves over a map.
const memStripes = 256

// Memory is a sparse RAM target. It holds memory only for chunks that have
// been written, so a huge device costs nothing until used and TRIM gives
// memory back.
//
// Finding a chunk's page is a few atomic loads down the chunk table, with
// no lock: directories and pages are published with compare-and-swap when
// a write first needs them, and stay until Close. A missing page or
// directory is a hole and reads as zeros without locking at all.
//
// A page's entries, the chunks themselves, are read and written only under
// their stripe's lock, held for the copy: overlapping concurrent bios then
// see each chunk either before or after another's write, never a torn mix
// within one chunk, a TRIM never frees a chunk under a reader, and the race
// detector has nothing to report. Consecutive chunks have different
// stripes, so one large sequential request and many small random ones both
// spread out.
//
// The exception is a READ whose owner takes loans (bioset.Lend), as the
// NBD server does: it is lent the chunks themselves, found under the lock
// but read by the kernel once the lock is long dropped, when the reply goes
// out. That saves a copy of every byte read, at the cost of the guarantee
// above for reads that overlap a write in flight: such a read may show part
// of the write (NBD leaves overlapping requests unordered; see
// docs/DESIGN.md, "Lending"). A TRIM that frees a lent chunk meanwhile is
// harmless: the chunk's memory is its own range's until Close (see
// chunkRegion; on the heap, the loan keeps it alive), so the reply shows
// the old bytes, or zeros, or a later write's to that same range.
type Memory struct {
	size      uint64
	chunk     uint64
	shift     uint
	allocated atomic.Uint64
	// top is the root directory, sized to the device: at most memDirLen
	// entries, so that creating even the largest device costs little.
	top memDir
	// topShift is the number of low chunk-index bits below the top
	// directory's: memPageBits, plus memDirBits per directory level
	// between the top and the pages.
	topShift uint
	// tableBytes is the memory in directories and pages allocated since
	// NewMemory or Close, for tests; the top directory is not counted.
	tableBytes atomic.Uint64
	stripes    [memStripes]memStripe
	// region holds the chunks where it could be mapped (see
	// chunkRegion); nil: each chunk is a Go allocation.
	region *chunkRegion
	// spanChunks is the number of chunks in a huge-page span, when the
	// region collapses spans (chunks below hugePageSize, and a page of
	// the table covering whole spans); 0 otherwise.
	spanChunks uint64
	errorCounter
}

// memDir is a directory of the chunk table. Exactly one of dirs and pages
// is non-nil: pages in the lowest directory level, dirs above it.
type memDir struct {
	dirs  []atomic.Pointer[memDir]
	pages []atomic.Pointer[memPage]
}

// memPage holds the chunks of memPageLen consecutive chunk indexes; nil
// ones are holes. Entry i is guarded by the stripe lock of its chunk index.
//
// Pages stay until Close even when all their chunks are freed: removing one
// safely would need a lock that every lookup takes, and a page costs at
// most 24 bytes and a bit per chunk it spans, and 4 bytes per huge-page
// span.
type memPage struct {
	chunks [memPageLen][]byte
	// freed has bit i set when chunk i's region memory may hold bytes
	// written since it was freed (see Memory.allocLocked); a chunk never
	// allocated is the kernel's zeros. Atomic, as spans are.
	freed [memPageLen / 64]atomic.Uint64
	// spans counts the chunks allocated in each huge-page span the page
	// covers, when the region collapses spans (Memory.spanChunks): the
	// span is collapsed when its count reaches spanChunks. Atomic,
	// because the chunks of one span are under different stripe locks.
	spans []atomic.Uint32
}

// memStripe is one lock, padded to a cache line of its own so that CPUs
// locking neighbouring stripes do not contend for the line.
type memStripe struct {
	sync.RWMutex
	_ [64 - 24]byte // 24: the size of a sync.RWMutex, checked by a test
}

// NewMemory returns an empty memory target of size bytes allocated in
// chunks of chunk bytes (0: DefaultMemoryChunk). chunk must be a power of
// two, so that locating a chunk is a shift and a mask; NewMemory panics
// otherwise, because configuration validation is where that belongs.
func NewMemory(size, chunk uint64) *Memory {
	if chunk == 0 {
		chunk = DefaultMemoryChunk
	}
	if chunk&(chunk-1) != 0 {
		panic(fmt.Sprintf("targets: memory chunk %d is not a power of two", chunk))
	}
	m := &Memory{size: size, chunk: chunk, region: mapChunkRegion(size, chunk)}
	for chunk > 1 {
		chunk >>= 1
		m.shift++
	}
	if m.region != nil {
		if m.chunk < hugePageSize && memPageLen*m.chunk >= hugePageSize {
			m.spanChunks = hugePageSize / m.chunk
		}
		// A target dropped without Close still gives its memory back;
		// r, not m, so that the cleanup does not keep m alive.
		runtime.AddCleanup(m, func(r *chunkRegion) { r.unmap() }, m.region)
	}
	// The highest chunk index; a device smaller than a chunk still has
	// chunk 0, and a 0-byte one gets it too rather than an empty table.
	hi := (max(size, 1) - 1) >> m.shift
	m.topShift = memPageBits
	for hi>>m.topShift >= memDirLen {
		m.topShift += memDirBits
	}
	n := hi>>m.topShift + 1
	if m.topShift == memPageBits {
		m.top.pages = make([]atomic.Pointer[memPage], n)
	} else {
		m.top.dirs = make([]atomic.Pointer[memDir], n)
	}
	return m
}

// Size returns the device size in bytes.
func (m *Memory) Size() uint64 { return m.size }

// Caps returns every capability: RAM can do all of them cheaply.
func (m *Memory) Caps() bioset.Caps { return bioset.CapsAll }

// Allocated returns the bytes of chunk memory the target holds now. The
// chunk table itself is not included.
func (m *Memory) Allocated() uint64 { return m.allocated.Load() }

// CollapsedSpans returns how many times a span of the target's chunks was
// made one huge page (see chunkRegion) since it was created: 0 where its
// chunks are on the Go heap, are 2 MiB or more, or the kernel cannot
// collapse.
func (m *Memory) CollapsedSpans() uint64 {
	if m.region == nil {
		return 0
	}
	return m.region.collapsed.Load()
}

// Close drops every chunk, and unmaps the region, so that the memory goes
// back even if something still references m. It comes after the last bio
// and after the last loan of a chunk has been sent (the NBD server closes
// its stacks once every connection has ended): a region's chunks are gone
// once it returns.
func (m *Memory) Close() error {
	if m.region != nil {
		m.region.unmap()
	}
	for i := range m.top.dirs {
		m.top.dirs[i].Store(nil)
	}
	for i := range m.top.pages {
		m.top.pages[i].Store(nil)
	}
	m.allocated.Store(0)
	m.tableBytes.Store(0)
	return nil
}

// Submit performs b at once: RAM never waits.
func (m *Memory) Submit(_ *bioset.Submitter, b *bioset.Bio) {
	if !m.admit(b, m.size) {
		return
	}
	switch b.Op {
	case bioset.OpRead:
		m.read(b)
	case bioset.OpWrite:
		m.write(b.Buf, b.Offset)
	case bioset.OpTrim:
		m.zero(b.Offset, b.Length, false)
	case bioset.OpWriteZeroes:
		m.zero(b.Offset, b.Length, b.Flags&bioset.FlagNoHole != 0)
	case bioset.OpBlockStatus:
		m.blockStatus(b)
	}
	// FLUSH, FUA and CACHE: RAM is as stable and as close as it gets.
	m.end(b, nil)
}

// piece returns the chunk index holding off, off's position inside it, and
// how many of the length bytes from off lie in that chunk.
func (m *Memory) piece(off, length uint64) (idx, in, n uint64) {
	idx = off >> m.shift
	in = off & (m.chunk - 1)
	return idx, in, min(m.chunk-in, length)
}

// stripe returns the lock guarding chunk idx.
func (m *Memory) stripe(idx uint64) *memStripe {
	return &m.stripes[idx%memStripes]
}

// page returns the page holding chunk idx. If there is none, it returns
// nil and how many chunks from idx on are holes for want of a page or
// directory: callers that walk a range skip them in one step.
//
// It takes no lock: a page or directory once published stays until Close.
func (m *Memory) page(idx uint64) (p *memPage, holes uint64) {
	d := &m.top
	// The top index needs no mask, being below len(m.top.*) <= memDirLen.
	s := m.topShift
	for ; s > memPageBits; s -= memDirBits {
		if d = d.dirs[idx>>s&memDirMask].Load(); d == nil {
			return nil, 1<<s - idx&(1<<s-1)
		}
	}
	if p = d.pages[idx>>memPageBits&memDirMask].Load(); p == nil {
		return nil, memPageLen - idx&memPageMask
	}
	return p, 0
}

// pageFor is page for a writer: it allocates the missing directories and
// page on the way down.
func (m *Memory) pageFor(idx uint64) *memPage {
	d := &m.top
	for s := m.topShift; s > memPageBits; s -= memDirBits {
		lower := s-memDirBits > memPageBits
		d = publish(&d.dirs[idx>>s&memDirMask], &m.tableBytes, memDirBytes, func() *memDir {
			if lower {
				return &memDir{dirs: make([]atomic.Pointer[memDir], memDirLen)}
			}
			return &memDir{pages: make([]atomic.Pointer[memPage], memDirLen)}
		})
	}
	return publish(&d.pages[idx>>memPageBits&memDirMask], &m.tableBytes, m.pageBytes(), func() *memPage {
		p := new(memPage)
		if m.spanChunks != 0 {
			p.spans = make([]atomic.Uint32, memPageLen/m.spanChunks)
		}
		return p
	})
}

// pageBytes is the size of one page of m's table, its span counts included.
func (m *Memory) pageBytes() uint64 {
	if m.spanChunks == 0 {
		return memPageBytes
	}
	return memPageBytes + 4*memPageLen/m.spanChunks
}

// publish returns what slot holds, first filling an empty slot with fresh()
// and counting its size in table. Racing writers publish with
// compare-and-swap, and the losers use the winner's.
func publish[T any](slot *atomic.Pointer[T], table *atomic.Uint64, size uint64, fresh func() *T) *T {
	for {
		if p := slot.Load(); p != nil {
			return p
		}
		p := fresh()
		if slot.CompareAndSwap(nil, p) {
			table.Add(size)
			return p
		}
	}
}

// read answers READ b: each allocated chunk's bytes are lent to the top
// bio's owner if it takes loans (see bioset.Lend), and copied into b.Buf
// otherwise; holes read as zeroes, lent from the shared zeroes where they
// can be (nothing ever writes those), cleared in b.Buf where not.
func (m *Memory) read(b *bioset.Bio) {
	for at := uint64(0); at < b.Length; {
		idx, in, n := m.piece(b.Offset+at, b.Length-at)
		var c []byte
		if p, _ := m.page(idx); p != nil {
			st := m.stripe(idx)
			st.RLock()
			if c = p.chunks[idx&memPageMask]; c != nil && !b.Lend(at, c[in:in+n:in+n]) {
				copy(b.Buf[at:at+n], c[in:])
			}
			st.RUnlock()
		}
		if c == nil && (n > uint64(len(zeroes)) || !b.Lend(at, zeroes[:n:n])) {
			clear(b.Buf[at : at+n])
		}
		at += n
	}
}

func (m *Memory) write(buf []byte, off uint64) {
	// A WRITE bio's copy is a direct write whose head is all of it.
	m.WriteDirect(off, uint64(len(buf)), buf, nil)
}

// Direct returns m itself: its bytes are memory (see bioset.Direct).
func (m *Memory) Direct() bioset.Direct { return m }

// WriteDirect implements bioset.Direct. Each chunk is found, and
// allocated if it is a hole, under its stripe lock, and head's bytes are
// copied in under it, as a write does; fill then writes the rest of the
// chunk's piece with the lock dropped, since it may wait for a client's
// bytes. That gives up, for the bytes fill writes, what the lock gives a
// copy: a READ overlapping the write may see part of it, and a TRIM may
// free the chunk under fill, whose bytes then go with it. Both are orders
// NBD allows for overlapping requests in flight together, as with lent
// READ memory (see Memory and docs/DESIGN.md, "Direct writes").
func (m *Memory) WriteDirect(off, length uint64, head []byte, fill func(dst []byte) error) error {
	head = head[:min(uint64(len(head)), length)]
	for length > 0 {
		idx, in, n := m.piece(off, length)
		p := m.pageFor(idx)
		st := m.stripe(idx)
		st.Lock()
		c := p.chunks[idx&memPageMask]
		if c == nil {
			c = m.allocLocked(p, idx)
		}
		h := uint64(copy(c[in:in+n], head))
		st.Unlock()
		head = head[h:]
		if h < n {
			if err := fill(c[in+h : in+n : in+n]); err != nil {
				return err
			}
		}
		off, length = off+n, length-n
	}
	return nil
}

// allocLocked gives chunk idx, in page p, zeroed memory. The caller holds
// the chunk's stripe lock.
//
// A region's chunk that was freed before is cleared, even though its pages
// were handed back as zeros: a direct write's fill still in flight when the
// chunk was freed may have written them since (see chunkRegion). One never
// allocated is the kernel's zeros, and is not touched before the write: on
// a fresh device that spares a pass over every chunk. The chunk that
// completes a huge-page span collapses the span, once, under this lock: a
// copy of 2 MiB that only bios to this stripe wait for.
func (m *Memory) allocLocked(p *memPage, idx uint64) []byte {
	var c []byte
	if m.region == nil {
		c = make([]byte, m.chunk)
	} else {
		c = m.region.chunk(idx<<m.shift, m.chunk)
		w, bit := &p.freed[(idx&memPageMask)/64], uint64(1)<<(idx%64)
		if w.Load()&bit != 0 {
			clear(c)
			w.And(^bit)
		}
		if m.spanChunks != 0 {
			span := (idx & memPageMask) / m.spanChunks
			if p.spans[span].Add(1) == uint32(m.spanChunks) {
				m.region.collapse((idx &^ (m.spanChunks - 1)) << m.shift)
			}
		}
	}
	p.chunks[idx&memPageMask] = c
	m.allocated.Add(m.chunk)
	return c
}

// zero makes [off, off+length) read as zeroes: TRIM, and WRITE_ZEROES with
// keep set when NO_HOLE asks the range to stay allocated.
//
// Chunks wholly inside the range are freed (or, with keep, cleared or
// allocated). Chunks only partly inside are cleared in place rather than
// left alone: TRIM may leave data behind by the protocol, but doing so here
// would make what a read returns after a TRIM depend on chunk alignment,
// and tests and layered checks are simpler when it never does.
func (m *Memory) zero(off, length uint64, keep bool) {
	if keep {
		m.zeroKeep(off, length)
		return
	}
	end := off + length
	first := off >> m.shift // first chunk wholly inside
	if off&(m.chunk-1) != 0 {
		first++
	}
	last := end >> m.shift // one past the last
	tail := last << m.shift
	if end == m.size && end&(m.chunk-1) != 0 {
		// The device's last chunk extends past its end; covering
		// up to the end counts as covering it all.
		last++
		tail = end
	}
	if last <= first {
		m.clear(off, length)
		return
	}
	mid := first << m.shift
	m.clear(off, mid-off)
	m.freeRange(first, last)
	m.clear(tail, end-tail)
}

// freeRange frees chunks first up to last. A mkfs discards the whole device
// in multi-GiB pieces; skipping missing pages and directories whole makes
// that cost time in proportion to the table that exists, not to the range.
func (m *Memory) freeRange(first, last uint64) {
	for idx := first; idx < last; {
		p, holes := m.page(idx)
		if p == nil {
			if idx+holes < idx { // the hole reaches the end of the index space
				return
			}
			idx += holes
			continue
		}
		// To the end of the page or of the range, whichever is
		// first, without overflowing past the last index.
		stop := last
		if e := idx | memPageMask; e < last {
			stop = e + 1
		}
		m.freeInPage(p, idx, stop)
		idx = stop
	}
}

// freeInPage frees chunks lo up to hi, all in page p, taking each stripe
// lock once rather than once per chunk.
//
// Every one of those stripe locks is held at once, and a region's chunks
// are handed back to the kernel under them, in one call for the whole
// range: a chunk allocated and written between its free and the hand-back
// would lose the write. The locks are taken in stripe order, which is what
// keeps two TRIMs that start at different chunks from deadlocking; nothing
// else holds two.
func (m *Memory) freeInPage(p *memPage, lo, hi uint64) {
	n := min(hi-lo, memStripes)
	locked := func(s uint64) bool { return (s-lo%memStripes)%memStripes < n }
	for s := range uint64(memStripes) {
		if locked(s) {
			m.stripes[s].Lock()
		}
	}
	for idx := lo; idx < hi; idx++ {
		e := &p.chunks[idx&memPageMask]
		if *e == nil {
			continue
		}
		*e = nil
		m.allocated.Add(-m.chunk)
		if m.region != nil {
			p.freed[(idx&memPageMask)/64].Or(uint64(1) << (idx % 64))
		}
		if m.spanChunks != 0 {
			p.spans[(idx&memPageMask)/m.spanChunks].Add(^uint32(0))
		}
	}
	if m.region != nil {
		m.region.release(lo<<m.shift, (hi-lo)<<m.shift)
	}
	for s := range uint64(memStripes) {
		if locked(s) {
			m.stripes[s].Unlock()
		}
	}
}

// clear zeroes [off, off+length) in the chunks that hold it, in place;
// holes already read as zeros and stay holes.
func (m *Memory) clear(off, length uint64) {
	for length > 0 {
		idx, in, n := m.piece(off, length)
		if p, _ := m.page(idx); p != nil {
			st := m.stripe(idx)
			st.Lock()
			if c := p.chunks[idx&memPageMask]; c != nil {
				clear(c[in : in+n])
			}
			st.Unlock()
		}
		off, length = off+n, length-n
	}
}

// zeroKeep zeroes [off, off+length) leaving every chunk it touches
// allocated, as WRITE_ZEROES with NO_HOLE asks. It visits every chunk index:
// the memory it allocates grows with the range anyway.
func (m *Memory) zeroKeep(off, length uint64) {
	for length > 0 {
		idx, in, n := m.piece(off, length)
		p := m.pageFor(idx)
		st := m.stripe(idx)
		st.Lock()
		if c := p.chunks[idx&memPageMask]; c != nil {
			clear(c[in : in+n])
		} else {
			m.allocLocked(p, idx)
		}
		st.Unlock()
		off, length = off+n, length-n
	}
}

func (m *Memory) blockStatus(b *bioset.Bio) {
	f := newExtentFill(b)
	if m.allocated.Load() == 0 {
		// Nothing to look up: spare a walk over pages left empty by
		// a TRIM of everything.
		f.add(b.Length, holeZero)
		return
	}
	off, length := b.Offset, b.Length
	for length > 0 {
		idx, _, n := m.piece(off, length)
		flags := holeZero
		if p, holes := m.page(idx); p == nil {
			// A missing page or directory: report all of its
			// span that the request covers in one step, so that
			// an empty terabyte costs a few lookups, not one per
			// chunk.
			if rest := length - n; holes-1 > rest>>m.shift {
				n = length
			} else {
				n += (holes - 1) << m.shift
			}
		} else {
			st := m.stripe(idx)
			st.RLock()
			if p.chunks[idx&memPageMask] != nil {
				flags = 0
			}
			st.RUnlock()
		}
		if !f.add(n, flags) {
			return
		}
		off, length = off+n, length-n
	}
}
