package stack

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/targets"
)

// opRequest sends one request of op over [off, off+n) to dev, with a
// buffer for the ops that carry one.
func opRequest(t *testing.T, s *bioset.Submitter, dev Device, op bioset.Op, off, n uint64) error {
	t.Helper()
	var buf []byte
	var extents []bioset.Extent
	switch {
	case op == bioset.OpFlush:
		off, n = 0, 0
	case op.HasPayload():
		buf = make([]byte, n)
	case op == bioset.OpBlockStatus:
		extents = make([]bioset.Extent, 4)
	}
	return request(t, s, dev, op, 0, off, n, buf, extents)
}

// TestErrorOps: the chosen ops fail with the chosen errno and never reach
// the leg; the others pass through.
func TestErrorOps(t *testing.T) {
	m := targets.NewMemory(1<<20, 0)
	e := NewErrorLayer(m, ErrorOptions{Ops: []bioset.Op{bioset.OpWrite, bioset.OpFlush}, Errno: syscall.ENOSPC, Rate: 1})
	var s bioset.Submitter
	for _, op := range bioset.Ops() {
		err := opRequest(t, &s, e, op, 0, 4096)
		want := error(nil)
		if op == bioset.OpWrite || op == bioset.OpFlush {
			want = syscall.ENOSPC
		}
		if err != want {
			t.Errorf("%v: %v, want %v", op, err, want)
		}
	}
	if m.Allocated() != 0 {
		t.Errorf("a failed write reached the leg: %d bytes allocated", m.Allocated())
	}
	if e.Failed() != 2 || e.Dropped() != 0 {
		t.Errorf("failed %d dropped %d, want 2 and 0", e.Failed(), e.Dropped())
	}
	// The zero options fail every op, with EIO.
	all := NewErrorLayer(m, ErrorOptions{Rate: 1})
	for _, op := range bioset.Ops() {
		if err := opRequest(t, &s, all, op, 0, 4096); err != syscall.EIO {
			t.Errorf("every op: %v got %v, want EIO", op, err)
		}
	}
}

// TestErrorRanges: with ranges, only requests with a byte in one fail;
// FLUSH, which has no range, never does.
func TestErrorRanges(t *testing.T) {
	// Two ranges that touch are one: 4096 to 8704.
	e := NewErrorLayer(targets.NewNull(1<<20), ErrorOptions{Rate: 1,
		Ranges: []ByteRange{{8192, 512}, {100000, 1}, {4096, 4096}}})
	var s bioset.Submitter
	for _, c := range []struct {
		op     bioset.Op
		off, n uint64
		fails  bool
	}{
		{bioset.OpRead, 0, 4096, false},
		{bioset.OpRead, 0, 4097, true},
		{bioset.OpWrite, 4096, 512, true},
		{bioset.OpRead, 8191, 1, true},
		{bioset.OpRead, 8703, 1, true},
		{bioset.OpRead, 8704, 4096, false},
		{bioset.OpTrim, 0, 1 << 20, true},
		{bioset.OpBlockStatus, 99999, 1, false},
		{bioset.OpBlockStatus, 99999, 2, true},
		{bioset.OpCache, 100001, 10, false},
		{bioset.OpFlush, 0, 0, false},
	} {
		err := opRequest(t, &s, e, c.op, c.off, c.n)
		if (err != nil) != c.fails {
			t.Errorf("%v %d+%d: %v, want failing %v", c.op, c.off, c.n, err, c.fails)
		}
	}
}

// TestErrorRate: a seeded layer fails about rate of the chosen requests,
// and the same seed fails the same ones; unchosen requests use no draws.
func TestErrorRate(t *testing.T) {
	const n = 4000
	pattern := func(seed uint64, rate float64, interleave bool) []bool {
		e := NewErrorLayer(targets.NewNull(1<<20), ErrorOptions{Ops: []bioset.Op{bioset.OpWrite}, Rate: rate, Seed: seed})
		var s bioset.Submitter
		var out []bool
		for range n {
			if interleave {
				if err := opRequest(t, &s, e, bioset.OpRead, 0, 512); err != nil {
					t.Fatalf("read: %v", err)
				}
			}
			out = append(out, opRequest(t, &s, e, bioset.OpWrite, 0, 512) != nil)
		}
		if f := e.Failed(); f != uint64(count(out)) {
			t.Errorf("Failed %d, saw %d", f, count(out))
		}
		return out
	}
	a := pattern(42, 0.25, false)
	if k := count(a); k < n/4-150 || k > n/4+150 {
		t.Errorf("rate 0.25 failed %d of %d", k, n)
	}
	if b := pattern(42, 0.25, true); !equalBools(a, b) {
		t.Error("the same seed failed other requests (reads in between should use no draws)")
	}
	if c := pattern(43, 0.25, false); equalBools(a, c) {
		t.Error("another seed failed the same requests")
	}
	if k := count(pattern(1, 0, false)); k != 0 {
		t.Errorf("rate 0 failed %d", k)
	}
}

func count(bs []bool) int {
	k := 0
	for _, b := range bs {
		if b {
			k++
		}
	}
	return k
}

func equalBools(a, b []bool) bool { return bytes.Equal(boolBytes(a), boolBytes(b)) }

func boolBytes(bs []bool) []byte {
	out := make([]byte, len(bs))
	for i, b := range bs {
		if b {
			out[i] = 1
		}
	}
	return out
}

// TestErrorFailAllocatesNothing: failing a bio is End with a stored
// error, which allocates nothing (docs/DESIGN.md rule 6).
func TestErrorFailAllocatesNothing(t *testing.T) {
	e := NewErrorLayer(targets.NewNull(1<<20), ErrorOptions{Rate: 0.5, Errno: syscall.EPERM,
		Ranges: []ByteRange{{0, 4096}}})
	var s bioset.Submitter
	buf := make([]byte, 512)
	var b bioset.Bio
	allocs := testing.AllocsPerRun(1000, func() {
		b.Init(bioset.OpWrite, 0, 512, buf, nil)
		e.Submit(&s, &b)
	})
	if allocs != 0 || e.Failed() == 0 {
		t.Errorf("%v allocations a request, %d failed", allocs, e.Failed())
	}
}

// TestErrorControl: on and off switch the layer; down-now and anything
// else are refused, as is a leg.
func TestErrorControl(t *testing.T) {
	e := NewErrorLayer(targets.NewNull(1<<20), ErrorOptions{Rate: 1})
	var s bioset.Submitter
	var ctl Controlled = e
	if err := ctl.Act(ActionOff, -1); err != nil {
		t.Fatal(err)
	}
	if err := opRequest(t, &s, e, bioset.OpRead, 0, 512); err != nil {
		t.Fatalf("off: %v", err)
	}
	if st := ctl.State().(FaultState); st.Enabled || st.Failed != 0 {
		t.Errorf("off: %+v", st)
	}
	if err := ctl.Act(ActionOn, -1); err != nil {
		t.Fatal(err)
	}
	if err := opRequest(t, &s, e, bioset.OpRead, 0, 512); err != syscall.EIO {
		t.Fatalf("on: %v", err)
	}
	js, _ := json.Marshal(ctl.State())
	if string(js) != `{"kind":"error","enabled":true,"failed":1,"dropped":0}` {
		t.Errorf("State as JSON: %s", js)
	}
	for _, action := range []string{ActionDownNow, "restore", ""} {
		if err := ctl.Act(action, -1); !errors.Is(err, ErrUnknownAction) {
			t.Errorf("Act(%q): %v, want ErrUnknownAction", action, err)
		}
	}
	if err := ctl.Act(ActionOff, 0); err == nil || errors.Is(err, ErrUnknownAction) {
		t.Errorf("Act on leg 0: %v", err)
	}
	if !ctl.State().(FaultState).Enabled {
		t.Error("a refused action switched the layer")
	}
}

// TestErrorConfig: decoding, the tree's words, and a built stack whose
// nodes find the layer's counters, its control and its failures.
func TestErrorConfig(t *testing.T) {
	spec, err := decodeSpec(t, `split:
  max_bytes: 4KiB
  leg:
    error:
      ops: [write, trim]
      errno: EPERM
      rate: 1.0
      ranges: [{offset: 1MiB, length: 64KiB}]
      seed: 7
      leg: {memory: {size: 2MiB}}`)
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := spec.Size(); !ok || n != 2<<20 {
		t.Errorf("Size = %d, %v", n, ok)
	}
	ec := spec.Config.LegSpecs()[0].Config
	if got := strings.Join(ec.Describe(), " "); got != "ops=write,trim errno=EPERM rate=1 ranges=1MiB+64KiB seed=7" {
		t.Errorf("Describe = %q", got)
	}
	st := mustBuild(t, "x", spec, BuildOptions{})
	defer st.Close()
	split, layer := &st.Nodes[0], &st.Nodes[1]
	if layer.Path != "x/split/error" || layer.Fault == nil || layer.Control == nil || layer.Pool != nil || split.Fault != nil {
		t.Fatalf("nodes %+v", st.Nodes)
	}
	var s bioset.Submitter
	// 8 KiB across the range's start: the split's second piece fails.
	if err := request(t, &s, st.Root, bioset.OpWrite, 0, 1<<20-4096, 8192, make([]byte, 8192), nil); err != syscall.EPERM {
		t.Fatalf("write into the range: %v", err)
	}
	if err := request(t, &s, st.Root, bioset.OpWrite, 0, 0, 4096, make([]byte, 4096), nil); err != nil {
		t.Fatalf("write outside the range: %v", err)
	}
	if layer.Fault.Failed() != 1 || layer.Errors() != 1 || split.Errors() != 1 {
		t.Errorf("failed %d, errors at the layer %d and above it %d; want 1 each", layer.Fault.Failed(), layer.Errors(), split.Errors())
	}
	// Defaults: every op, EIO.
	spec, err = decodeSpec(t, "error: {leg: {null: {size: 1MiB}}}")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(spec.Config.Describe(), " "); got != "errno=EIO" {
		t.Errorf("Describe = %q", got)
	}
}

func TestErrorConfigErrors(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"error: {errno: EIOO, leg: {null: {size: 1MiB}}}", `line 1: error errno: unknown errno "EIOO" (did you mean "EIO"?)`},
		{"error: {errno: enospc, leg: {null: {size: 1MiB}}}", `line 1: error errno: unknown errno "enospc" (did you mean "ENOSPC"?)`},
		{"error: {errno: EBADF, leg: {null: {size: 1MiB}}}", `line 1: error errno: unknown errno "EBADF" (want EIO, ENOSPC, EPERM, ENOMEM, EINVAL)`},
		{"error:\n  ops: [read, wirte]\n  leg: {null: {size: 1MiB}}", `line 2: error ops: unknown op "wirte" (did you mean "write"?)`},
		{"error:\n  ops: []\n  leg: {null: {size: 1MiB}}", `line 2: error ops is empty; omit it to fail every op`},
		{"error:\n  ops: [read, 5]\n  leg: {null: {size: 1MiB}}", `line 2: error op 2 must be a string, not the number 5 (quote it to make it a string)`},
		{"error: {rate: 1.5, leg: {null: {size: 1MiB}}}", `line 1: error rate: 1.5 is out of range; want 0 to 1 (1: every chosen request)`},
		{"error: {rate: -0.1, leg: {null: {size: 1MiB}}}", `line 1: error rate: -0.1 is out of range; want 0 to 1 (1: every chosen request)`},
		{"error: {rate: often, leg: {null: {size: 1MiB}}}", `line 1: error rate must be a number such as 0.5, not "often"`},
		{"error:\n  ranges:\n    - {offset: 1MiB, length: 0}\n  leg: {null: {size: 1MiB}}", `line 3: error range length must be greater than zero`},
		{"error:\n  ranges:\n    - {offset: 1MiB}\n  leg: {null: {size: 1MiB}}", `line 3: error range needs "length"`},
		{"error:\n  ranges: []\n  leg: {null: {size: 1MiB}}", `line 2: error ranges is empty; omit it to fail requests anywhere`},
		{"error: {ops: [read], leg: {null: {size: 1MiB}}, errno: EIO, rates: 1}", `line 1: unknown key "rates" in error (did you mean "rate"?)`},
	} {
		_, err := decodeSpec(t, c.src)
		var l settings.Errors
		if !errors.As(err, &l) || err.Error() != c.want {
			t.Errorf("%s:\n got %v\nwant %s", c.src, err, c.want)
		}
	}
	// A range past the leg's end is a problem of the node's size.
	spec, err := decodeSpec(t, "error:\n  ranges:\n    - {offset: 1MiB, length: 512}\n  leg: {null: {size: 1MiB}}")
	if err != nil {
		t.Fatal(err)
	}
	var p settings.Problems
	if _, ok := spec.CheckSize(&p); ok || p.Err() == nil ||
		p.Err().Error() != "line 3: error range 1MiB+512B runs past the end of its leg (line 4), which is 1MiB" {
		t.Errorf("range past the end: %v", p.Err())
	}
}
