package targets

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// chunkRegion holds a Memory target's chunks in one anonymous mapping the
// size of the device, each chunk at a fixed place in it (chunk i at i times
// the chunk size), rather than one Go allocation per chunk. The mapping is
// reserved, not committed (MAP_NORESERVE): the kernel backs a page when it
// is first written, so a huge device still costs nothing until used.
//
// Having the chunks where the kernel sees them as one range buys two
// things:
//
//   - Huge pages. A 1 GiB device in 4 KiB pages is 262144 TLB entries, so
//     almost every copy into a chunk or out of it (the kernel's, for a
//     direct write or a lent READ) walks the page tables from memory. Once
//     every chunk of a 2 MiB span is allocated, the span is collapsed into
//     one huge page (MADV_COLLAPSE): a full 1 GiB device is then 512
//     entries. A span is collapsed only once full because a huge page
//     faulted in on first touch (MADV_HUGEPAGE) would pin 2 MiB for a
//     4 KiB write: scattered writes, a mkfs's, would cost up to 32 times
//     the memory of their 64 KiB chunks. Chunks of 2 MiB or more are whole
//     huge pages, so for them the mapping asks for huge pages at fault.
//   - Memory handed back at once: a freed chunk's pages return to the
//     kernel (MADV_DONTNEED), not to the Go heap to wait for a collection.
//
// Invariant: a chunk's memory is the same bytes for the region's life. A
// loan or a direct write's fill that outlives a TRIM of its chunk therefore
// reads or writes only that chunk's own range, never another offset's
// data; what such a race may show is the subject of docs/DESIGN.md,
// "Lending" and "Direct writes". The price is that a freed chunk's memory
// may be written after it was freed (by such a fill), so a chunk is
// cleared when it is allocated again (Memory.allocLocked).
//
// Where the mapping cannot be made (a device over maxRegion, strict
// overcommit, an address-space limit), NewMemory takes chunks from the
// Go heap.
type chunkRegion struct {
	mem []byte // the mapping, from a hugePageSize boundary on
	// whole is the mapping as mmap returned it, for munmap.
	whole []byte
	// noCollapse is set once MADV_COLLAPSE has failed as unsupported (a
	// kernel before 6.1, or THP disabled): the spans stay in small pages.
	noCollapse atomic.Bool
	collapsed  atomic.Uint64 // spans collapsed, for tests
	unmapped   atomic.Bool
}

// maxRegion is the largest region mapped: half of x86-64's 128 TiB of user
// address space, so that one huge sparse device cannot leave the Go heap
// none to grow into. Larger devices take their chunks from the heap.
const maxRegion = 1 << 46

// hugePageSize is the x86-64 and arm64 (4 KiB granule) transparent huge
// page: the unit a span of chunks is collapsed into.
const hugePageSize = 2 << 20

// mapChunkRegion reserves a region for size bytes of chunks of chunk bytes,
// or returns nil where it cannot.
func mapChunkRegion(size, chunk uint64) *chunkRegion {
	// Rounded up to whole chunks, so that a short last chunk is whole
	// too, and to whole huge pages; plus one huge page to align the
	// start.
	unit := max(chunk, hugePageSize)
	n := (max(size, 1)+unit-1)/unit*unit + hugePageSize
	if n < size || n > maxRegion {
		return nil
	}
	whole, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil
	}
	skip := uint64(0)
	if mis := uintptr(unsafe.Pointer(&whole[0])) % hugePageSize; mis != 0 {
		skip = uint64(hugePageSize - mis)
	}
	r := &chunkRegion{whole: whole, mem: whole[skip : skip+n-hugePageSize]}
	if chunk >= hugePageSize {
		// Best effort: without it the chunks are small pages, as on
		// the heap.
		unix.Madvise(r.mem, unix.MADV_HUGEPAGE)
	}
	return r
}

// chunk returns the n bytes at off: a chunk, or a span of chunks.
func (r *chunkRegion) chunk(off, n uint64) []byte {
	return r.mem[off : off+n : off+n]
}

// release hands the whole pages inside [off, off+n) back to the kernel;
// they read as zeros from then on, until written. Only whole pages: the
// kernel would drop all of a page partly outside, and with it the bytes of
// chunks smaller than a page that are still allocated. The caller holds the
// stripe locks of every chunk in the range, so that no chunk there is
// allocated and written meanwhile, which would lose that write.
func (r *chunkRegion) release(off, n uint64) {
	start := (off + osPageSize - 1) &^ (osPageSize - 1)
	end := (off + n) &^ (osPageSize - 1)
	if start < end {
		unix.Madvise(r.chunk(start, end-start), unix.MADV_DONTNEED)
	}
}

// osPageSize is the kernel's page: what madvise works in.
var osPageSize = uint64(unix.Getpagesize())

// collapse makes the huge-page span at off (a multiple of hugePageSize)
// one huge page, best effort: it costs a copy of the span, once, and is
// skipped where the kernel cannot do it.
func (r *chunkRegion) collapse(off uint64) {
	if r.noCollapse.Load() {
		return
	}
	switch err := unix.Madvise(r.chunk(off, hugePageSize), unix.MADV_COLLAPSE); err {
	case nil:
		r.collapsed.Add(1)
	case unix.EINVAL, unix.EPERM:
		// No MADV_COLLAPSE in this kernel, or THP off for us.
		r.noCollapse.Store(true)
	default:
		// EAGAIN or ENOMEM: no huge page to be had now. The span
		// stays in small pages, which is only slower.
	}
}

// unmap returns the whole region to the kernel, once.
func (r *chunkRegion) unmap() {
	if r.unmapped.CompareAndSwap(false, true) {
		unix.Munmap(r.whole)
	}
}
