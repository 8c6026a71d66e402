package nbd

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/stackd/stackd/bioset"
)

// memDev is a small in-memory device for the tests: a byte slice with a
// per-4-KiB-chunk allocation map for BLOCK_STATUS. It completes bios
// synchronously, asynchronously after a random tiny delay (out of order),
// or holds them until the test releases them (gate). It can lend its
// memory to READs (bioset.Lend) as a RAM target does.
type memDev struct {
	caps     bioset.Caps
	maxDelay time.Duration // > 0: complete asynchronously after up to this
	failOp   map[bioset.Op]syscall.Errno
	// lendEvery > 0: a READ offers to lend every lendEvery-th devChunk of
	// the device (by chunk number), and copies the rest.
	lendEvery int
	lent      atomic.Int64 // loans taken

	mu    sync.Mutex
	data  []byte
	alloc []bool // per devChunk: written since the last trim

	gateMu  sync.Mutex
	gated   bool
	held    []*bioset.Bio
	arrived chan struct{} // signalled (non-blocking) on each held bio

	inflight    atomic.Int64
	maxInflight atomic.Int64
	submitted   atomic.Int64
	completed   atomic.Int64
}

const devChunk = 4096

func newMemDev(size int, caps bioset.Caps) *memDev {
	return &memDev{
		caps:    caps,
		data:    make([]byte, size),
		alloc:   make([]bool, (size+devChunk-1)/devChunk),
		arrived: make(chan struct{}, 1),
	}
}

func (d *memDev) Size() uint64      { return uint64(len(d.data)) }
func (d *memDev) Caps() bioset.Caps { return d.caps }

// gate makes the device hold every bio until release.
func (d *memDev) gate() {
	d.gateMu.Lock()
	d.gated = true
	d.gateMu.Unlock()
}

// heldCount returns how many bios are held.
func (d *memDev) heldCount() int {
	d.gateMu.Lock()
	defer d.gateMu.Unlock()
	return len(d.held)
}

// waitHeld waits until at least n bios are held or the timeout passes.
func (d *memDev) waitHeld(n int, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for d.heldCount() < n {
		select {
		case <-d.arrived:
		case <-deadline:
			return d.heldCount() >= n
		}
	}
	return true
}

// open stops holding bios and completes the held ones in random order,
// each on its own goroutine.
func (d *memDev) open() {
	d.gateMu.Lock()
	held := d.held
	d.held = nil
	d.gated = false
	d.gateMu.Unlock()
	rand.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
	for _, b := range held {
		go d.complete(b)
	}
}

func (d *memDev) Submit(_ *bioset.Submitter, b *bioset.Bio) {
	d.submitted.Add(1)
	n := d.inflight.Add(1)
	for {
		m := d.maxInflight.Load()
		if n <= m || d.maxInflight.CompareAndSwap(m, n) {
			break
		}
	}
	d.gateMu.Lock()
	if d.gated {
		d.held = append(d.held, b)
		d.gateMu.Unlock()
		select {
		case d.arrived <- struct{}{}:
		default:
		}
		return
	}
	d.gateMu.Unlock()
	if d.maxDelay > 0 {
		delay := rand.N(d.maxDelay)
		go func() {
			time.Sleep(delay)
			d.complete(b)
		}()
		return
	}
	d.complete(b)
}

func (d *memDev) complete(b *bioset.Bio) {
	err := d.apply(b)
	d.inflight.Add(-1)
	d.completed.Add(1)
	b.End(err)
}

func (d *memDev) apply(b *bioset.Bio) error {
	if e := d.failOp[b.Op]; e != 0 {
		return e
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	off, end := b.Offset, b.Offset+b.Length
	if b.Op.HasRange() && end > uint64(len(d.data)) {
		return syscall.EIO // the server must never send this
	}
	switch b.Op {
	case bioset.OpRead:
		for at := uint64(0); at < b.Length; {
			pos := off + at
			n := min(devChunk-pos%devChunk, b.Length-at)
			src := d.data[pos : pos+n : pos+n]
			if d.lendEvery > 0 && pos/devChunk%uint64(d.lendEvery) == 0 && b.Lend(at, src) {
				d.lent.Add(1)
			} else {
				copy(b.Buf[at:at+n], src)
			}
			at += n
		}
	case bioset.OpWrite:
		copy(d.data[off:end], b.Buf)
		d.mark(off, end, true)
	case bioset.OpTrim:
		clear(d.data[off:end])
		d.markWhole(off, end)
	case bioset.OpWriteZeroes:
		clear(d.data[off:end])
		if b.Flags&bioset.FlagNoHole != 0 {
			d.mark(off, end, true)
		} else {
			d.markWhole(off, end)
		}
	case bioset.OpBlockStatus:
		d.status(b)
	}
	return nil
}

func (d *memDev) mark(off, end uint64, v bool) {
	for c := off / devChunk; c*devChunk < end; c++ {
		d.alloc[c] = v
	}
}

// markWhole marks as holes the chunks that [off, end) covers entirely.
func (d *memDev) markWhole(off, end uint64) {
	for c := (off + devChunk - 1) / devChunk; (c+1)*devChunk <= end; c++ {
		d.alloc[c] = false
	}
}

// status fills b.Extents from the front with per-chunk extents, merging
// chunks of equal state, as a target does.
func (d *memDev) status(b *bioset.Bio) {
	pos, end := b.Offset, b.Offset+b.Length
	i := -1
	for pos < end {
		c := pos / devChunk
		next := min((c+1)*devChunk, end)
		var f bioset.ExtentFlags
		if !d.alloc[c] {
			f = bioset.ExtentHole | bioset.ExtentZero
		}
		switch {
		case i >= 0 && b.Extents[i].Flags == f:
			b.Extents[i].Length += next - pos
		case i+1 < len(b.Extents):
			i++
			b.Extents[i] = bioset.Extent{Offset: b.TopOffset + (pos - b.Offset), Length: next - pos, Flags: f}
		default:
			return // out of slots
		}
		pos = next
	}
}

// snapshot returns a copy of the device's bytes.
func (d *memDev) snapshot() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]byte(nil), d.data...)
}
