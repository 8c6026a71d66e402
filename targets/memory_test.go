package targets

import (
	"bytes"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

	// ExtentBase: results are in the top device's coordinates.
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

// With a delay, Submit returns at once and every bio completes about the
// delay later — a burst much larger than the worker pool included.
func TestMemoryDelay(t *testing.T) {
	before := runtime.NumGoroutine()
	const delay = 30 * time.Millisecond
	m := NewMemory(1<<20, 0)
	m.SetDelay(delay)
	const n = 4 * DefaultWorkers
	bios := make([]bioset.Bio, n)
	var wg sync.WaitGroup
	wg.Add(n)
	var s bioset.Submitter
	start := time.Now()
	for i := range bios {
		bios[i].Init(bioset.OpWrite, uint64(i)*4096, 4096, make([]byte, 4096), func(*bioset.Bio) { wg.Done() })
		bios[i].Dev = m
		s.Submit(&bios[i])
	}
	if d := time.Since(start); d > delay/2 {
		t.Fatalf("submitting %d bios took %v: Submit waited for the delay", n, d)
	}
	wg.Wait()
	d := time.Since(start)
	if d < delay {
		t.Fatalf("bios completed after %v, before the %v delay", d, delay)
	}
	if d > 3*delay {
		t.Fatalf("a burst of %d bios took %v with a %v delay: the delay is a throughput cap", n, d, delay)
	}
	if m.Allocated() != DefaultMemoryChunk*2 {
		t.Fatalf("Allocated %d", m.Allocated())
	}
	m.Close()
	waitGoroutines(t, before)
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
