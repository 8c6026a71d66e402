package targets

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/stackdtest"
)

// device is stack.Device, restated so that internal tests need not import
// stack (which imports this package to build stacks).
type device interface {
	bioset.Queue
	Size() uint64
	Caps() bioset.Caps
	Close() error
}

// submit runs b on dev with a fresh Submitter and waits for it to end,
// however the target ends it: inline or from a worker.
func submit(t testing.TB, dev bioset.Queue, b *bioset.Bio) error {
	t.Helper()
	b.Dev = dev
	var s bioset.Submitter
	return stackdtest.Await(t, &s, b, 10*time.Second)
}

func do(t testing.TB, dev bioset.Queue, op bioset.Op, fl bioset.Flags, off, length uint64, buf []byte) error {
	t.Helper()
	var b bioset.Bio
	b.Init(op, off, length, buf, nil)
	b.Flags = fl
	return submit(t, dev, &b)
}

func mustDo(t testing.TB, dev bioset.Queue, op bioset.Op, fl bioset.Flags, off, length uint64, buf []byte) {
	t.Helper()
	if err := do(t, dev, op, fl, off, length, buf); err != nil {
		t.Fatalf("%v at %d+%d flags %#x: %v", op, off, length, fl, err)
	}
}

func write(t testing.TB, dev bioset.Queue, off uint64, data []byte) {
	t.Helper()
	mustDo(t, dev, bioset.OpWrite, 0, off, uint64(len(data)), data)
}

// read reads off+length as the protocol layer does: offering a loan table,
// so that a target able to lend its memory does (bioset.Lend), and then
// taking the lent pieces where the target did not copy.
func read(t testing.TB, dev bioset.Queue, off, length uint64) []byte {
	t.Helper()
	buf, lent := readLending(t, dev, off, length)
	for _, l := range lent {
		copy(buf[l.Pos:], l.Data)
	}
	return buf
}

// readLending reads off+length offering a loan table of 32 slots, and
// returns the buffer as the target left it and what it lent, in order.
func readLending(t testing.TB, dev bioset.Queue, off, length uint64) ([]byte, []bioset.Loan) {
	t.Helper()
	buf := make([]byte, length)
	for i := range buf {
		buf[i] = 0xa5 // so that a target that forgets to fill shows up
	}
	var b bioset.Bio
	b.Init(bioset.OpRead, off, length, buf, nil)
	b.TopOffset = off
	loans := bioset.NewLoans(32)
	b.SetLoans(loans)
	if err := submit(t, dev, &b); err != nil {
		t.Fatalf("read at %d+%d: %v", off, length, err)
	}
	return buf, loans.Sorted()
}

// blockStatus asks for the status of off+length with slots result slots
// and base as TopOffset. It checks that the target wrote nothing past its
// window and returns the used slots.
func blockStatus(t testing.TB, dev bioset.Queue, off, length uint64, slots int, base uint64) []bioset.Extent {
	t.Helper()
	const canaries = 3
	all := make([]bioset.Extent, slots+canaries)
	canary := bioset.Extent{Offset: 0xdead, Length: 0xbeef, Flags: 0x40}
	for i := slots; i < len(all); i++ {
		all[i] = canary
	}
	var b bioset.Bio
	b.Init(bioset.OpBlockStatus, off, length, nil, nil)
	b.Extents = all[:slots]
	b.TopOffset = base
	if err := submit(t, dev, &b); err != nil {
		t.Fatalf("block status %d+%d: %v", off, length, err)
	}
	for i := slots; i < len(all); i++ {
		if all[i] != canary {
			t.Fatalf("block status wrote slot %d past its window of %d", i, slots)
		}
	}
	n := 0
	for n < slots && all[n].Length != 0 {
		n++
	}
	for i := n; i < slots; i++ {
		if all[i] != (bioset.Extent{}) {
			t.Fatalf("slot %d used after empty slot %d: %+v", i, n, all[i])
		}
	}
	return all[:n]
}

// checkExtents checks the rules every BLOCK_STATUS answer obeys, and that
// whatever it calls zero reads as zero in the model.
func checkExtents(t testing.TB, ext []bioset.Extent, off, length uint64, slots int, base uint64, model []byte) {
	t.Helper()
	if slots > 0 && length > 0 && len(ext) == 0 {
		t.Fatalf("block status %d+%d with %d slots: no extents", off, length, slots)
	}
	next := base
	for i, e := range ext {
		if e.Offset != next {
			t.Fatalf("extent %d %+v: want offset %d (contiguous from base %d)", i, e, next, base)
		}
		if i > 0 && ext[i-1].Flags == e.Flags {
			t.Fatalf("extents %d and %d share flags %d: not merged", i-1, i, e.Flags)
		}
		switch e.Flags {
		case 0, bioset.ExtentZero, bioset.ExtentHole | bioset.ExtentZero:
		default:
			t.Fatalf("extent %d: unexpected flags %d", i, e.Flags)
		}
		next += e.Length
		if next-base > length {
			t.Fatalf("extents cover %d bytes of a %d-byte request", next-base, length)
		}
		if e.Flags&bioset.ExtentZero != 0 && model != nil {
			start := off + (e.Offset - base)
			if i := bytes.IndexFunc(model[start:start+e.Length], func(r rune) bool { return r != 0 }); i >= 0 {
				t.Fatalf("extent %+v reported zero but byte %d is not", e, start+uint64(i))
			}
		}
	}
	if len(ext) < slots && next-base != length {
		t.Fatalf("extents cover %d of %d bytes with %d of %d slots used", next-base, length, len(ext), slots)
	}
}

type modelOpts struct {
	ops    int
	maxLen uint64
	// trimZeroes: the target's TRIM makes the range read zero (advisory
	// in NBD, but memory and file do it).
	trimZeroes bool
	seed       uint64
}

// exerciseModel runs random I/O against dev and a flat []byte model of it
// and checks every read and every BLOCK_STATUS answer against the model.
func exerciseModel(t *testing.T, dev device, o modelOpts) {
	t.Helper()
	size := dev.Size()
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(o.seed, 42))
	span := func() (uint64, uint64) {
		off := rng.Uint64N(size)
		n := 1 + rng.Uint64N(min(o.maxLen, size-off))
		return off, n
	}
	caps := dev.Caps()
	for i := range o.ops {
		switch r := rng.IntN(100); {
		case r < 35:
			off, n := span()
			data := make([]byte, n)
			for j := range data {
				data[j] = byte(rng.UintN(255) + 1)
			}
			fl := bioset.Flags(0)
			if rng.IntN(8) == 0 {
				fl = bioset.FlagFUA
			}
			mustDo(t, dev, bioset.OpWrite, fl, off, n, data)
			copy(model[off:], data)
		case r < 65:
			off, n := span()
			if got := read(t, dev, off, n); !bytes.Equal(got, model[off:off+n]) {
				t.Fatalf("op %d: read %d+%d differs from the model", i, off, n)
			}
		case r < 75:
			off, n := span()
			mustDo(t, dev, bioset.OpTrim, 0, off, n, nil)
			if o.trimZeroes {
				clear(model[off : off+n])
			}
		case r < 85:
			off, n := span()
			fl := bioset.Flags(0)
			if rng.IntN(2) == 0 {
				fl |= bioset.FlagNoHole
			}
			mustDo(t, dev, bioset.OpWriteZeroes, fl, off, n, nil)
			clear(model[off : off+n])
		case r < 95 && caps&bioset.CapBlockStatus != 0:
			off, n := span()
			slots := rng.IntN(6)
			base := rng.Uint64N(1 << 40)
			ext := blockStatus(t, dev, off, n, slots, base)
			checkExtents(t, ext, off, n, slots, base, model)
		case r < 97:
			mustDo(t, dev, bioset.OpCache, 0, 0, size, nil)
		default:
			mustDo(t, dev, bioset.OpFlush, 0, 0, 0, nil)
		}
	}
	if got := read(t, dev, 0, size); !bytes.Equal(got, model) {
		t.Fatalf("final read of the whole device differs from the model")
	}
}

// checkOutOfRange checks that bios outside the device end with EINVAL.
func checkOutOfRange(t *testing.T, dev device) {
	t.Helper()
	size := dev.Size()
	cases := []struct {
		op     bioset.Op
		off, n uint64
	}{
		{bioset.OpRead, size - 1, 2},
		{bioset.OpRead, size, 1},
		{bioset.OpWrite, size - 1, 2},
		{bioset.OpWrite, ^uint64(0) - 1, 4},
		{bioset.OpTrim, size, 1},
		{bioset.OpTrim, ^uint64(0) - 10, 100},
		{bioset.OpWriteZeroes, 0, size + 1},
		{bioset.OpCache, size + 1, 0},
		{bioset.OpBlockStatus, ^uint64(0), 2},
	}
	for _, c := range cases {
		var buf []byte
		if c.op.HasPayload() {
			buf = make([]byte, c.n)
		}
		var b bioset.Bio
		b.Init(c.op, c.off, c.n, buf, nil)
		b.Extents = make([]bioset.Extent, 4)
		if err := submit(t, dev, &b); err != syscall.EINVAL {
			t.Errorf("%v at %d+%d: got %v, want EINVAL", c.op, c.off, c.n, err)
		}
	}
	// A buffer that does not match the length is a layer bug, not I/O.
	var b bioset.Bio
	b.Init(bioset.OpRead, 0, 8, make([]byte, 4), nil)
	if err := submit(t, dev, &b); err != syscall.EINVAL {
		t.Errorf("read with a short buffer: got %v, want EINVAL", err)
	}
	// FLUSH has no range: whatever its offset says is ignored.
	if err := do(t, dev, bioset.OpFlush, 0, 0, 0, nil); err != nil {
		t.Errorf("flush: %v", err)
	}
}

func ext(off, length uint64, fl bioset.ExtentFlags) bioset.Extent {
	return bioset.Extent{Offset: off, Length: length, Flags: fl}
}

func wantExtents(t testing.TB, got []bioset.Extent, want ...bioset.Extent) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("extents:\n got %v\nwant %v", got, want)
	}
}
