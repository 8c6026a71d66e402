package targets

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stackd/stackd/bioset"
)

// DefaultMemoryChunk is the allocation unit of a Memory target when none is
// given: large enough that a map entry per chunk is negligible overhead,
// small enough that a scattered 4 KiB write pins little memory.
const DefaultMemoryChunk = 64 << 10

// memShards spreads chunks over independently locked maps so that I/O to
// different chunks rarely contends. Consecutive chunks land in different
// shards, so one large sequential request and many small random ones both
// spread out.
const memShards = 64

// Memory is a sparse RAM target. It holds memory only for chunks that have
// been written, so a huge device costs nothing until used and TRIM gives
// memory back.
//
// Each chunk is read and written under its shard's lock, held for the copy:
// overlapping concurrent bios then see each chunk either before or after
// another's write, never a torn mix within one chunk, and the race detector
// has nothing to report.
type Memory struct {
	size      uint64
	chunk     uint64
	shift     uint
	allocated atomic.Uint64
	shards    [memShards]memShard
	delay     delay
	errorCounter
}

type memShard struct {
	mu sync.RWMutex
	// chunks holds this shard's allocated chunks by chunk index. It is nil
	// until the first write, so an unused device allocates no maps at all.
	chunks map[uint64][]byte
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
	m := &Memory{size: size, chunk: chunk}
	for chunk > 1 {
		chunk >>= 1
		m.shift++
	}
	return m
}

// SetDelay makes every bio complete no sooner than d after it is submitted,
// to model a slow leg in benchmarks. The bios then run on worker goroutines
// so that the submitter is never the one sleeping. Call it before the
// target serves any bio; d <= 0 turns the delay off.
func (m *Memory) SetDelay(d time.Duration) {
	m.delay.set(d, m.perform)
}

// Size returns the device size in bytes.
func (m *Memory) Size() uint64 { return m.size }

// Caps returns every capability: RAM can do all of them cheaply.
func (m *Memory) Caps() bioset.Caps { return bioset.CapsAll }

// Allocated returns the bytes of chunk memory the target holds now.
func (m *Memory) Allocated() uint64 { return m.allocated.Load() }

// Close stops the delay workers, if any, and drops every chunk so that the
// memory goes back to the Go heap even if something still references m.
func (m *Memory) Close() error {
	m.delay.stop()
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		sh.chunks = nil
		sh.mu.Unlock()
	}
	m.allocated.Store(0)
	return nil
}

// Submit performs b at once, or hands it to the delay workers.
func (m *Memory) Submit(_ *bioset.Submitter, b *bioset.Bio) {
	m.delay.submit(b, m.perform)
}

func (m *Memory) perform(b *bioset.Bio) {
	if e := check(b, m.size); e != 0 {
		m.end(b, e)
		return
	}
	switch b.Op {
	case bioset.OpRead:
		m.read(b.Buf, b.Offset)
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

func (m *Memory) read(buf []byte, off uint64) {
	for len(buf) > 0 {
		idx, in, n := m.piece(off, uint64(len(buf)))
		sh := &m.shards[idx%memShards]
		sh.mu.RLock()
		if c := sh.chunks[idx]; c != nil {
			copy(buf[:n], c[in:])
		} else {
			clear(buf[:n])
		}
		sh.mu.RUnlock()
		buf, off = buf[n:], off+n
	}
}

func (m *Memory) write(buf []byte, off uint64) {
	for len(buf) > 0 {
		idx, in, n := m.piece(off, uint64(len(buf)))
		sh := &m.shards[idx%memShards]
		sh.mu.Lock()
		c := sh.chunks[idx]
		if c == nil {
			c = m.allocLocked(sh, idx)
		}
		copy(c[in:], buf[:n])
		sh.mu.Unlock()
		buf, off = buf[n:], off+n
	}
}

// allocLocked gives chunk idx zeroed memory. The caller holds sh.mu.
func (m *Memory) allocLocked(sh *memShard, idx uint64) []byte {
	if sh.chunks == nil {
		sh.chunks = make(map[uint64][]byte)
	}
	c := make([]byte, m.chunk)
	sh.chunks[idx] = c
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
	end := off + length
	first := (off + m.chunk - 1) >> m.shift // first chunk wholly inside
	last := end >> m.shift                  // one past the last
	if end == m.size {
		// The device's last chunk may extend past its end; covering
		// up to the end counts as covering it all.
		last = (end + m.chunk - 1) >> m.shift
	}
	// A mkfs discards the whole device in multi-GiB pieces. Visiting every
	// chunk index of such a range costs time in proportion to the device,
	// not to the memory held; once the range spans more chunks than are
	// allocated, sweeping the maps is the cheaper walk.
	if keep || last <= first || last-first <= m.allocated.Load()>>m.shift {
		m.zeroEach(off, length, keep)
		return
	}
	mid, tail := first<<m.shift, min(last<<m.shift, end)
	m.zeroEach(off, mid-off, false)
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		for idx := range sh.chunks {
			if idx >= first && idx < last {
				delete(sh.chunks, idx)
				m.allocated.Add(-m.chunk)
			}
		}
		sh.mu.Unlock()
	}
	m.zeroEach(tail, end-tail, false)
}

// zeroEach is zero visiting one chunk index at a time.
func (m *Memory) zeroEach(off, length uint64, keep bool) {
	for length > 0 {
		idx, in, n := m.piece(off, length)
		whole := in == 0 && (n == m.chunk || off+n == m.size)
		sh := &m.shards[idx%memShards]
		sh.mu.Lock()
		c := sh.chunks[idx]
		switch {
		case c != nil && whole && !keep:
			delete(sh.chunks, idx)
			m.allocated.Add(-m.chunk)
		case c != nil:
			clear(c[in : in+n])
		case keep:
			m.allocLocked(sh, idx)
		}
		sh.mu.Unlock()
		off, length = off+n, length-n
	}
}

func (m *Memory) blockStatus(b *bioset.Bio) {
	f := newExtentFill(b)
	if m.allocated.Load() == 0 {
		// Nothing to look up: spare a long walk over an empty device.
		f.add(b.Length, holeZero)
		return
	}
	off, length := b.Offset, b.Length
	for length > 0 {
		idx, _, n := m.piece(off, length)
		sh := &m.shards[idx%memShards]
		sh.mu.RLock()
		_, data := sh.chunks[idx]
		sh.mu.RUnlock()
		flags := holeZero
		if data {
			flags = 0
		}
		if !f.add(n, flags) {
			return
		}
		off, length = off+n, length-n
	}
}
