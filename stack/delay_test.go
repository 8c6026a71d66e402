package stack

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"go.uber.org/goleak"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/targets"
)

// TestDelayPerOp: each op waits its own latency, and the data goes through.
func TestDelayPerOp(t *testing.T) {
	const (
		read  = 40 * time.Millisecond
		write = 20 * time.Millisecond
		flush = 60 * time.Millisecond
	)
	dl := NewDelay(targets.NewMemory(1<<20, 0), DelayLatencies{Read: read, Write: write, Flush: flush})
	defer dl.Close()
	var s bioset.Submitter
	timed := func(op bioset.Op, buf []byte, want time.Duration) {
		t.Helper()
		start := time.Now()
		if err := request(t, &s, dl, op, 0, 0, uint64(len(buf)), buf, nil); err != nil {
			t.Fatalf("%v: %v", op, err)
		}
		if d := time.Since(start); d < want || d > want+500*time.Millisecond {
			t.Errorf("%v took %v, want about %v", op, d, want)
		}
	}
	timed(bioset.OpWrite, []byte(strings.Repeat("x", 4096)), write)
	got := make([]byte, 4096)
	timed(bioset.OpRead, got, read)
	if string(got) != strings.Repeat("x", 4096) {
		t.Fatal("read did not return what was written")
	}
	timed(bioset.OpFlush, nil, flush)
	// TRIM has no latency here: it goes straight through.
	start := time.Now()
	if err := request(t, &s, dl, bioset.OpTrim, 0, 0, 4096, nil, nil); err != nil || time.Since(start) > write {
		t.Errorf("trim: %v after %v", err, time.Since(start))
	}
}

// TestDelayBurst: a burst of bios is held for the latency, not queued
// behind one another: a delay is latency, not a throughput cap. Submit
// returns at once, so all of them are in the heap together; none ends
// before its latency. The bounds below are watchdogs, not measurements:
// as a throughput cap, 256 bios of 100 ms would take 25 s, and a Submit
// that waited would wait an hour.
func TestDelayBurst(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const (
		n        = 256
		delay    = 100 * time.Millisecond
		watchdog = 10 * time.Second
	)
	run := func(lat time.Duration) (*Delay, []bioset.Bio, *sync.WaitGroup, time.Time) {
		m := targets.NewMemory(1<<20, 0)
		dl := NewDelay(m, DelayLatencies{Write: lat})
		bios := make([]bioset.Bio, n)
		var wg sync.WaitGroup
		wg.Add(n)
		var s bioset.Submitter
		start := time.Now()
		submitted := make(chan struct{})
		go func() {
			defer close(submitted)
			for i := range bios {
				bios[i].Init(bioset.OpWrite, uint64(i%64)*4096, 4096, make([]byte, 4096), func(*bioset.Bio) { wg.Done() })
				bios[i].Dev = dl
				s.Submit(&bios[i])
			}
		}()
		select {
		case <-submitted:
		case <-time.After(watchdog):
			t.Fatalf("submitting %d bios did not return within %v: Submit waits for the delay", n, watchdog)
		}
		return dl, bios, &wg, start
	}

	// An hour's latency: every bio is held, none has ended, and Close
	// ends them (ESHUTDOWN) rather than leave them.
	dl, bios, wg, _ := run(time.Hour)
	dl.mu.Lock()
	held := len(dl.pending)
	dl.mu.Unlock()
	if held != n {
		t.Fatalf("%d of %d bios held after Submit returned", held, n)
	}
	dl.Close()
	wg.Wait()

	dl, bios, wg, start := run(delay)
	if !stackdtest.Within(wg, watchdog) {
		t.Fatalf("a burst of %d bios with a %v latency did not end within %v: the delay is a throughput cap", n, delay, watchdog)
	}
	if d := time.Since(start); d < delay {
		t.Fatalf("bios completed after %v, before the %v delay", d, delay)
	}
	for i := range bios {
		if err := bios[i].Err(); err != nil {
			t.Fatalf("bio %d: %v", i, err)
		}
	}
	dl.Close()
}

// TestDelayOrder: bios with shorter latencies overtake longer ones that
// arrived before them, as each is due.
func TestDelayOrder(t *testing.T) {
	dl := NewDelay(targets.NewNull(1<<20), DelayLatencies{Read: 60 * time.Millisecond, Flush: 10 * time.Millisecond})
	defer dl.Close()
	var (
		mu    sync.Mutex
		order []bioset.Op
		wg    sync.WaitGroup
	)
	var s bioset.Submitter
	bios := make([]bioset.Bio, 2)
	for i, op := range []bioset.Op{bioset.OpRead, bioset.OpFlush} {
		n := uint64(0)
		var buf []byte
		if op == bioset.OpRead {
			n, buf = 4096, make([]byte, 4096)
		}
		wg.Add(1)
		bios[i].Init(op, 0, n, buf, func(b *bioset.Bio) {
			mu.Lock()
			order = append(order, b.Op)
			mu.Unlock()
			wg.Done()
		})
		bios[i].Dev = dl
		s.Submit(&bios[i])
	}
	wg.Wait()
	if len(order) != 2 || order[0] != bioset.OpFlush {
		t.Fatalf("completion order %v, want the flush first", order)
	}
}

// decodeSpec decodes a stack node as configs does.
func decodeSpec(t *testing.T, src string) (Spec, error) {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	var spec Spec
	err := settings.Named(doc.Content[0], 0, "stack", &spec)
	return spec, err
}

func TestDelayConfig(t *testing.T) {
	spec, err := decodeSpec(t, "delay: {read: 1ms, write: 2ms, other: 0s, leg: {memory: {size: 1MiB}}}")
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := spec.Size(); !ok || n != 1<<20 {
		t.Errorf("Size = %d, %v", n, ok)
	}
	if got := strings.Join(spec.Config.Describe(), " "); got != "read=1ms write=2ms" {
		t.Errorf("Describe = %q", got)
	}
	st := mustBuild(t, "x", spec, BuildOptions{})
	defer st.Close()
	if st.Nodes[1].Path != "x/delay/memory" || st.Nodes[0].Pool != nil {
		t.Errorf("nodes %+v", st.Nodes)
	}
	var s bioset.Submitter
	if err := request(t, &s, st.Root, bioset.OpWrite, 0, 0, 4096, make([]byte, 4096), nil); err != nil {
		t.Fatal(err)
	}
	if e := st.Nodes[0].Errors(); e != 0 {
		t.Errorf("errors %d", e)
	}
}

// TestDelayConfigErrors: the delay's values, and a configuration that
// still gives a leaf a delay of its own, as leaves once had.
func TestDelayConfigErrors(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"delay: {read: 5, leg: {null: {size: 1MiB}}}",
			`line 1: delay read: "5" is not a duration; want a number and a unit such as 10s, 1ms or 250us`},
		{"delay:\n  write: -1ms\n  leg: {null: {size: 1MiB}}",
			`line 2: delay write: -1ms: a duration cannot be negative`},
		{"delay: {read: 1ms}", `line 1: delay needs "leg"`},
		{"memory: {size: 1MiB, delay: 1ms}",
			`line 1: unknown key "delay" in memory; delay is a layer, not a setting of memory: put the memory under one, as in delay: {read: 1ms, write: 1ms, leg: {memory: {…}}}`},
	} {
		_, err := decodeSpec(t, c.src)
		var l settings.Errors
		if !errors.As(err, &l) || err.Error() != c.want {
			t.Errorf("%s:\n got %v\nwant %s", c.src, err, c.want)
		}
	}
}
