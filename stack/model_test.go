package stack

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/stackdtest"
)

// The model test drives randomly built stacks with random operations and
// compares every byte with a flat []byte that models the whole device:
// WRITE copies, TRIM and WRITE_ZEROES zero (both targets zero what they
// trim), FLUSH and CACHE change nothing, and BLOCK_STATUS must describe a
// contiguous prefix of the asked range in which no extent marked HOLE or
// ZERO holds a byte that is not zero, with neighbours of equal flags
// merged. A fresh stack, asked about all of it with slots enough for its
// nesting, must answer for all of it.
//
// Reproduce a failure with STACKD_MODEL_SEED=<seed printed on failure>.

const (
	modelStacks     = 40
	modelOpsPerStep = 100
	maxOpLen        = 4 << 20
)

// chunks a stripe or split may use; every size the generator produces is a
// multiple of the largest, so legs line up.
var modelChunks = []uint64{512, 4096, 65536}

type gen struct {
	rng *rand.Rand
	dir string
	n   int // files made
}

// spec returns a random stack of the given depth and exactly size bytes
// (size is a multiple of 64 KiB).
//
// Now and then a node sits under a fault layer that never strikes: an
// error layer whose rate is 0, or a flakey one whose up period outlasts
// the test. Below the top, the model could not tell which part of a
// request such a layer would fail (a split or stripe above cuts the
// request first); these check that the layers pass every request
// through, pieces and remainders of any layer above included. Faults that
// strike are put on top (topFault), where the model predicts them.
func (g *gen) spec(depth int, size uint64) Spec {
	s := g.node(depth, size)
	switch g.rng.IntN(12) {
	case 0:
		o := g.faultChoice(size)
		o.Rate = 0
		return errorSpec(o, s)
	case 1:
		mode := FlakeyMode(g.rng.IntN(len(flakeyModes)))
		return flakeySpec(FlakeyOptions{Up: 1000 * time.Hour, Down: time.Second, Mode: mode}, s)
	}
	return s
}

// faultChoice returns an error layer's random choice of ops, ranges,
// errno and seed for a device of size bytes, at rate 1.
func (g *gen) faultChoice(size uint64) ErrorOptions {
	o := ErrorOptions{Rate: 1, Errno: errnos[g.rng.IntN(len(errnos))].errno, Seed: g.rng.Uint64()}
	for _, op := range bioset.Ops() {
		if g.rng.IntN(2) == 0 {
			o.Ops = append(o.Ops, op)
		}
	}
	for range g.rng.IntN(4) { // none: everywhere
		off := g.rng.Uint64N(size)
		o.Ranges = append(o.Ranges, ByteRange{off, 1 + g.rng.Uint64N(min(size-off, 256<<10))})
	}
	return o
}

// node is spec without the fault layers.
func (g *gen) node(depth int, size uint64) Spec {
	pool := poolOf(1 + g.rng.IntN(8))
	kind := g.rng.IntN(5)
	if depth == 0 {
		kind = 3
	}
	switch kind {
	case 0:
		max := []uint64{512, 4096, 65536, 1 << 20}[g.rng.IntN(4)]
		var boundary uint64
		if g.rng.IntN(2) == 0 {
			boundary = modelChunks[g.rng.IntN(len(modelChunks))]
		}
		return splitSpec(max, boundary, pool, g.spec(depth-1, size))
	case 1:
		// Legs must be of equal size and the stripe exactly size bytes:
		// use a leg count that divides size into 64 KiB units.
		units := size / 65536
		legs := 2 + g.rng.IntN(3)
		for units%uint64(legs) != 0 && legs > 1 {
			legs--
		}
		if legs < 2 {
			return g.spec(0, size)
		}
		chunk := modelChunks[g.rng.IntN(len(modelChunks))]
		var specs []Spec
		for i := 0; i < legs; i++ {
			specs = append(specs, g.spec(depth-1, size/uint64(legs)))
		}
		return stripeSpec(chunk, pool, specs...)
	case 2:
		legs := 1 + g.rng.IntN(3)
		var specs []Spec
		left := size / 65536
		for i := 0; i < legs; i++ {
			units := left
			if i < legs-1 && left > 1 {
				units = 1 + g.rng.Uint64N(left-1)
			}
			if units == 0 {
				break
			}
			specs = append(specs, g.spec(depth-1, units*65536))
			left -= units
		}
		return linearSpec(pool, specs...)
	case 4:
		// A mirror, over and under the other layers: every leg the
		// mirror's size.
		var specs []Spec
		for range 2 + g.rng.IntN(2) {
			specs = append(specs, g.spec(depth-1, size))
		}
		return mirrorSpec(readPolicyNames[g.rng.IntN(len(readPolicyNames))],
			[]uint64{4096, 65536}[g.rng.IntN(2)], pool, specs...)
	default:
		if g.rng.IntN(3) == 0 {
			g.n++
			return fileSpec(filepath.Join(g.dir, "leg"+strconv.Itoa(g.n)), size)
		}
		// Some RAM leaves complete on goroutines of their own, in any
		// order: a layer gathering a BLOCK_STATUS answer must not depend
		// on the order its children end in.
		spec := memorySpec(size, []uint64{0, 4096}[g.rng.IntN(2)])
		switch g.rng.IntN(8) {
		case 0, 1:
			spec.Config = &asyncMemoryConfig{*spec.Config.(*MemoryConfig)}
		case 2:
			// A delay layer completes on its worker, too. A
			// microsecond costs no sleep worth the name (pools of a
			// few bios serialise children, so a real latency would
			// add up to seconds).
			us := time.Microsecond
			spec = delaySpec(DelayLatencies{Read: us, Write: us, Flush: us, Other: us}, spec)
		}
		return spec
	}
}

func describe(s Spec) string {
	var b strings.Builder
	var walk func(s Spec)
	walk = func(s Spec) {
		n, _ := s.Size()
		fmt.Fprintf(&b, "%s(%d %s ", s.Kind(), n, strings.Join(s.Config.Describe(), ","))
		for i, l := range s.Config.LegSpecs() {
			if i > 0 {
				b.WriteString(" ")
			}
			walk(l)
		}
		b.WriteString(")")
	}
	walk(s)
	return b.String()
}

func modelSeed(t *testing.T) uint64 {
	if v := os.Getenv("STACKD_MODEL_SEED"); v != "" {
		seed, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("STACKD_MODEL_SEED: %v", err)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

// randomRange picks a range that often starts or ends on, or one byte off,
// a chunk boundary, with lengths from 1 byte to 4 MiB.
func randomRange(rng *rand.Rand, size uint64) (uint64, uint64) {
	var n uint64
	switch rng.IntN(4) {
	case 0:
		n = 1 + rng.Uint64N(4096)
	case 1:
		n = 512 * (1 + rng.Uint64N(256))
	case 2:
		n = 1 + rng.Uint64N(1<<20)
	default:
		n = 1 + rng.Uint64N(maxOpLen)
	}
	n = min(n, size)
	var off uint64
	if rng.IntN(2) == 0 {
		c := modelChunks[rng.IntN(len(modelChunks))]
		off = c*rng.Uint64N(size/c+1) + uint64(rng.IntN(3)) - 1
	} else {
		off = rng.Uint64N(size)
	}
	if off > size-n {
		off = size - n
	}
	return off, n
}

func TestModel(t *testing.T) {
	seed := modelSeed(t)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	g := &gen{rng: rng, dir: t.TempDir()}
	lent := 0
	var struck uint64
	for i := 0; i < modelStacks; i++ {
		size := uint64(1+rng.IntN(64)) * 65536 * 4
		spec := g.spec(1+rng.IntN(3), size)
		var top *topFault
		switch rng.IntN(4) {
		case 0:
			top = &topFault{opts: g.faultChoice(size)}
			spec = errorSpec(top.opts, spec)
		case 1:
			top = &topFault{flakey: true, clock: newFakeClock(), up: time.Duration(1+rng.IntN(5)) * time.Second,
				down: time.Duration(1+rng.IntN(3)) * time.Second, mode: FlakeyMode(rng.IntN(len(flakeyModes)))}
			spec = flakeySpec(FlakeyOptions{Up: top.up, Down: top.down, Mode: top.mode, Now: top.clock.Now}, spec)
		}
		if t.Failed() {
			return
		}
		lent += runModel(t, seed, i, spec, top, rng)
		if top != nil {
			struck += top.failed + top.dropped
		}
	}
	// Faults on top strike at a quarter to all of the requests they see
	// while on: a run in which none struck would not have tested them.
	if struck == 0 && !t.Failed() {
		t.Errorf("seed %d: no fault on top of %d stacks failed or dropped a request", seed, modelStacks)
	}
	// Memory leaves lend: a model run that saw no loan would not have
	// tested them.
	if lent == 0 && !t.Failed() {
		t.Errorf("seed %d: no leaf lent anything to %d stacks' reads", seed, modelStacks)
	}
}

// topFault is a fault layer on top of a model stack, and what the model
// knows of it. There it sees each request as the test sends it, and a
// request it fails or drops reaches nothing below, so that the model can
// predict every outcome: the error or drop, and the bytes unchanged.
type topFault struct {
	// An error layer's choice (at rate 1, so that every chosen request
	// fails).
	opts ErrorOptions
	// Or a flakey layer, on a clock the test moves.
	flakey   bool
	clock    *fakeClock
	up, down time.Duration
	mode     FlakeyMode
	// off: switched off by the test; start: when the flakey layer's
	// current cycle began, by the model's reckoning.
	off   bool
	start time.Duration
	// What the model expects the layer to have counted.
	failed, dropped uint64
}

// step moves the clock and, now and then, switches the layer, as the
// control socket would, keeping the model's reckoning in step.
func (f *topFault) step(t *testing.T, rng *rand.Rand, ctl Controlled) {
	if f.flakey {
		f.clock.advance(time.Duration(rng.Int64N(int64(f.up+f.down) / 2)))
	}
	if rng.IntN(10) != 0 {
		return
	}
	action := []string{ActionOn, ActionOff, ActionDownNow}[rng.IntN(3)]
	if !f.flakey && action == ActionDownNow {
		action = ActionOn
	}
	if err := ctl.Act(action, -1); err != nil {
		t.Fatalf("%s: %v", action, err)
	}
	if !f.flakey {
		f.off = action == ActionOff
		return
	}
	now := time.Duration(f.clock.at.Load())
	switch action {
	case ActionOn:
		if f.off {
			f.start = now
		}
		f.off = false
	case ActionOff:
		f.off = true
	case ActionDownNow:
		f.off, f.start = false, now-f.up
	}
}

// outcome is what the layer does to a request: the error it fails it
// with, or whether it drops it; neither, and the request passes.
func (f *topFault) outcome(op bioset.Op, off, n uint64) (error, bool) {
	if f.off {
		return nil, false
	}
	if !f.flakey {
		if len(f.opts.Ops) > 0 && !slices.Contains(f.opts.Ops, op) {
			return nil, false
		}
		hit := len(f.opts.Ranges) == 0
		for _, r := range f.opts.Ranges {
			hit = hit || op != bioset.OpFlush && off < r.Offset+r.Length && r.Offset < off+n
		}
		if !hit {
			return nil, false
		}
		f.failed++
		return f.opts.Errno, false
	}
	if (time.Duration(f.clock.at.Load())-f.start)%(f.up+f.down) < f.up {
		return nil, false
	}
	write := op == bioset.OpWrite || op == bioset.OpTrim || op == bioset.OpWriteZeroes || op == bioset.OpFlush
	switch {
	case f.mode == FlakeyError, f.mode == FlakeyErrorWrites && write:
		f.failed++
		return syscall.EIO, false
	case f.mode == FlakeyDropWrites && write:
		f.dropped++
		return nil, true
	}
	return nil, false
}

// runModel runs random ops on a stack built from spec against a byte-array
// model, and returns how many pieces its leaves lent to reads. top, if
// not nil, describes the fault layer at spec's top.
func runModel(t *testing.T, seed uint64, step int, spec Spec, top *topFault, rng *rand.Rand) (lent int) {
	st, err := Build("model", spec, BuildOptions{Logger: quietLog})
	if err != nil {
		t.Fatalf("seed %d step %d: build %s: %v", seed, step, describe(spec), err)
	}
	defer st.Close()
	dev := st.Root
	size := dev.Size()
	model := make([]byte, size)
	var s bioset.Submitter
	var key [32]byte
	for i := range key {
		key[i] = byte(rng.IntN(256))
	}
	data := rand.NewChaCha8(key)
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d step %d stack %s size %d: %s", seed, step, describe(spec), size, fmt.Sprintf(format, args...))
	}
	// Fresh, every leaf reads as zero and answers for its whole range in
	// one extent (RAM and sparse files alike), so the stack's answer is
	// one extent per change of flags between leaves, and it must cover
	// the device: no layer may cut it short while slots are left. A
	// stripe gives each leg half its slots over the leg count, so three
	// levels of four-leg stripes need 2*4 per level below the top.
	// A fault on top would fail this; it is the stack below that is
	// fresh.
	fresh := make([]bioset.Extent, 4096)
	below := dev
	if top != nil {
		below = st.Nodes[1].Dev
	}
	if err := request(t, &s, below, bioset.OpBlockStatus, 0, 0, size, nil, fresh); err != nil {
		fail("block status of the fresh device: %v", err)
	}
	if covered := checkExtents(fail, model, 0, size, fresh); covered != size {
		fail("block status of the fresh device covers %d bytes", covered)
	}
	var mirrors []*Mirror
	for _, n := range st.Nodes {
		if m, ok := n.Control.(*Mirror); ok {
			mirrors = append(mirrors, m)
		}
	}
	for i := 0; i < modelOpsPerStep; i++ {
		if len(mirrors) > 0 && rng.IntN(10) == 0 {
			// Fail or restore a mirror leg now and then: the mirror
			// refuses to fail its last leg in sync, so a fault never
			// reaches every leg at once, and reads must go on
			// returning the model's bytes.
			m := mirrors[rng.IntN(len(mirrors))]
			m.Act([]string{"fail", "restore"}[rng.IntN(2)], rng.IntN(len(m.legs)))
		}
		off, n := randomRange(rng, size)
		op := bioset.Ops()[rng.IntN(len(bioset.Ops()))]
		var flags bioset.Flags
		if rng.IntN(4) == 0 {
			flags |= bioset.FlagFUA
		}
		if top != nil {
			top.step(t, rng, st.Nodes[0].Control)
			if op == bioset.OpFlush {
				off, n = 0, 0
			}
			want, drop := top.outcome(op, off, n)
			if want != nil || drop {
				var buf []byte
				if op.HasPayload() {
					buf = make([]byte, n)
				}
				var slots []bioset.Extent
				if op == bioset.OpBlockStatus {
					slots = make([]bioset.Extent, 1)
				}
				if err := request(t, &s, dev, op, flags, off, n, buf, slots); err != want {
					fail("%v %d+%d through the fault on top: %v, want %v (dropped: %v)", op, off, n, err, want, drop)
				}
				continue // failed or dropped: the model's bytes stay
			}
		}
		switch op {
		case bioset.OpWrite:
			buf := make([]byte, n)
			data.Read(buf)
			if err := request(t, &s, dev, op, flags, off, n, buf, nil); err != nil {
				fail("write %d+%d: %v", off, n, err)
			}
			copy(model[off:], buf)
		case bioset.OpRead:
			buf := make([]byte, n)
			// Half the reads offer the leaves a loan table, as the
			// protocol layer does: lent pieces must land where the
			// top bio's buffer has them, through every layer.
			var err error
			if rng.IntN(2) == 0 {
				var k int
				k, err = readLent(t, &s, dev, off, n, buf)
				lent += k
			} else {
				err = request(t, &s, dev, op, flags, off, n, buf, nil)
			}
			if err != nil {
				fail("read %d+%d: %v", off, n, err)
			}
			if !bytes.Equal(buf, model[off:off+n]) {
				j := 0
				for buf[j] == model[off+uint64(j)] {
					j++
				}
				fail("read %d+%d: byte %d is %d, model has %d", off, n, off+uint64(j), buf[j], model[off+uint64(j)])
			}
		case bioset.OpTrim, bioset.OpWriteZeroes:
			if op == bioset.OpWriteZeroes && rng.IntN(2) == 0 {
				flags |= bioset.FlagNoHole
			}
			if err := request(t, &s, dev, op, flags, off, n, nil, nil); err != nil {
				fail("%v %d+%d: %v", op, off, n, err)
			}
			clear(model[off : off+n])
		case bioset.OpFlush:
			if err := request(t, &s, dev, op, flags, 0, 0, nil, nil); err != nil {
				fail("flush: %v", err)
			}
		case bioset.OpCache:
			if err := request(t, &s, dev, op, flags, off, n, nil, nil); err != nil {
				fail("cache %d+%d: %v", off, n, err)
			}
		case bioset.OpBlockStatus:
			slots := make([]bioset.Extent, 1+rng.IntN(64))
			if err := request(t, &s, dev, op, flags, off, n, nil, slots); err != nil {
				fail("block status %d+%d: %v", off, n, err)
			}
			checkExtents(fail, model, off, n, slots)
		}
	}
	if top != nil {
		f := st.Nodes[0].Fault
		if f.Failed() != top.failed || f.Dropped() != top.dropped || st.Nodes[0].Errors() < top.failed {
			fail("the fault on top counted %d failed, %d dropped, %d errors; the model expected %d failed, %d dropped",
				f.Failed(), f.Dropped(), st.Nodes[0].Errors(), top.failed, top.dropped)
		}
	}
	// Restore every leg and let the resyncs finish: then every leg of
	// every mirror holds the same bytes.
	for _, m := range mirrors {
		for leg := range m.legs {
			m.Act("restore", leg)
		}
	}
	for _, m := range mirrors {
		waitSynced(t, m)
		first := legBytes(t, m.legs[0].dev)
		for leg := 1; leg < len(m.legs); leg++ {
			if !bytes.Equal(first, legBytes(t, m.legs[leg].dev)) {
				fail("after resync, leg %d of mirror %s differs from leg 0", leg, m.path)
			}
		}
	}
	return lent
}

// checkExtents verifies a BLOCK_STATUS answer the way the NBD server will
// read it, and more strictly than it must: the non-empty slots, in order,
// must start at off, be contiguous with no slot past a gap, stay inside the
// range, have neighbours of different flags (layers merge what their legs
// answer), and mark as HOLE or ZERO only bytes that are zero (a client
// skips those: data reported there is lost to it). It returns how many
// bytes the answer covers.
func checkExtents(fail func(string, ...any), model []byte, off, n uint64, slots []bioset.Extent) uint64 {
	pos := off
	var prev *bioset.Extent
	for i := range slots {
		e := &slots[i]
		if e.Length == 0 {
			continue
		}
		if e.Offset != pos {
			fail("block status %d+%d: extent %d+%d does not start where the answer so far ends, %d", off, n, e.Offset, e.Length, pos)
		}
		if e.Offset+e.Length > off+n {
			fail("block status %d+%d: extent %d+%d runs past the range", off, n, e.Offset, e.Length)
		}
		if prev != nil && prev.Flags == e.Flags {
			fail("block status %d+%d: extents %d+%d and %d+%d both have flags %d: not merged", off, n, prev.Offset, prev.Length, e.Offset, e.Length, e.Flags)
		}
		if e.Flags&(bioset.ExtentHole|bioset.ExtentZero) != 0 {
			if j := firstNonZero(model[e.Offset : e.Offset+e.Length]); j >= 0 {
				j += int(e.Offset)
				fail("block status %d+%d: extent %d+%d has flags %d, byte %d is %d", off, n, e.Offset, e.Length, e.Flags, j, model[j])
			}
		}
		pos = e.Offset + e.Length
		prev = e
	}
	if slots[0].Length == 0 || slots[0].Offset != off {
		fail("block status %d+%d: first slot %+v does not start the answer", off, n, slots[0])
	}
	return pos - off
}

var zeroBlock [64 << 10]byte

// firstNonZero returns the index of the first byte of b that is not zero,
// or -1. It compares a block at a time: the model checks whole devices.
func firstNonZero(b []byte) int {
	for base := 0; base < len(b); base += len(zeroBlock) {
		blk := b[base:min(len(b), base+len(zeroBlock))]
		if bytes.Equal(blk, zeroBlock[:len(blk)]) {
			continue
		}
		for i, c := range blk {
			if c != 0 {
				return base + i
			}
		}
	}
	return -1
}

// TestStress runs 64 goroutines against 3-deep stacks whose pools hold 1 to
// 4 bios, each goroutine checking its own stripe of the device, and
// requires that everything completes and that Close leaves no goroutine.
func TestStress(t *testing.T) {
	seed := modelSeed(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for round := 0; round < 4; round++ {
		capacity := 1 + round
		rng := rand.New(rand.NewPCG(seed, uint64(round)))
		dir := t.TempDir()
		leaf := func(i int) Spec {
			if i%2 == 0 {
				return fileSpec(filepath.Join(dir, "f"+strconv.Itoa(i)), 4<<20)
			}
			return memorySpec(4<<20, 0)
		}
		pool := poolOf(capacity)
		spec := splitSpec(8192, 0, pool, stripeSpec(4096, pool,
			linearSpec(pool, leaf(0), leaf(1)),
			linearSpec(pool, leaf(2), leaf(3)),
			linearSpec(pool, leaf(4), leaf(5))))
		st, err := Build("stress", spec, BuildOptions{})
		if err != nil {
			t.Fatal(err)
		}
		const workers = 64
		region := st.Root.Size() / workers / 512 * 512
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			seedW := rng.Uint64()
			go func(w int) {
				defer wg.Done()
				errs <- stressWorker(st.Root, uint64(w)*region, region, seedW)
			}(w)
		}
		if !stackdtest.Within(&wg, completeBound) {
			t.Fatalf("seed %d pool %d: stress did not complete within %v", seed, capacity, completeBound)
		}
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("seed %d pool %d: %v", seed, capacity, err)
			}
		}
		for _, n := range st.Nodes {
			if n.Pool != nil {
				if ps := n.Pool.Stats(); ps.InUse != 0 || ps.Rescued != ps.Punted {
					t.Fatalf("%s after stress: %+v", n.Path, ps)
				}
			}
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// stressWorker writes and reads back its own region of dev with requests
// that cross chunk and split boundaries.
func stressWorker(dev Device, start, size uint64, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 1))
	var s bioset.Submitter
	model := make([]byte, size)
	run := func(op bioset.Op, off, n uint64, buf []byte) error {
		done := make(chan struct{})
		var b bioset.Bio
		b.Init(op, start+off, n, buf, func(*bioset.Bio) { close(done) })
		b.Dev = dev
		s.Submit(&b)
		select {
		case <-done:
			return b.Err()
		case <-time.After(completeBound):
			return fmt.Errorf("%v %d+%d stalled", op, start+off, n)
		}
	}
	for i := 0; i < 40; i++ {
		n := 1 + rng.Uint64N(min(size, 32768))
		off := rng.Uint64N(size - n + 1)
		switch rng.IntN(4) {
		case 0, 1:
			buf := make([]byte, n)
			for j := range buf {
				buf[j] = byte(rng.IntN(256))
			}
			if err := run(bioset.OpWrite, off, n, buf); err != nil {
				return err
			}
			copy(model[off:], buf)
		case 2:
			if err := run(bioset.OpWriteZeroes, off, n, nil); err != nil {
				return err
			}
			clear(model[off : off+n])
		default:
			buf := make([]byte, n)
			if err := run(bioset.OpRead, off, n, buf); err != nil {
				return err
			}
			if !bytes.Equal(buf, model[off:off+n]) {
				return fmt.Errorf("read %d+%d differs from what this worker wrote", start+off, n)
			}
		}
	}
	return run(bioset.OpFlush, 0, 0, nil)
}

// asyncMemoryConfig is a test kind: a memory leaf whose bios complete on a
// goroutine each, after Submit has returned.
type asyncMemoryConfig struct{ MemoryConfig }

func init() {
	Register(Kind{New: func() Settings { return new(asyncMemoryConfig) }, Rank: 1000})
}

func (c *asyncMemoryConfig) Kind() string { return "asyncmemory" }

func (c *asyncMemoryConfig) Build(legs []Device, b BuildContext) (Device, error) {
	m, err := c.MemoryConfig.Build(legs, b)
	return asyncDevice{m}, err
}

type asyncDevice struct{ Device }

func (d asyncDevice) Submit(_ *bioset.Submitter, b *bioset.Bio) {
	go d.Device.Submit(new(bioset.Submitter), b)
}
