package stack

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/targets"
)

// failingDevice is a leg that fails what it is told to with EIO, and
// otherwise passes bios to the device below, unchanged: the tests' stand-in
// for the fault layers.
type failingDevice struct {
	Device
	failReads, failWrites atomic.Bool
	// seen records the op and flags of every bio, when record is set.
	record atomic.Bool
	mu     sync.Mutex
	seen   []seenBio
	// onWrite, if set, sees every WRITE before it goes down.
	onWrite func(*bioset.Bio)
}

type seenBio struct {
	op    bioset.Op
	flags bioset.Flags
}

func (d *failingDevice) Submit(s *bioset.Submitter, b *bioset.Bio) {
	if d.record.Load() {
		d.mu.Lock()
		d.seen = append(d.seen, seenBio{b.Op, b.Flags})
		d.mu.Unlock()
	}
	if d.onWrite != nil && b.Op == bioset.OpWrite {
		d.onWrite(b)
	}
	switch {
	case b.Op == bioset.OpRead && d.failReads.Load(),
		(b.Op == bioset.OpWrite || b.Op == bioset.OpTrim || b.Op == bioset.OpWriteZeroes || b.Op == bioset.OpFlush) && d.failWrites.Load():
		b.End(syscall.EIO)
		return
	}
	d.Device.Submit(s, b)
}

func (d *failingDevice) ops() []seenBio {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]seenBio(nil), d.seen...)
}

func failingLegs(n int, size uint64) ([]*failingDevice, []Device) {
	f := make([]*failingDevice, n)
	d := make([]Device, n)
	for i := range f {
		f[i] = &failingDevice{Device: targets.NewMemory(size, 0)}
		d[i] = f[i]
	}
	return f, d
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func testMirrorOptions(o MirrorOptions) MirrorOptions {
	if o.Pool.Name == "" {
		o.Pool = bioset.Options{Name: "t/mirror", Capacity: 64}
	}
	if o.ResyncRate == 0 {
		o.ResyncRate = 1 << 40
	}
	if o.ClearInterval == 0 {
		o.ClearInterval = -1
	}
	if o.Log == nil {
		o.Log = quietLog
	}
	return o
}

func newTestMirror(t testing.TB, legs []Device, o MirrorOptions) *Mirror {
	t.Helper()
	m, err := NewMirror(legs, testMirrorOptions(o))
	if err != nil {
		t.Fatal(err)
	}
	waitSynced(t, m)
	return m
}

// syncedMirror is a mirror of n failing legs of 1 MiB, once in sync; the
// caller closes it.
func syncedMirror(t testing.TB, n int, o MirrorOptions) ([]*failingDevice, []Device, *Mirror) {
	t.Helper()
	f, legs := failingLegs(n, 1<<20)
	return f, legs, newTestMirror(t, legs, o)
}

// waitSynced waits for every leg of m to be in sync, at most completeBound.
func waitSynced(t testing.TB, m *Mirror) MirrorState {
	t.Helper()
	deadline := time.Now().Add(completeBound)
	for {
		if st := m.MirrorState(); st.Synced() {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirror not in sync after %v: %+v", completeBound, m.MirrorState())
		}
		time.Sleep(time.Millisecond)
	}
}

func legStates(m *Mirror) []string {
	var s []string
	for _, l := range m.MirrorState().Legs {
		s = append(s, l.State)
	}
	return s
}

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

// legBytes reads all of leg.
func legBytes(t *testing.T, leg Device) []byte {
	t.Helper()
	var s bioset.Submitter
	buf := make([]byte, leg.Size())
	if err := request(t, &s, leg, bioset.OpRead, 0, 0, leg.Size(), buf, nil); err != nil {
		t.Fatal(err)
	}
	return buf
}

func checkLegsEqual(t *testing.T, legs []Device) {
	t.Helper()
	first := legBytes(t, legs[0])
	for i := 1; i < len(legs); i++ {
		if !bytes.Equal(first, legBytes(t, legs[i])) {
			t.Fatalf("leg %d differs from leg 0", i)
		}
	}
}

func TestMirrorWritesEveryLeg(t *testing.T) {
	_, legs, m := syncedMirror(t, 3, MirrorOptions{})
	defer m.Close()
	var s bioset.Submitter
	data := pattern(3*4096, 1)
	if err := request(t, &s, m, bioset.OpWrite, 0, 4096, uint64(len(data)), data, nil); err != nil {
		t.Fatal(err)
	}
	if err := request(t, &s, m, bioset.OpWriteZeroes, 0, 8192, 4096, nil, nil); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), data...)
	clear(want[4096:8192])
	for i, leg := range legs {
		got := make([]byte, len(data))
		if err := request(t, &s, leg, bioset.OpRead, 0, 4096, uint64(len(got)), got, nil); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("leg %d does not hold the write", i)
		}
	}
	if got, want := m.Caps(), legCaps(legs); got != want {
		t.Fatalf("caps %v, want the legs' intersection %v", got, want)
	}
	if st := legStates(m); st[0] != "in_sync" || st[1] != "in_sync" || st[2] != "in_sync" {
		t.Fatalf("states %v", st)
	}
}

func TestMirrorWriteFailsOneLeg(t *testing.T) {
	f, _, m := syncedMirror(t, 2, MirrorOptions{})
	defer m.Close()
	var s bioset.Submitter
	f[1].failWrites.Store(true)
	data := pattern(8192, 3)
	if err := request(t, &s, m, bioset.OpWrite, 0, 0, 8192, data, nil); err != nil {
		t.Fatalf("a write that one leg took failed: %v", err)
	}
	if st := legStates(m); st[0] != "in_sync" || st[1] != "faulty" {
		t.Fatalf("states %v, want leg 1 faulty", st)
	}
	// Reads now come from leg 0 only, whatever the policy.
	for range 4 {
		got := make([]byte, 8192)
		if err := request(t, &s, m, bioset.OpRead, 0, 0, 8192, got, nil); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read after the failure: %v", err)
		}
	}
	// The region stays dirty while a leg is faulty.
	m.clearIdle()
	m.clearIdle()
	if st := m.MirrorState(); st.DirtyRegions == 0 {
		t.Fatal("a faulty leg's regions were cleared")
	}
}

func TestMirrorWriteFailsEveryLeg(t *testing.T) {
	f, _, m := syncedMirror(t, 2, MirrorOptions{})
	defer m.Close()
	var s bioset.Submitter
	f[0].failWrites.Store(true)
	f[1].failWrites.Store(true)
	if err := request(t, &s, m, bioset.OpWrite, 0, 0, 4096, make([]byte, 4096), nil); !errors.Is(err, syscall.EIO) {
		t.Fatalf("a write no leg took: %v, want EIO", err)
	}
	// One leg is set aside; the last one in sync never is.
	st := legStates(m)
	if st[0] == "faulty" && st[1] == "faulty" || st[0] == "in_sync" && st[1] == "in_sync" {
		t.Fatalf("states %v: want one faulty, one in sync", st)
	}
	if err := request(t, &s, m, bioset.OpFlush, 0, 0, 0, nil, nil); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush: %v, want EIO", err)
	}
}

func TestMirrorReadRetry(t *testing.T) {
	f, _, m := syncedMirror(t, 3, MirrorOptions{Read: "first"})
	defer m.Close()
	var s bioset.Submitter
	data := pattern(4096, 9)
	if err := request(t, &s, m, bioset.OpWrite, 0, 65536, 4096, data, nil); err != nil {
		t.Fatal(err)
	}
	f[0].failReads.Store(true)
	f[1].failReads.Store(true)
	got := make([]byte, 4096)
	if err := request(t, &s, m, bioset.OpRead, 0, 65536, 4096, got, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read with two failing legs: %v", err)
	}
	st := m.MirrorState()
	if st.Legs[0].State != "faulty" || st.Legs[1].State != "faulty" || st.Legs[2].State != "in_sync" {
		t.Fatalf("states %+v", st.Legs)
	}
	if st.Legs[0].ReadErrorsRetried != 1 || st.Legs[1].ReadErrorsRetried != 1 {
		t.Fatalf("retries %+v, want one on each failing leg", st.Legs)
	}
	// The last leg in sync fails too: the client sees the error, and the
	// leg stays.
	f[2].failReads.Store(true)
	if err := request(t, &s, m, bioset.OpRead, 0, 65536, 4096, got, nil); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read with no leg able to answer: %v, want EIO", err)
	}
	if st := legStates(m); st[2] != "in_sync" {
		t.Fatalf("the last leg in sync was failed: %v", st)
	}
}

func TestMirrorReadPolicies(t *testing.T) {
	for _, policy := range []string{"round-robin", "first", "least-pending"} {
		t.Run(policy, func(t *testing.T) {
			f, _, m := syncedMirror(t, 2, MirrorOptions{Read: policy})
			defer m.Close()
			for _, d := range f {
				d.record.Store(true)
			}
			var s bioset.Submitter
			for range 10 {
				if err := request(t, &s, m, bioset.OpRead, 0, 0, 4096, make([]byte, 4096), nil); err != nil {
					t.Fatal(err)
				}
			}
			n0, n1 := len(f[0].ops()), len(f[1].ops())
			switch policy {
			case "round-robin":
				if n0 != 5 || n1 != 5 {
					t.Fatalf("reads %d, %d: want 5 each", n0, n1)
				}
			default: // least-pending with nothing pending picks the first
				if n0 != 10 || n1 != 0 {
					t.Fatalf("reads %d, %d: want all on leg 0", n0, n1)
				}
			}
		})
	}
}

func TestMirrorFlushAndFUA(t *testing.T) {
	f, _, m := syncedMirror(t, 2, MirrorOptions{})
	defer m.Close()
	for _, d := range f {
		d.record.Store(true)
	}
	var s bioset.Submitter
	if err := request(t, &s, m, bioset.OpWrite, bioset.FlagFUA, 0, 4096, make([]byte, 4096), nil); err != nil {
		t.Fatal(err)
	}
	if err := request(t, &s, m, bioset.OpFlush, 0, 0, 0, nil, nil); err != nil {
		t.Fatal(err)
	}
	for i, d := range f {
		ops := d.ops()
		if len(ops) != 2 || ops[0] != (seenBio{bioset.OpWrite, bioset.FlagFUA}) || ops[1].op != bioset.OpFlush {
			t.Fatalf("leg %d saw %v: want a FUA write and a flush", i, ops)
		}
	}
	// A leg that fails a flush is set aside; the flush succeeds on the
	// other, and then means "on every leg in sync".
	f[1].failWrites.Store(true)
	if err := request(t, &s, m, bioset.OpFlush, 0, 0, 0, nil, nil); err != nil {
		t.Fatal(err)
	}
	if st := legStates(m); st[1] != "faulty" {
		t.Fatalf("states %v", st)
	}
}

func TestMirrorBlockStatus(t *testing.T) {
	_, _, m := syncedMirror(t, 2, MirrorOptions{})
	defer m.Close()
	var s bioset.Submitter
	if err := request(t, &s, m, bioset.OpWrite, 0, 0, 65536, pattern(65536, 1), nil); err != nil {
		t.Fatal(err)
	}
	ext := blockStatus(t, &s, m, 0, 1<<20, 16)
	if len(ext) == 0 || ext[0].Offset != 0 || ext[0].Flags != 0 {
		t.Fatalf("extents %v: want the written range first, allocated", ext)
	}
}

func TestMirrorControl(t *testing.T) {
	_, _, m := syncedMirror(t, 2, MirrorOptions{})
	defer m.Close()
	var ctl Controlled = m
	if err := ctl.Act("explode", 0); !errors.Is(err, ErrUnknownAction) {
		t.Fatalf("unknown action: %v", err)
	}
	for _, c := range []struct {
		action string
		leg    int
		ok     bool
	}{
		{"restore", 0, false}, // in sync
		{"fail", 5, false},    // no such leg
		{"fail", -1, false},   // the node itself
		{"fail", 1, true},
		{"fail", 1, false}, // faulty already
		{"fail", 0, false}, // the last in sync
		{"restore", 1, true},
	} {
		err := ctl.Act(c.action, c.leg)
		if (err == nil) != c.ok {
			t.Fatalf("%s %d: %v, want ok %v", c.action, c.leg, err, c.ok)
		}
	}
	waitSynced(t, m)
	raw, err := json.Marshal(ctl.State())
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Read string `json:"read"`
		Legs []struct {
			State string `json:"state"`
		} `json:"legs"`
		Resync struct {
			DoneBytes uint64 `json:"done_bytes"`
		} `json:"resync"`
	}
	if err := json.Unmarshal(raw, &back); err != nil || back.Read != "round-robin" || len(back.Legs) != 2 || back.Legs[1].State != "in_sync" {
		t.Fatalf("state %s: %v", raw, err)
	}
}

// TestMirrorResync fails a leg, writes past it, restores it and checks
// that only the regions written meanwhile were copied, and that the legs
// end equal.
func TestMirrorResync(t *testing.T) {
	_, legs := failingLegs(2, 1<<20)
	const region = 64 << 10
	m := newTestMirror(t, legs, MirrorOptions{Region: region})
	defer m.Close()
	m.clearIdle()
	m.clearIdle() // the initial resync's bits
	if st := m.MirrorState(); st.DirtyRegions != 0 {
		t.Fatalf("%d dirty regions after clearing", st.DirtyRegions)
	}
	if err := m.Act("fail", 1); err != nil {
		t.Fatal(err)
	}
	var s bioset.Submitter
	// Three regions: 0, 5 (one write over it) and 8-9 (a write across).
	for _, w := range []struct{ off, n uint64 }{{0, 4096}, {5 * region, region}, {9*region - 512, 1024}} {
		if err := request(t, &s, m, bioset.OpWrite, 0, w.off, w.n, pattern(int(w.n), byte(w.off)), nil); err != nil {
			t.Fatal(err)
		}
	}
	before := m.MirrorState()
	if before.DirtyRegions != 4 || before.Legs[1].RemainingBytes != 4*region {
		t.Fatalf("state %+v: want 4 dirty regions for leg 1", before)
	}
	if err := m.Act("restore", 1); err != nil {
		t.Fatal(err)
	}
	after := waitSynced(t, m)
	if got := after.Legs[1].ResyncedBytes - before.Legs[1].ResyncedBytes; got != 4*region {
		t.Fatalf("resynced %d bytes, want %d", got, 4*region)
	}
	checkLegsEqual(t, legs)
}

// TestMirrorResyncUnderWrites resyncs a leg while clients write all over
// the mirror: the region locks keep the copy from overwriting a
// newer write, so the legs end equal.
func TestMirrorResyncUnderWrites(t *testing.T) {
	_, legs := failingLegs(2, 1<<20)
	const region = 4096
	m := newTestMirror(t, legs, MirrorOptions{Region: region})
	defer m.Close()
	if err := m.Act("fail", 1); err != nil {
		t.Fatal(err)
	}
	var s bioset.Submitter
	for off := uint64(0); off < 1<<20; off += 8192 {
		if err := request(t, &s, m, bioset.OpWrite, 0, off, 4096, pattern(4096, byte(off>>12)), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Act("restore", 1); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var s bioset.Submitter
			for i := range 200 {
				// Writers own disjoint blocks: two writes in flight
				// to one block may reach the legs in different
				// orders, as with md, and the legs could differ
				// without any fault of the resync.
				off := uint64((i*37%64)*4+w) * 4096
				if err := request(t, &s, m, bioset.OpWrite, 0, off, 4096, pattern(4096, byte(i+w)), nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	waitSynced(t, m)
	checkLegsEqual(t, legs)
}

// TestMirrorBitmapFile writes through a mirror with a bitmap file,
// abandons it as a crash would, and opens it again over the same legs:
// only the regions left dirty are resynced, and the legs end equal.
func TestMirrorBitmapFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.bitmap")
	const region = 64 << 10
	_, legs := failingLegs(2, 1<<20)
	o := MirrorOptions{Region: region, BitmapPath: path}
	m := newTestMirror(t, legs, o)
	m.clearIdle()
	m.clearIdle()
	var s bioset.Submitter
	// A write that completes everywhere, in regions 2 and 3.
	if err := request(t, &s, m, bioset.OpWrite, 0, 2*region+4096, region, pattern(region, 5), nil); err != nil {
		t.Fatal(err)
	}
	m.workOnce(&s) // flush the cleared bits; the write's were flushed before it
	// What a crash in the middle of a write leaves: the data on leg 0
	// only, in region 3, whose bit is durable.
	if err := request(t, &s, legs[0], bioset.OpWrite, 0, 3*region+8192, 4096, pattern(4096, 77), nil); err != nil {
		t.Fatal(err)
	}
	m.abandon()

	m2 := newTestMirror(t, legs, o)
	st := m2.MirrorState()
	if st.Legs[1].ResyncedBytes != 2*region {
		t.Fatalf("resynced %d bytes after the crash, want the 2 dirty regions, %d", st.Legs[1].ResyncedBytes, 2*region)
	}
	checkLegsEqual(t, legs)
	// A clean stop: the next start resyncs nothing.
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	m3 := newTestMirror(t, legs, o)
	defer m3.Close()
	if st := m3.MirrorState(); st.Legs[1].ResyncedBytes != 0 || st.DirtyRegions != 0 {
		t.Fatalf("after a clean stop: %+v", st)
	}
}

// TestMirrorBitmapRecordsFailure: a leg that fails is recorded in the file
// before the write that failed on it completes, so a restart resyncs it
// rather than trusting it.
func TestMirrorBitmapRecordsFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.bitmap")
	f, legs := failingLegs(2, 1<<20)
	o := MirrorOptions{BitmapPath: path}
	m := newTestMirror(t, legs, o)
	var s bioset.Submitter
	f[0].failWrites.Store(true)
	data := pattern(4096, 42)
	if err := request(t, &s, m, bioset.OpWrite, 0, 0, 4096, data, nil); err != nil {
		t.Fatal(err)
	}
	m.abandon()
	f[0].failWrites.Store(false)
	m2 := newTestMirror(t, legs, o)
	defer m2.Close()
	if st := m2.MirrorState(); st.Legs[0].ResyncedBytes == 0 {
		t.Fatalf("leg 0 failed before the crash and was not resynced: %+v", st)
	}
	checkLegsEqual(t, legs)
	got := make([]byte, 4096)
	if err := request(t, &s, m2, bioset.OpRead, 0, 0, 4096, got, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the acknowledged write is lost: %v", err)
	}
}

func TestMirrorBitmapFileRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.bitmap")
	_, legs := failingLegs(2, 1<<20)
	m := newTestMirror(t, legs, MirrorOptions{BitmapPath: path})
	m.Close()
	_, other := failingLegs(2, 2<<20)
	if _, err := NewMirror(other, testMirrorOptions(MirrorOptions{BitmapPath: path})); err == nil {
		t.Fatal("a bitmap file of another mirror was accepted")
	}
}

// TestMirrorDeadlockProof is the rescuer proof pair for the mirror's
// fan-out: a write over two legs needs two children in one Submit, and the
// pool holds one.
func TestMirrorDeadlockProof(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	write := func(m *Mirror) <-chan error { return submitWatched(m, bioset.OpWrite, pattern(4096, 1)) }
	t.Run("rescuer off: stalls", func(t *testing.T) {
		_, legs := failingLegs(2, 1<<20)
		m := newTestMirror(t, legs, MirrorOptions{Pool: bioset.Options{Name: "t/mirror", Capacity: 1, NoRescuer: true}})
		checkStallsWithoutRescuer(t, m.Pool(), write(m), 1)
		m.Close()
	})
	t.Run("rescuer on: completes", func(t *testing.T) {
		_, legs := failingLegs(2, 1<<20)
		m := newTestMirror(t, legs, MirrorOptions{Pool: bioset.Options{Name: "t/mirror", Capacity: 1}})
		if err, ok := <-write(m); !ok || err != nil {
			t.Fatalf("completed %v, err %v: %+v", ok, err, m.Pool().Stats())
		}
		m.Close()
		if ps := m.Pool().Stats(); ps.Punted == 0 || ps.Rescued != ps.Punted {
			t.Fatalf("pool %+v: want punts, all rescued", ps)
		}
		checkLegsEqual(t, legs)
	})
}

// TestMirrorReadOnly: a read-only export's mirror takes its legs as they
// are, resyncs nothing and keeps no bitmap file.
func TestMirrorReadOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.bitmap")
	_, legs := failingLegs(2, 1<<20)
	m, err := NewMirror(legs, testMirrorOptions(MirrorOptions{BitmapPath: path, ReadOnly: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	st := m.MirrorState()
	if st.Resync.Active || st.DirtyRegions != 0 || st.Legs[1].State != "in_sync" || st.Bitmap != "memory" {
		t.Fatalf("read-only mirror %+v", st)
	}
}

// bitOnDisk reports whether the bitmap file at path has region r's bit set.
func bitOnDisk(t *testing.T, path string, r int) bool {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Error(err)
		return false
	}
	return raw[bitmapBitsOffset+r/8]&(1<<(r%8)) != 0
}

// TestMirrorBitDurableFirst: with a bitmap file, a write reaches a leg
// only once the bit of its region is in the file.
func TestMirrorBitDurableFirst(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.bitmap")
	const region = 64 << 10
	f, _, m := syncedMirror(t, 2, MirrorOptions{Region: region, BitmapPath: path})
	defer m.Close()
	m.clearIdle()
	m.clearIdle()
	// The worker writes the cleared bits to the file.
	for deadline := time.Now().Add(completeBound); bitOnDisk(t, path, 7); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("region 7 is still dirty in the file after clearing")
		}
	}
	var s bioset.Submitter
	var checked atomic.Int32
	f[1].onWrite = func(b *bioset.Bio) {
		if !bitOnDisk(t, path, int(b.Offset/region)) {
			t.Errorf("a write to region %d reached a leg before its bit was durable", b.Offset/region)
		}
		checked.Add(1)
	}
	if err := request(t, &s, m, bioset.OpWrite, 0, 7*region, 4096, pattern(4096, 1), nil); err != nil {
		t.Fatal(err)
	}
	if checked.Load() != 1 {
		t.Fatalf("%d writes checked", checked.Load())
	}
}

// TestMirrorResyncRate: the resync never runs ahead of its rate, one
// region aside, and reports its progress while it runs.
func TestMirrorResyncRate(t *testing.T) {
	const region, rate = 4096, 256 << 10
	_, legs := failingLegs(2, 256<<10)
	start := time.Now()
	m, err := NewMirror(legs, testMirrorOptions(MirrorOptions{Region: region, ResyncRate: rate}))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	seen := false
	for {
		st := m.MirrorState()
		elapsed := time.Since(start).Seconds()
		if done := st.Legs[1].ResyncedBytes; float64(done) > rate*elapsed+region {
			t.Fatalf("%d bytes resynced after %.3fs at %d bytes a second", done, elapsed, rate)
		}
		if st.Legs[1].State == "in_sync" {
			break
		}
		if st.Resync.Active && st.Legs[1].RemainingBytes > 0 {
			seen = true
			if p := st.Legs[1].Percent; p < 0 || p >= 100 || st.Resync.LimitBytes != rate {
				t.Fatalf("progress %+v", st)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !seen {
		t.Fatal("never saw the resync in progress")
	}
	checkLegsEqual(t, legs)
}

// TestMirrorBitmapRecordsOperatorFail: a leg the operator failed is in
// the file before a write that went past it is acknowledged, so a crash
// does not bring it back as in sync.
func TestMirrorBitmapRecordsOperatorFail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.bitmap")
	_, legs := failingLegs(2, 1<<20)
	o := MirrorOptions{BitmapPath: path}
	m := newTestMirror(t, legs, o)
	if err := m.Act("fail", 0); err != nil {
		t.Fatal(err)
	}
	var s bioset.Submitter
	data := pattern(4096, 99)
	if err := request(t, &s, m, bioset.OpWrite, 0, 8192, 4096, data, nil); err != nil {
		t.Fatal(err)
	}
	m.abandon()
	m2 := newTestMirror(t, legs, o)
	defer m2.Close()
	got := make([]byte, 4096)
	if err := request(t, &s, legs[0], bioset.OpRead, 0, 8192, 4096, got, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("leg 0, failed before the crash, was not resynced from leg 1: %v", err)
	}
	checkLegsEqual(t, legs)
}

// TestMirrorRegionLock: a write to the region the resyncer holds is
// queued, without blocking Submit, and goes to every leg once the region
// is unlocked.
func TestMirrorRegionLock(t *testing.T) {
	const region = 64 << 10
	f, legs, m := syncedMirror(t, 2, MirrorOptions{Region: region})
	defer m.Close()
	for _, d := range f {
		d.record.Store(true)
	}
	m.mu.Lock()
	m.lockRegion(3)
	m.mu.Unlock()
	done := make(chan struct{})
	data := pattern(4096, 3)
	var b bioset.Bio
	b.Init(bioset.OpWrite, 3*region+512, 4096, data, func(*bioset.Bio) { close(done) })
	b.Dev = m
	var s bioset.Submitter
	s.Submit(&b) // returns: the write waits in the mirror, not in Submit
	m.mu.Lock()
	queued := !m.blocked.Empty()
	m.mu.Unlock()
	if !queued || len(f[0].ops()) != 0 || len(f[1].ops()) != 0 {
		t.Fatalf("a write to the locked region was not held back: queued %v, legs saw %v, %v", queued, f[0].ops(), f[1].ops())
	}
	// A write elsewhere goes at once.
	if err := request(t, &s, m, bioset.OpWrite, 0, 0, 4096, data, nil); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.unlockRegion()
	m.mu.Unlock()
	m.signal()
	select {
	case <-done:
	case <-time.After(completeBound):
		t.Fatal("the held write did not complete after the unlock")
	}
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
	checkLegsEqual(t, legs)
}

// TestMirrorSteadyStateAllocs: in steady state a mirrored read or write
// allocates nothing on the heap: the children come from the pool, the
// mirrorIO from the mirror's pool of them.
func TestMirrorSteadyStateAllocs(t *testing.T) {
	_, _, m := syncedMirror(t, 2, MirrorOptions{})
	defer m.Close()
	var s bioset.Submitter
	r := newSyncRequest()
	buf := make([]byte, 4096)
	for _, op := range []bioset.Op{bioset.OpWrite, bioset.OpRead} {
		r.run(&s, m, bioset.OpWrite, 8192, 4096, buf)
		if allocs := testing.AllocsPerRun(200, func() { r.run(&s, m, op, 8192, 4096, buf) }); allocs != 0 {
			t.Errorf("%v through a mirror: %v heap allocations per request, want 0", op, allocs)
		}
	}
}

// BenchmarkMirror measures a 4 KiB request through a mirror of two memory
// legs, beside the same request to one memory leg.
func BenchmarkMirror(b *testing.B) {
	for _, op := range []bioset.Op{bioset.OpWrite, bioset.OpRead} {
		for _, mirrored := range []bool{false, true} {
			name := op.String() + "/memory"
			if mirrored {
				name += "/mirror"
			}
			b.Run(name, func(b *testing.B) {
				var dev Device = targets.NewMemory(16<<20, 0)
				if mirrored {
					m := newTestMirror(b, []Device{dev, targets.NewMemory(16<<20, 0)}, MirrorOptions{})
					b.Cleanup(func() { m.Close() })
					dev = m
				}
				var s bioset.Submitter
				r := newSyncRequest()
				buf := make([]byte, 4096)
				r.run(&s, dev, bioset.OpWrite, 8192, 4096, buf)
				b.SetBytes(4096)
				b.ReportAllocs()
				for b.Loop() {
					r.run(&s, dev, op, 8192, 4096, buf)
				}
			})
		}
	}
}

// TestMirrorStress runs many writers at once on disjoint ranges of a
// mirror whose legs are stripes, with pools of a bio or two, while legs
// are failed and restored under them: every read returns what its writer
// wrote, every pool ends idle, and once the resyncs are done the legs are
// byte-equal.
func TestMirrorStress(t *testing.T) {
	seed := modelSeed(t)
	rng := rand.New(rand.NewPCG(seed, 12))
	pool := poolOf(2)
	leg := func() Spec { return stripeSpec(4096, pool, memorySpec(2<<20, 0), memorySpec(2<<20, 0)) }
	spec := splitSpec(16384, 0, pool, mirrorSpec("least-pending", 4096, poolOf(3), leg(), leg(), leg()))
	st := mustBuild(t, "stress", spec, BuildOptions{Logger: quietLog})
	defer st.Close()
	m := st.Nodes[1].Control.(*Mirror)
	const workers = 32
	region := st.Root.Size() / workers / 512 * 512
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		seedW := rng.Uint64()
		wg.Go(func() { errs <- stressWorker(st.Root, uint64(w)*region, region, seedW) })
	}
	stop := make(chan struct{})
	chaos := make(chan struct{})
	go func() {
		defer close(chaos)
		r := rand.New(rand.NewPCG(seed, 13))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			m.Act([]string{"fail", "restore"}[r.IntN(2)], r.IntN(3))
		}
	}()
	wg.Wait()
	close(stop)
	<-chaos
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
	for leg := range 3 {
		m.Act("restore", leg)
	}
	waitSynced(t, m)
	checkLegsEqual(t, []Device{m.legs[0].dev, m.legs[1].dev, m.legs[2].dev})
	for _, n := range st.Nodes {
		if n.Pool != nil {
			if ps := n.Pool.Stats(); ps.InUse != 0 || ps.Rescued != ps.Punted {
				t.Fatalf("seed %d: %s after stress: %+v", seed, n.Path, ps)
			}
		}
	}
}

// TestMirrorNoRecord: with no bitmap file the mirror cannot tell what a
// restart left different, so it copies everything from leg 0.
func TestMirrorNoRecord(t *testing.T) {
	_, legs := failingLegs(2, 1<<20)
	var s bioset.Submitter
	if err := request(t, &s, legs[0], bioset.OpWrite, 0, 4096, 8192, pattern(8192, 1), nil); err != nil {
		t.Fatal(err)
	}
	if err := request(t, &s, legs[1], bioset.OpWrite, 0, 512<<10, 4096, pattern(4096, 2), nil); err != nil {
		t.Fatal(err)
	}
	m := newTestMirror(t, legs, MirrorOptions{})
	defer m.Close()
	if st := m.MirrorState(); st.Legs[1].ResyncedBytes != 1<<20 {
		t.Fatalf("resynced %d bytes, want all of leg 1", st.Legs[1].ResyncedBytes)
	}
	checkLegsEqual(t, legs)
}
