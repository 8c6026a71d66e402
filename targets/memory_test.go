package targets

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/stackd/stackd/bioset"
)

const hz = bioset.ExtentHole | bioset.ExtentZero

func TestMemoryModel(t *testing.T) {
	for _, c := range []struct {
		name        string
		size, chunk uint64
	}{
		{"4KiB-chunks", 1<<20 + 1234, 4096},
		{"512B-chunks", 256<<10 + 7, 512},
		{"default-chunks", 2<<20 + 4096, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := NewMemory(c.size, c.chunk)
			defer m.Close()
			exerciseModel(t, m, modelOpts{ops: 1500, maxLen: 3 * max(c.chunk, 4096) * 4, trimZeroes: true, seed: c.size})
			chunk := c.chunk
			if chunk == 0 {
				chunk = DefaultMemoryChunk
			}
			if max := (c.size + chunk - 1) / chunk * chunk; m.Allocated() > max {
				t.Fatalf("Allocated %d > %d", m.Allocated(), max)
			}
		})
	}
}

func TestMemoryOutOfRange(t *testing.T) {
	m := NewMemory(1<<20, 0)
	checkOutOfRange(t, m)
	if m.Allocated() != 0 {
		t.Fatalf("rejected bios allocated %d bytes", m.Allocated())
	}
}

func TestMemoryHuge(t *testing.T) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	m := NewMemory(1<<40, 0)
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	if elapsed > 50*time.Millisecond {
		t.Fatalf("creating a 1 TiB memory target took %v", elapsed)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
		t.Fatalf("creating a 1 TiB memory target allocated %d bytes", d)
	}
	if m.Allocated() != 0 || m.Size() != 1<<40 {
		t.Fatalf("Allocated %d, Size %d", m.Allocated(), m.Size())
	}
	if got := read(t, m, 1<<39, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("unwritten memory does not read zero")
	}
	wantExtents(t, blockStatus(t, m, 0, 1<<32-1, 4, 0), ext(0, 1<<32-1, hz))
	data := bytes.Repeat([]byte{7}, 4096)
	write(t, m, 1<<40-4096, data)
	if !bytes.Equal(read(t, m, 1<<40-4096, 4096), data) {
		t.Fatal("round trip at the end of 1 TiB failed")
	}
	if m.Allocated() != DefaultMemoryChunk {
		t.Fatalf("Allocated %d after one 4 KiB write, want one chunk", m.Allocated())
	}
	mustDo(t, m, bioset.OpTrim, 0, 0, 1<<40-1, nil) // a huge TRIM is fine, and leaves the last byte
	mustDo(t, m, bioset.OpTrim, 0, 1<<40-DefaultMemoryChunk, DefaultMemoryChunk, nil)
	if m.Allocated() != 0 {
		t.Fatalf("Allocated %d after trimming everything", m.Allocated())
	}
}

func TestMemoryTrimAndZero(t *testing.T) {
	const c = 4096
	m := NewMemory(16*c, c)
	all := bytes.Repeat([]byte{0xee}, 16*c)
	write(t, m, 0, all)
	if m.Allocated() != 16*c {
		t.Fatalf("Allocated %d, want %d", m.Allocated(), 16*c)
	}

	// TRIM from the middle of chunk 2 to the middle of chunk 6: chunks
	// 3..5 are freed, the partial edges zeroed in place.
	mustDo(t, m, bioset.OpTrim, 0, 2*c+100, 4*c, nil)
	if m.Allocated() != 13*c {
		t.Fatalf("Allocated %d after trim, want %d", m.Allocated(), 13*c)
	}
	want := bytes.Clone(all)
	clear(want[2*c+100 : 6*c+100])
	if !bytes.Equal(read(t, m, 0, 16*c), want) {
		t.Fatal("trimmed range does not read zero, or trim touched its neighbours")
	}
	wantExtents(t, blockStatus(t, m, 0, 16*c, 8, 0),
		ext(0, 3*c, 0), ext(3*c, 3*c, hz), ext(6*c, 10*c, 0))

	// WRITE_ZEROES without NO_HOLE frees whole chunks too.
	mustDo(t, m, bioset.OpWriteZeroes, 0, 8*c, 2*c, nil)
	if m.Allocated() != 11*c {
		t.Fatalf("Allocated %d after write zeroes, want %d", m.Allocated(), 11*c)
	}
	// With NO_HOLE it keeps allocated chunks and allocates missing ones.
	mustDo(t, m, bioset.OpWriteZeroes, bioset.FlagNoHole|bioset.FlagFastZero, 3*c, 7*c, nil)
	if m.Allocated() != 16*c {
		t.Fatalf("Allocated %d after NO_HOLE write zeroes, want %d", m.Allocated(), 16*c)
	}
	clear(want[3*c : 10*c])
	if !bytes.Equal(read(t, m, 0, 16*c), want) {
		t.Fatal("zeroed range does not read zero")
	}
	wantExtents(t, blockStatus(t, m, 0, 16*c, 8, 0), ext(0, 16*c, 0))

	// A NO_HOLE zero of part of an unallocated chunk allocates it.
	mustDo(t, m, bioset.OpTrim, 0, 0, 16*c, nil)
	mustDo(t, m, bioset.OpWriteZeroes, bioset.FlagNoHole, c+10, 10, nil)
	if m.Allocated() != c {
		t.Fatalf("Allocated %d, want one chunk", m.Allocated())
	}
	// Without NO_HOLE, an unallocated partial chunk stays unallocated.
	mustDo(t, m, bioset.OpWriteZeroes, 0, 5*c+10, 10, nil)
	if m.Allocated() != c {
		t.Fatalf("Allocated %d, want one chunk", m.Allocated())
	}
}

// The device's last chunk may be cut short by its size; trimming to the
// end of the device still frees it.
func TestMemoryShortLastChunk(t *testing.T) {
	m := NewMemory(10000, 4096)
	write(t, m, 9000, make([]byte, 1000))
	mustDo(t, m, bioset.OpTrim, 0, 8192, 10000-8192, nil)
	if m.Allocated() != 0 {
		t.Fatalf("Allocated %d, want 0", m.Allocated())
	}
	wantExtents(t, blockStatus(t, m, 100, 9900, 2, 5), ext(5, 9900, hz))

	// A device shorter than its one chunk, which is larger than a huge
	// page: the region holds the whole chunk.
	big := NewMemory(5<<20, 16<<20)
	defer big.Close()
	write(t, big, 5<<20-3, []byte{1, 2, 3})
	if got := read(t, big, 5<<20-4, 4); !bytes.Equal(got, []byte{0, 1, 2, 3}) {
		t.Fatalf("read back %v", got)
	}
}

func TestMemoryBlockStatus(t *testing.T) {
	const c = 4096
	m := NewMemory(32*c, c)
	// Layout, in chunks: D D H D H H D H...
	write(t, m, 0, make([]byte, 2*c))
	write(t, m, 3*c+5, []byte{1})
	write(t, m, 6*c, []byte{1})

	wantExtents(t, blockStatus(t, m, 0, 32*c, 16, 0),
		ext(0, 2*c, 0), ext(2*c, c, hz), ext(3*c, c, 0), ext(4*c, 2*c, hz), ext(6*c, c, 0), ext(7*c, 25*c, hz))

	// TopOffset: results are in the top device's coordinates.
	const base = 1 << 33
	wantExtents(t, blockStatus(t, m, c+100, 3*c, 16, base),
		ext(base, c-100, 0), ext(base+c-100, c, hz), ext(base+2*c-100, c, 0), ext(base+3*c-100, 100, hz))

	// Slot limit: stop early, covering less than asked.
	wantExtents(t, blockStatus(t, m, 0, 32*c, 1, 0), ext(0, 2*c, 0))
	wantExtents(t, blockStatus(t, m, 0, 32*c, 2, 0), ext(0, 2*c, 0), ext(2*c, c, hz))
	wantExtents(t, blockStatus(t, m, 0, 32*c, 0, 0))

	// Unaligned ranges are clipped to the request.
	wantExtents(t, blockStatus(t, m, 10, 20, 3, 0), ext(0, 20, 0))
	wantExtents(t, blockStatus(t, m, 2*c+1, c, 3, 7), ext(7, c-1, hz), ext(7+c-1, 1, 0))
}

// TestMemoryLends: a READ offered a loan table gets the allocated chunks'
// bytes lent, in place, and zeroes copied for holes; past the table's
// capacity the target copies.
func TestMemoryLends(t *testing.T) {
	const c = 4096
	m := NewMemory(256*c, c)
	defer m.Close()
	data := make([]byte, 256*c)
	for i := range data {
		data[i] = byte(i*13 + i>>12)
	}
	// Chunks 0-1 and 3 written, 2 a hole, 4-99 written.
	write(t, m, 0, data[:2*c])
	write(t, m, 3*c, data[3*c:100*c])
	clear(data[2*c : 3*c])
	clear(data[100*c:])

	// From the middle of chunk 1 to the middle of chunk 3: chunk 1's
	// tail, the shared zeroes for the hole, and chunk 3's head, all lent.
	buf, lent := readLending(t, m, c+100, 2*c+200)
	want := [][2]uint64{{0, c - 100}, {c - 100, c}, {2*c - 100, 300}}
	if got := loanRanges(lent); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("loans at %v, want %v", got, want)
	}
	if !bytes.Equal(lent[0].Data, data[c+100:2*c]) || !bytes.Equal(lent[2].Data, data[3*c:3*c+300]) {
		t.Fatal("lent bytes are not the chunks' contents")
	}
	if &lent[1].Data[0] != &zeroes[0] {
		t.Fatal("the hole was not lent from the shared zeroes")
	}
	if !bytes.Equal(buf, bytes.Repeat([]byte{0xa5}, len(buf))) {
		t.Fatal("the target wrote into the buffer though it lent everything")
	}

	// 96 allocated chunks: the first 32 lent (a full table), the rest
	// copied.
	buf, lent = readLending(t, m, 4*c, 96*c)
	if len(lent) != 32 {
		t.Fatalf("%d loans, want a full table of 32", len(lent))
	}
	for _, l := range lent {
		copy(buf[l.Pos:], l.Data)
	}
	if !bytes.Equal(buf, data[4*c:100*c]) {
		t.Fatal("lent and copied pieces together differ from what was written")
	}

	// 32 allocated chunks fill the table; the holes after them are
	// cleared in the buffer.
	buf, lent = readLending(t, m, 68*c, 42*c)
	if len(lent) != 32 || lent[31].Pos != 31*c {
		t.Fatalf("loans at %v, want the 32 allocated chunks", loanRanges(lent))
	}
	if !bytes.Equal(buf[32*c:], make([]byte, 10*c)) {
		t.Fatal("holes past a full table were not zeroed in the buffer")
	}
}

func loanRanges(loans []bioset.Loan) [][2]uint64 {
	var r [][2]uint64
	for _, l := range loans {
		r = append(r, [2]uint64{l.Pos, uint64(len(l.Data))})
	}
	return r
}

// Overlapping concurrent I/O: the race detector must stay quiet, and each
// goroutine's private region must read back what it wrote.
func TestMemoryConcurrent(t *testing.T) {
	const c = 4096
	m := NewMemory(64*c, c)
	var wg sync.WaitGroup
	var failed atomic.Bool
	for g := range 8 {
		wg.Go(func() {
			own := uint64(g) * 4 * c // private, 4 chunks, unaligned below
			data := bytes.Repeat([]byte{byte(g + 1)}, 3*c)
			buf := make([]byte, 3*c)
			for i := range 50 {
				var b bioset.Bio
				var s bioset.Submitter
				b.Init(bioset.OpWrite, own+100, 3*c, data, nil)
				b.Dev = m
				s.Submit(&b)
				b.Init(bioset.OpRead, own+100, 3*c, buf, nil)
				b.Dev = m
				s.Submit(&b)
				if !bytes.Equal(buf, data) {
					failed.Store(true)
				}
				// Shared region: everyone scribbles over the same chunks.
				b.Init(bioset.OpWrite, 40*c+uint64(i*37), 3*c, data, nil)
				b.Dev = m
				s.Submit(&b)
				if i%2 == 0 {
					b.Init(bioset.OpTrim, 40*c, 8*c, nil, nil)
				} else {
					b.Init(bioset.OpRead, 40*c, 3*c, buf, nil)
				}
				b.Dev = m
				s.Submit(&b)
			}
		})
	}
	wg.Wait()
	if failed.Load() {
		t.Fatal("a private region read back something else")
	}
}

// nopEnd ends a bio whose result the caller reads from the bio itself.
func nopEnd(*bioset.Bio) {}

func TestMemoryZeroAllocs(t *testing.T) {
	m := NewMemory(1<<20, 0)
	buf := make([]byte, 4096)
	var b bioset.Bio
	var s bioset.Submitter
	run := func(op bioset.Op, off uint64) {
		b.Init(op, off, 4096, buf, nopEnd)
		b.Dev = m
		s.Submit(&b)
		if b.Err() != nil {
			t.Fatal(b.Err())
		}
	}
	for off := uint64(0); off < 1<<20; off += 4096 {
		run(bioset.OpWrite, off) // allocate every chunk first
	}
	var off uint64
	step := func() { off = (off + 4096*7 + 512) % (1<<20 - 4096) }
	for _, op := range []bioset.Op{bioset.OpWrite, bioset.OpRead} {
		if n := testing.AllocsPerRun(200, func() { run(op, off); step() }); n != 0 {
			t.Errorf("%v of allocated chunks: %v allocations per bio, want 0", op, n)
		}
	}
	if n := testing.AllocsPerRun(200, func() {
		b.Init(bioset.OpBlockStatus, off, 1<<18, nil, nopEnd)
		b.Dev = m
		s.Submit(&b)
		b.Init(bioset.OpFlush, 0, 0, nil, nopEnd)
		b.Dev = m
		s.Submit(&b)
		step()
	}); n != 0 {
		t.Errorf("block status and flush: %v allocations, want 0", n)
	}
}

func BenchmarkMemoryWrite4K(b *testing.B) { benchTarget(b, NewMemory(64<<20, 0), bioset.OpWrite) }
func BenchmarkMemoryRead4K(b *testing.B)  { benchTarget(b, NewMemory(64<<20, 0), bioset.OpRead) }
func BenchmarkNullRead4K(b *testing.B)    { benchTarget(b, NewNull(64<<20), bioset.OpRead) }

// benchTarget measures 4 KiB bios on a target that ends them inline, over
// a region written once beforehand so that memory measures steady state.
func benchTarget(b *testing.B, dev device, op bioset.Op) {
	defer dev.Close()
	size := dev.Size()
	buf := make([]byte, 4096)
	var bio bioset.Bio
	var s bioset.Submitter
	for off := uint64(0); off < size; off += uint64(len(buf)) {
		bio.Init(bioset.OpWrite, off, 4096, buf, nopEnd)
		bio.Dev = dev
		s.Submit(&bio)
	}
	b.ReportAllocs()
	b.SetBytes(4096)
	var off uint64
	for b.Loop() {
		bio.Init(op, off, 4096, buf, nopEnd)
		bio.Dev = dev
		s.Submit(&bio)
		off = (off + 4096*13) % size
	}
	if bio.Err() != nil {
		b.Fatal(bio.Err())
	}
}

// A TRIM spanning more chunks than are allocated sweeps the maps instead of
// visiting every index; it must free and zero exactly what the per-chunk
// walk would.
func TestMemorySweepTrim(t *testing.T) {
	const c = 4096
	const size = 1 << 36 // 16M chunks: a per-index walk would be slow
	m := NewMemory(size, c)
	mark := []byte{1, 2, 3}
	spots := []uint64{0, 5*c - 1, 1 << 30, 1<<35 + 17, size - 3}
	for _, off := range spots {
		write(t, m, off, mark)
	}
	start := time.Now()
	// From inside chunk 5 to inside the chunk holding 1<<35+17.
	lo, hi := uint64(5*c+1), uint64(1<<35+18)
	mustDo(t, m, bioset.OpTrim, 0, lo, hi-lo, nil)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("sweeping trim took %v", d)
	}
	for _, off := range spots {
		got := read(t, m, off, 3)
		for i := range got {
			want := mark[i]
			if p := off + uint64(i); p >= lo && p < hi {
				want = 0
			}
			if got[i] != want {
				t.Fatalf("byte %d: got %d, want %d", off+uint64(i), got[i], want)
			}
		}
	}
	// Chunks 0, 4, 5 (partial edge, kept), the one at 1<<35 (partial
	// edge, kept) and the last survive; the one at 1<<30 is freed.
	if m.Allocated() != 5*c {
		t.Fatalf("Allocated %d, want %d", m.Allocated(), 5*c)
	}
	// Trimming to the device end frees the last chunks through the sweep.
	mustDo(t, m, bioset.OpTrim, 0, 8*c, size-8*c, nil)
	if m.Allocated() != 3*c {
		t.Fatalf("Allocated %d, want %d", m.Allocated(), 3*c)
	}
}

// heapInUse returns the live heap after a full collection, so that two
// readings differ by what the code between them still references.
func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// tableSize is m's table beyond the top directory of dirs directories and
// pages pages.
func tableSize(m *Memory, dirs, pages uint64) uint64 {
	return dirs*memDirBytes + pages*m.pageBytes()
}

// The table's sizes as tableBytes counts them are the real ones, and a
// stripe fills a cache line.
func TestMemoryTableSizes(t *testing.T) {
	if s := unsafe.Sizeof(memPage{}); s != memPageBytes {
		t.Errorf("a page is %d bytes, memPageBytes %d", s, memPageBytes)
	}
	if s := unsafe.Sizeof([memDirLen]atomic.Pointer[memDir]{}); s != memDirBytes {
		t.Errorf("a directory is %d bytes, memDirBytes %d", s, memDirBytes)
	}
	if s := unsafe.Sizeof(memStripe{}); s != 64 {
		t.Errorf("a stripe is %d bytes, want a 64-byte cache line", s)
	}
}

// A 1 TiB target written in a few scattered places holds those chunks, one
// table page for each, and next to nothing else; TRIM gives the chunks back.
// On the heap the chunks are part of the heap; in a region they are the
// region's resident pages, and nothing around them is.
func TestMemoryTableSparse(t *testing.T) {
	for _, onHeap := range []bool{false, true} {
		t.Run(fmt.Sprintf("heap=%v", onHeap), func(t *testing.T) {
			testMemoryTableSparse(t, onHeap)
		})
	}
}

func testMemoryTableSparse(t *testing.T, onHeap bool) {
	before := heapInUse()
	m := NewMemory(1<<40, 0)
	if onHeap {
		m.dropRegion()
	} else if m.region == nil {
		t.Fatal("no region for a 1 TiB target")
	}
	if m.tableBytes.Load() != 0 {
		t.Fatalf("a new target has %d bytes of table pages", m.tableBytes.Load())
	}
	const n = 64
	data := bytes.Repeat([]byte{9}, 4096)
	at := func(i uint64) uint64 {
		// 16 GiB apart: every write lands in a page of its own.
		return i<<34 + i*4096*17
	}
	for i := range uint64(n) {
		write(t, m, at(i), data)
	}
	if m.Allocated() != n*DefaultMemoryChunk {
		t.Fatalf("Allocated %d, want %d", m.Allocated(), n*DefaultMemoryChunk)
	}
	// 1 TiB of 64 KiB chunks: a top of 8 directories, each of 4096
	// pages; the writes touch every directory.
	if want := tableSize(m, 8, n); m.tableBytes.Load() != want {
		t.Fatalf("%d bytes of table, want %d", m.tableBytes.Load(), want)
	}
	// The chunks written and their neighbours, in the region: of a
	// chunk never allocated before, only the page written is resident
	// (allocLocked leaves the kernel's zeros alone), and of the chunk
	// after it nothing.
	resident := func(want uint64) {
		t.Helper()
		if m.region == nil {
			return
		}
		for i := range uint64(n) {
			c := at(i) &^ (DefaultMemoryChunk - 1)
			if got := residentBytes(t, m.region.chunk(c, DefaultMemoryChunk)); got != want {
				t.Fatalf("chunk at %d: %d bytes resident, want %d", c, got, want)
			}
			if got := residentBytes(t, m.region.chunk(c+DefaultMemoryChunk, DefaultMemoryChunk)); got != 0 {
				t.Fatalf("chunk after %d, never written: %d bytes resident", c, got)
			}
		}
	}
	resident(uint64(len(data)))
	// The stripes and the top directory, test garbage that survives a
	// GC, and garbage from before the test that does not.
	const slack = 32<<10 + 256<<10
	want := int64(m.tableBytes.Load())
	if onHeap {
		want += int64(m.Allocated())
	}
	if held := heapInUse() - before; held < want-slack || held > want+slack {
		t.Fatalf("heap grew by %d bytes holding %d in pages (and chunks on the heap)", held, want)
	}
	mustDo(t, m, bioset.OpTrim, 0, 0, 1<<40, nil)
	if m.Allocated() != 0 {
		t.Fatalf("Allocated %d after trimming everything", m.Allocated())
	}
	resident(0)
	if held := heapInUse() - before; held > int64(m.tableBytes.Load())+slack {
		t.Fatalf("heap still %d bytes over after trimming everything", held)
	}
	m.Close()
	if held := heapInUse() - before; held > slack {
		t.Fatalf("heap still %d bytes over after Close", held)
	}
	runtime.KeepAlive(m)
}

// residentBytes is how much of b, which is page-aligned, the kernel has
// backed with memory (mincore(2)).
func residentBytes(t *testing.T, b []byte) uint64 {
	t.Helper()
	vec := make([]byte, (uint64(len(b))+osPageSize-1)/osPageSize)
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	n := uint64(0)
	for _, v := range vec {
		n += uint64(v & 1)
	}
	return n * osPageSize
}

// Pages come into being only when a chunk in their span is written; reads,
// BLOCK_STATUS and hole-punching zeroes of holes allocate none.
func TestMemoryTableLazyPages(t *testing.T) {
	span := uint64(memPageLen * DefaultMemoryChunk) // the bytes one page covers
	m := NewMemory(1<<40, 0)
	defer m.Close()
	pages := func(want uint64) {
		t.Helper()
		// All the writes below are in the first directory's span.
		if got := m.tableBytes.Load(); got != tableSize(m, min(want, 1), want) {
			t.Fatalf("%d bytes of table, want %d pages", got, want)
		}
	}
	read(t, m, 3*span+100, 1<<20)
	blockStatus(t, m, 0, 1<<40, 4, 0)
	mustDo(t, m, bioset.OpTrim, 0, span-4096, 3*span, nil)
	mustDo(t, m, bioset.OpWriteZeroes, 0, 5*span+7, 3*DefaultMemoryChunk, nil)
	pages(0)
	write(t, m, 0, []byte{1})
	pages(1)
	write(t, m, span-1, []byte{1})
	pages(1)
	write(t, m, span-1, []byte{1, 2}) // straddles into the next page
	pages(2)
	mustDo(t, m, bioset.OpWriteZeroes, bioset.FlagNoHole, 7*span, 1, nil)
	pages(3)
	mustDo(t, m, bioset.OpTrim, 0, 0, 1<<40, nil)
	pages(3) // kept: see memPage
	if m.Allocated() != 0 {
		t.Fatalf("Allocated %d", m.Allocated())
	}
	wantExtents(t, blockStatus(t, m, 0, 1<<40, 4, 0), ext(0, 1<<40, hz))
}

// The largest device a configuration allows (8 EiB less one byte for the
// export, rounded down to 512) with the smallest chunk it allows (4 KiB)
// needs the deepest table: still instant and nearly free to create, and a
// whole-device BLOCK_STATUS or TRIM costs time in proportion to what was
// written, not to the size.
func TestMemoryLargestDevice(t *testing.T) {
	const size = 1<<63 - 512
	const c = 4096
	const last = size &^ (c - 1) // the short last chunk
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	m := NewMemory(size, c)
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	defer m.Close()
	if elapsed > 50*time.Millisecond {
		t.Fatalf("creating an 8 EiB memory target took %v", elapsed)
	}
	// The stripe locks and a 64-entry top directory.
	if d := after.TotalAlloc - before.TotalAlloc; d > 32<<10 {
		t.Fatalf("creating an 8 EiB memory target allocated %d bytes", d)
	}
	start = time.Now()
	write(t, m, 0, []byte{1, 2, 3})
	write(t, m, 1<<62+c-6, []byte{4, 5, 6, 7, 8, 9, 10, 11, 12, 13}) // two chunks
	write(t, m, size-3, []byte{14, 15, 16})                          // the short last chunk
	if m.Allocated() != 4*c {
		t.Fatalf("Allocated %d, want %d", m.Allocated(), 4*c)
	}
	// Three paths from the top: three directories and a page each.
	if want := tableSize(m, 9, 3); m.tableBytes.Load() != want {
		t.Fatalf("%d bytes of table, want %d", m.tableBytes.Load(), want)
	}
	if got := read(t, m, 1<<62+c-8, 14); !bytes.Equal(got, []byte{0, 0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0, 0}) {
		t.Fatalf("read back %v", got)
	}
	if got := read(t, m, size-5, 5); !bytes.Equal(got, []byte{0, 0, 14, 15, 16}) {
		t.Fatalf("read back %v at the end", got)
	}
	wantExtents(t, blockStatus(t, m, 0, size, 8, 0),
		ext(0, c, 0), ext(c, 1<<62-c, hz), ext(1<<62, 2*c, 0),
		ext(1<<62+2*c, last-(1<<62+2*c), hz), ext(last, size-last, 0))
	mustDo(t, m, bioset.OpWriteZeroes, 0, 1<<62+c-6, 6, nil) // partial: in place
	if m.Allocated() != 4*c {
		t.Fatalf("Allocated %d after a partial zero, want %d", m.Allocated(), 4*c)
	}
	mustDo(t, m, bioset.OpTrim, 0, 0, size, nil)
	if m.Allocated() != 0 {
		t.Fatalf("Allocated %d after trimming everything", m.Allocated())
	}
	wantExtents(t, blockStatus(t, m, 0, size, 8, 0), ext(0, size, hz))
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a few bios on an 8 EiB target took %v", d)
	}
}

// BLOCK_STATUS and TRIM skip a missing page or directory whole, from
// wherever in its span they start: the skip must end exactly where the
// next subtree, which may hold data, begins.
func TestMemoryHoleSkip(t *testing.T) {
	const c = 4096
	pageSpan := uint64(memPageLen * c)
	for _, d := range []struct {
		size  uint64
		edges []uint64 // starts of a page, of directories, of a top entry
	}{
		{1 << 40, []uint64{pageSpan, memDirLen * pageSpan, 9 * memDirLen * pageSpan}},
		{1<<63 - 512, []uint64{pageSpan, memDirLen * pageSpan, memDirLen * memDirLen * pageSpan, 5 << 60}},
	} {
		for _, e := range d.edges {
			for _, from := range []uint64{e - pageSpan/2 - 512, e - 3*c, e - 512, e/2 + 512} {
				m := NewMemory(d.size, c)
				write(t, m, e, []byte{1})
				wantExtents(t, blockStatus(t, m, from, e-from+2*c, 4, 0),
					ext(0, e-from, hz), ext(e-from, c, 0), ext(e-from+c, c, hz))
				mustDo(t, m, bioset.OpTrim, 0, from, e-from+c, nil)
				if m.Allocated() != 0 {
					t.Fatalf("size %d: a TRIM from %d over a missing subtree did not free the chunk at %d", d.size, from, e)
				}
				m.Close()
			}
		}
	}
}

// memWindow is a window of a memory target seen as a device of its own,
// so that the flat-model checks can run near table boundaries of a device
// far too large to model whole.
type memWindow struct {
	m          *Memory
	base, size uint64
}

func (w *memWindow) Submit(s *bioset.Submitter, b *bioset.Bio) {
	b.Offset += w.base
	b.Dev = w.m
	s.Submit(b)
}

func (w *memWindow) Size() uint64      { return w.size }
func (w *memWindow) Caps() bioset.Caps { return w.m.Caps() }
func (w *memWindow) Close() error      { return nil }

// Random I/O across the places where deep tables change page, directory
// and top entry, and at a short last chunk; afterwards Allocated counts
// exactly the chunks BLOCK_STATUS reports.
func TestMemoryDeepTableModel(t *testing.T) {
	const c = 4096
	const w = 64 << 10 // half a window
	pageSpan := uint64(memPageLen * c)
	for _, d := range []struct {
		name  string
		size  uint64
		edges []uint64 // window centres; the device end gets one anyway
	}{
		// 2^28 chunks: top, one directory level, pages.
		{"1TiB", 1 << 40, []uint64{pageSpan, memDirLen * pageSpan, 5*memDirLen*pageSpan + 3*pageSpan}},
		// 2^51 chunks, the last one short: top and three directory levels.
		{"8EiB", 1<<63 - 512, []uint64{pageSpan, memDirLen * memDirLen * pageSpan, 1 << 60, 7 << 60}},
	} {
		t.Run(d.name, func(t *testing.T) {
			m := NewMemory(d.size, c)
			defer m.Close()
			var windows []*memWindow
			for _, e := range d.edges {
				windows = append(windows, &memWindow{m, e - w, 2 * w})
			}
			windows = append(windows, &memWindow{m, d.size - 2*w - 100, 2*w + 100})
			for i, win := range windows {
				exerciseModel(t, win, modelOpts{ops: 600, maxLen: 12 * c, trimZeroes: true, seed: uint64(i)})
			}
			exts := blockStatus(t, m, 0, d.size, 1024, 0)
			var data uint64
			for _, e := range exts {
				if e.Flags != 0 {
					continue
				}
				if e.Offset%c != 0 {
					t.Fatalf("data extent %+v does not start a chunk", e)
				}
				in := false
				for _, win := range windows {
					in = in || e.Offset >= win.base&^(c-1) && e.Offset+e.Length <= win.base+win.size+c
				}
				if !in {
					t.Fatalf("data extent %+v outside every window", e)
				}
				data += (e.Length + c - 1) / c
			}
			if ext := exts[len(exts)-1]; ext.Offset+ext.Length != d.size {
				t.Fatalf("block status ran out of slots: %v", exts)
			}
			if m.Allocated() != data*c {
				t.Fatalf("Allocated %d, BLOCK_STATUS reports %d chunks", m.Allocated(), data)
			}
		})
	}
}

// Writers racing to create the same chunks agree on one each: every write
// survives and Allocated counts each chunk once.
func TestMemoryConcurrentAllocate(t *testing.T) {
	const chunks, g = 256, 8
	m := NewMemory(chunks*DefaultMemoryChunk, 0)
	defer m.Close()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range g {
		wg.Go(func() {
			data := bytes.Repeat([]byte{byte(i + 1)}, 4096)
			<-start
			var b bioset.Bio
			var s bioset.Submitter
			for k := range uint64(chunks) {
				// The same chunks in the same order: each one's
				// first writers collide.
				b.Init(bioset.OpWrite, k*DefaultMemoryChunk+uint64(i)*4096, 4096, data, nopEnd)
				b.Dev = m
				s.Submit(&b)
			}
		})
	}
	close(start)
	wg.Wait()
	if m.Allocated() != chunks*DefaultMemoryChunk {
		t.Fatalf("Allocated %d, want %d", m.Allocated(), chunks*DefaultMemoryChunk)
	}
	if m.tableBytes.Load() != tableSize(m, 0, 1) {
		t.Fatalf("%d bytes of table, want one page", m.tableBytes.Load())
	}
	for k := range uint64(chunks) {
		got := read(t, m, k*DefaultMemoryChunk, DefaultMemoryChunk)
		for i := range g {
			if !bytes.Equal(got[i*4096:(i+1)*4096], bytes.Repeat([]byte{byte(i + 1)}, 4096)) {
				t.Fatalf("chunk %d: writer %d's data is lost", k, i)
			}
		}
	}
}

// Whole-chunk writes, TRIMs and NO_HOLE zeroes race with readers over a
// few chunks. A reader sees each chunk whole from before or after another
// bio, never torn; a chunk freed under a reader is safe to have been
// reading; and when all is done Allocated is exact.
func TestMemoryTrimWhileReading(t *testing.T) {
	const c, chunks = 4096, 4
	m := NewMemory(chunks*c, c)
	defer m.Close()
	iters := 3000
	if testing.Short() {
		iters = 300
	}
	var wg sync.WaitGroup
	var torn atomic.Bool
	for g := range 8 {
		wg.Go(func() {
			buf := make([]byte, 2*c)
			var b bioset.Bio
			var s bioset.Submitter
			for i := range iters {
				k := uint64(i*(g+1)) % chunks
				switch g % 4 {
				case 0: // a writer: 2 chunks of one byte value
					for j := range buf {
						buf[j] = byte(g<<4 + i%16 + 1)
					}
					b.Init(bioset.OpWrite, k*c, c*min(2, chunks-k), buf[:c*min(2, chunks-k)], nopEnd)
				case 1: // a trimmer
					b.Init(bioset.OpTrim, k*c, c*min(3, chunks-k), nil, nopEnd)
				case 2: // a zeroer that keeps the chunk
					b.Init(bioset.OpWriteZeroes, k*c, c, nil, nopEnd)
					b.Flags = bioset.FlagNoHole
				case 3: // a reader
					b.Init(bioset.OpRead, k*c, c, buf[:c], nopEnd)
				}
				b.Dev = m
				s.Submit(&b)
				if g%4 == 3 && bytes.Count(buf[:c], buf[:1]) != c {
					torn.Store(true)
				}
			}
		})
	}
	wg.Wait()
	if torn.Load() {
		t.Fatal("a reader saw a chunk torn between two bios")
	}
	var data uint64
	for _, e := range blockStatus(t, m, 0, chunks*c, chunks, 0) {
		if e.Flags == 0 {
			data += e.Length
		}
	}
	if m.Allocated() != data {
		t.Fatalf("Allocated %d, BLOCK_STATUS reports %d bytes of data", m.Allocated(), data)
	}
}

// BenchmarkMemoryRandom4K is 4 KiB bios at random offsets of a 1 GiB
// target written beforehand, from one goroutine and from GOMAXPROCS: the
// chunk lookup and locking, which sequential offsets would flatter through
// the caches. block_status is the lookup alone, without the copy that
// dominates a read or a write. Each runs with the chunks in a region, whose
// full spans are huge pages, and on the Go heap, in small pages: the
// difference is the cost of the TLB misses.
func BenchmarkMemoryRandom4K(b *testing.B) {
	for _, onHeap := range []bool{false, true} {
		name := "region"
		if onHeap {
			name = "heap"
		}
		b.Run(name, func(b *testing.B) { benchMemoryRandom4K(b, onHeap) })
	}
}

func benchMemoryRandom4K(b *testing.B, onHeap bool) {
	const size = 1 << 30
	m := NewMemory(size, 0)
	defer m.Close()
	if onHeap {
		m.dropRegion()
	}
	fill := make([]byte, 1<<20)
	for off := uint64(0); off < size; off += uint64(len(fill)) {
		var bio bioset.Bio
		var s bioset.Submitter
		bio.Init(bioset.OpWrite, off, uint64(len(fill)), fill, nopEnd)
		bio.Dev = m
		s.Submit(&bio)
	}
	// Offsets drawn up front, so that the generator is not measured.
	rng := rand.New(rand.NewPCG(1, 2))
	offs := make([]uint64, 1<<16)
	for i := range offs {
		offs[i] = rng.Uint64N(size/4096) * 4096
	}
	one := func(op bioset.Op, bio *bioset.Bio, s *bioset.Submitter, buf []byte, ext []bioset.Extent, off uint64) {
		if op == bioset.OpBlockStatus {
			bio.Init(op, off, 4096, nil, nopEnd)
			bio.Extents = ext
		} else {
			bio.Init(op, off, 4096, buf, nopEnd)
		}
		bio.Dev = m
		s.Submit(bio)
	}
	for _, op := range []bioset.Op{bioset.OpRead, bioset.OpWrite, bioset.OpBlockStatus} {
		b.Run(op.String()+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(4096)
			buf, ext := make([]byte, 4096), make([]bioset.Extent, 1)
			var bio bioset.Bio
			var s bioset.Submitter
			i := 0
			for b.Loop() {
				one(op, &bio, &s, buf, ext, offs[i&(len(offs)-1)])
				i++
			}
		})
		b.Run(op.String()+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(4096)
			var seed atomic.Uint64
			b.RunParallel(func(pb *testing.PB) {
				buf, ext := make([]byte, 4096), make([]bioset.Extent, 1)
				var bio bioset.Bio
				var s bioset.Submitter
				i := int(seed.Add(1) * 7919)
				for pb.Next() {
					one(op, &bio, &s, buf, ext, offs[i&(len(offs)-1)])
					i++
				}
			})
		})
	}
}

// dropRegion puts m's chunks on the Go heap, as where no region can be
// mapped; m must be empty.
func (m *Memory) dropRegion() {
	m.region.unmap()
	m.region, m.spanChunks = nil, 0
}

// A span of chunks becomes one huge page when its last chunk is allocated,
// and not before; a TRIM of one chunk in it hands that chunk's memory back
// and leaves the rest of the span's data alone.
func TestMemoryRegionCollapsesFullSpans(t *testing.T) {
	m := NewMemory(64<<20, 0)
	defer m.Close()
	if m.region == nil || m.spanChunks != hugePageSize/DefaultMemoryChunk {
		t.Fatalf("region %v, %d chunks a span", m.region != nil, m.spanChunks)
	}
	span := uint64(3 * hugePageSize)
	data := make([]byte, DefaultMemoryChunk)
	for k := range m.spanChunks {
		for i := range data {
			data[i] = byte(k + 1)
		}
		if k == m.spanChunks-1 && m.region.collapsed.Load() != 0 {
			t.Fatalf("a span collapsed with %d of its %d chunks", k, m.spanChunks)
		}
		write(t, m, span+k*DefaultMemoryChunk, data)
	}
	if m.region.noCollapse.Load() {
		// Not an error of stackd's: the spans stay in small pages.
		t.Logf("this kernel cannot collapse (MADV_COLLAPSE)")
	} else {
		if m.region.collapsed.Load() != 1 {
			t.Fatalf("%d spans collapsed, want 1", m.region.collapsed.Load())
		}
		if kb := anonHugeKiB(t, m.region.mem); kb < hugePageSize>>10 {
			t.Fatalf("%d KiB of the region in huge pages after a collapse", kb)
		}
	}
	trimmed := span + 5*DefaultMemoryChunk
	mustDo(t, m, bioset.OpTrim, 0, trimmed, DefaultMemoryChunk, nil)
	if got := residentBytes(t, m.region.chunk(trimmed, DefaultMemoryChunk)); got != 0 {
		t.Fatalf("%d bytes of a trimmed chunk still resident", got)
	}
	for k := range m.spanChunks {
		want := byte(k + 1)
		if span+k*DefaultMemoryChunk == trimmed {
			want = 0
		}
		got := read(t, m, span+k*DefaultMemoryChunk, DefaultMemoryChunk)
		if !bytes.Equal(got, bytes.Repeat([]byte{want}, DefaultMemoryChunk)) {
			t.Fatalf("chunk %d of the span does not read back %d", k, want)
		}
	}
}

// A freed chunk's memory written after the free, as by a direct write's
// fill that was in flight across a TRIM, does not show when the chunk is
// allocated again: the range reads as the TRIM left it, and then as the
// next write leaves it.
func TestMemoryRegionReallocatedChunkIsClear(t *testing.T) {
	m := NewMemory(8<<20, 0)
	defer m.Close()
	if m.region == nil {
		t.Fatal("no region")
	}
	const c = DefaultMemoryChunk
	write(t, m, c, bytes.Repeat([]byte{1}, c))
	mustDo(t, m, bioset.OpTrim, 0, c, c, nil)
	// The late fill.
	copy(m.region.chunk(c, c), bytes.Repeat([]byte{7}, c))
	if got := read(t, m, c, c); !bytes.Equal(got, make([]byte, c)) {
		t.Fatal("a trimmed chunk reads its late fill")
	}
	write(t, m, c+100, []byte{2})
	want := make([]byte, c)
	want[100] = 2
	if got := read(t, m, c, c); !bytes.Equal(got, want) {
		t.Fatal("a reallocated chunk shows bytes written after its free")
	}
}

// anonHugeKiB is the AnonHugePages of the mapping that holds b, from
// /proc/self/smaps.
func anonHugeKiB(t *testing.T, b []byte) uint64 {
	t.Helper()
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	addr := uint64(uintptr(unsafe.Pointer(&b[0])))
	in := false
	for _, line := range strings.Split(string(smaps), "\n") {
		var lo, hi uint64
		if n, _ := fmt.Sscanf(line, "%x-%x ", &lo, &hi); n == 2 {
			in = lo <= addr && addr < hi
			continue
		}
		var kb uint64
		if n, _ := fmt.Sscanf(line, "AnonHugePages: %d kB", &kb); in && n == 1 {
			return kb
		}
	}
	t.Fatalf("no mapping in /proc/self/smaps holds %#x", addr)
	return 0
}

// Chunks of 2 MiB are whole huge pages: the region asks for them at fault,
// so the first write into a chunk makes it one huge page, with no span to
// fill and nothing to collapse.
func TestMemoryRegionHugeChunksFaultHuge(t *testing.T) {
	if b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled"); err != nil || strings.Contains(string(b), "[never]") {
		t.Skipf("transparent huge pages are off on this machine (%q, %v): the chunks stay in small pages", b, err)
	}
	m := NewMemory(16<<20, hugePageSize)
	defer m.Close()
	if m.region == nil || m.spanChunks != 0 {
		t.Fatalf("region %v, %d chunks a span", m.region != nil, m.spanChunks)
	}
	write(t, m, 3*hugePageSize+4096, []byte{1})
	if kb := anonHugeKiB(t, m.region.mem); kb != hugePageSize>>10 {
		t.Fatalf("%d KiB of the region in huge pages after one write, want one huge page", kb)
	}
	if m.region.collapsed.Load() != 0 {
		t.Fatalf("%d spans collapsed", m.region.collapsed.Load())
	}
}
