package stack

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/settings"
)

// Flakey alternates between up, when it passes every request to its leg
// unchanged, and down, when it misbehaves as its mode says, like
// dm-flakey: a disk or a link that comes and goes. It is up for its up
// period from when it is built, then down for its down period, and so on.
//
// The phase is not a timer: it is computed on each request from the
// clock and the time the current cycle began, one atomic load, so that no
// goroutine runs and the request path takes no lock. The operator's
// actions move the cycle's start (down-now starts a cycle an up period
// ago, so that it is down now) or switch the layer off. Failures and
// drops end the bio at once: a failed one with EIO, a dropped write with
// success, without reaching the leg (docs/DESIGN.md rule 6: End with a
// stored error allocates nothing). A bio that passes is remapped onto
// the leg, so the layer allocates no bio and has no pool.
type Flakey struct {
	FaultStats
	leg      Device
	up, down time.Duration
	mode     FlakeyMode
	now      func() time.Time
	// base is the clock when the layer was built; times below are
	// nanoseconds since it, so that one int64 holds a time.
	base time.Time
	// start is when the current cycle began (an up period starts then),
	// or flakeyOff. One atomic, so that a request sees the switch and
	// the cycle of one action together.
	start atomic.Int64
	// mu orders the actions, each a read and a write of start; the
	// request path only loads it.
	mu sync.Mutex
}

// flakeyOff is Flakey.start while the layer is switched off.
const flakeyOff = math.MinInt64

// maxFlakeyCycle bounds up + down, so that a cycle's length fits a
// time.Duration (about 292 years) and the phase arithmetic cannot wrap.
const maxFlakeyCycle = time.Duration(math.MaxInt64)

// FlakeyMode is what a Flakey does while down.
type FlakeyMode uint8

const (
	// FlakeyError fails every request with EIO.
	FlakeyError FlakeyMode = iota
	// FlakeyDropWrites acknowledges every write and discards it, and
	// serves reads: a disk that loses writes.
	FlakeyDropWrites
	// FlakeyErrorWrites fails every write with EIO, and serves reads.
	FlakeyErrorWrites
)

var flakeyModes = []string{"error", "drop_writes", "error_writes"}

func (m FlakeyMode) String() string { return flakeyModes[m] }

// writes reports whether op is one that drop_writes and error_writes
// treat as a write: everything that asks the device to store something,
// FLUSH included, as dm-flakey counts every bio that goes to the disk.
func writes(op bioset.Op) bool {
	switch op {
	case bioset.OpWrite, bioset.OpTrim, bioset.OpWriteZeroes, bioset.OpFlush:
		return true
	}
	return false
}

// FlakeyOptions are a Flakey's cycle and mode.
type FlakeyOptions struct {
	// Up and Down are the lengths of the two phases; both positive.
	Up, Down time.Duration
	Mode     FlakeyMode
	// Now is the clock; nil: time.Now. Tests give a fake one.
	Now func() time.Time
}

// NewFlakey returns a flakey layer over leg, switched on, at the start
// of an up period.
func NewFlakey(leg Device, o FlakeyOptions) (*Flakey, error) {
	if o.Up <= 0 || o.Down <= 0 || o.Up > maxFlakeyCycle-o.Down {
		return nil, fmt.Errorf("flakey: up %v and down %v must both be positive, and together at most %v", o.Up, o.Down, maxFlakeyCycle)
	}
	f := &Flakey{leg: leg, up: o.Up, down: o.Down, mode: o.Mode, now: o.Now}
	if f.now == nil {
		f.now = time.Now
	}
	f.base = f.now()
	return f, nil
}

func (f *Flakey) Size() uint64      { return f.leg.Size() }
func (f *Flakey) Caps() bioset.Caps { return f.leg.Caps() }
func (f *Flakey) Close() error      { return nil }

func (f *Flakey) clock() int64 { return int64(f.now().Sub(f.base)) }

// phase returns whether the layer is down at time t (since base), given
// the cycle's start, and when that phase ends.
func (f *Flakey) phase(start, t int64) (down bool, until int64) {
	period := int64(f.up + f.down)
	in := (t - start) % period
	if in < 0 {
		in += period
	}
	cycle := t - in
	if in < int64(f.up) {
		return false, cycle + int64(f.up)
	}
	return true, cycle + period
}

// Submit implements bioset.Queue.
func (f *Flakey) Submit(s *bioset.Submitter, b *bioset.Bio) {
	if start := f.start.Load(); start != flakeyOff {
		if down, _ := f.phase(start, f.clock()); down {
			switch {
			case f.mode == FlakeyError, f.mode == FlakeyErrorWrites && writes(b.Op):
				f.failed.Add(1)
				b.End(syscall.EIO)
				return
			case f.mode == FlakeyDropWrites && writes(b.Op):
				f.dropped.Add(1)
				b.End(nil)
				return
			}
		}
	}
	remap(s, b, f.leg, b.Offset)
}

// State implements Controlled.
func (f *Flakey) State() any {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := FaultState{Kind: KindFlakey, Mode: f.mode.String(), State: "up", Failed: f.Failed(), Dropped: f.Dropped()}
	if start := f.start.Load(); start != flakeyOff {
		down, until := f.phase(start, f.clock())
		st.Enabled = true
		if down {
			st.State = "down"
		}
		st.Until = f.base.Add(time.Duration(until))
	}
	return st
}

// Act implements Controlled. on arms a layer that is off, at the start of
// an up period, as when it was built, and leaves one that is on in its
// cycle; off passes every request through until the next on; down-now
// starts a down period now, for the layer's down period, and then the
// cycle goes on (up, down, …), arming the layer if it was off.
func (f *Flakey) Act(action string, leg int) error {
	if !slices.Contains([]string{ActionOn, ActionOff, ActionDownNow}, action) {
		return fmt.Errorf("%w %q for a flakey layer; want %q, %q or %q", ErrUnknownAction, action, ActionOn, ActionOff, ActionDownNow)
	}
	if err := checkSelf(KindFlakey, leg); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch action {
	case ActionOn:
		if f.start.Load() == flakeyOff {
			f.start.Store(f.clock())
		}
	case ActionOff:
		f.start.Store(flakeyOff)
	case ActionDownNow:
		f.start.Store(f.clock() - int64(f.up))
	}
	return nil
}

// KindFlakey is the flakey layer's kind.
const KindFlakey = "flakey"

func init() {
	Register(Kind{New: func() Settings { return new(FlakeyConfig) }, Rank: 37, Legs: OneLeg, Example: "up: 5s, down: 1s"})
}

// FlakeyConfig is the settings of a flakey node:
//
//	flakey: {up: 5s, down: 1s, mode: error, leg: NODE}
type FlakeyConfig struct {
	// Up is how long the layer serves normally in each cycle: required,
	// positive.
	Up settings.Duration `yaml:"up" need:"true"`
	// Down is how long it then misbehaves: required, positive.
	Down settings.Duration `yaml:"down" need:"true"`
	// Mode is what it does while down: error (the default) fails every
	// request with EIO; drop_writes acknowledges writes, trims, zeroes
	// and flushes and discards them, and serves the rest; error_writes
	// fails those with EIO, and serves the rest.
	Mode settings.String `yaml:"mode"`
	// Leg is the one stack node below.
	Leg Leg `yaml:"leg" need:"true"`
}

func (c *FlakeyConfig) Kind() string                          { return KindFlakey }
func (c *FlakeyConfig) LegSpecs() []Spec                      { return []Spec{c.Leg.Spec} }
func (c *FlakeyConfig) NodeSize(legs []Sized) (uint64, error) { return legs[0].Bytes, nil }

func (c *FlakeyConfig) Check(p *settings.Problems) {
	for _, d := range []struct {
		key string
		v   settings.Duration
	}{{"up", c.Up}, {"down", c.Down}} {
		if d.v.Line > 0 && d.v.D == 0 {
			p.At(d.v.Line, "flakey %s must be greater than zero", d.key)
		}
	}
	if up, down := c.Up, c.Down; up.D > 0 && down.D > 0 && up.D > maxFlakeyCycle-down.D {
		p.At(down.Line, "flakey up %s and down %s together are longer than %v, the longest cycle", up, down, maxFlakeyCycle)
	}
	if m := c.Mode; m.Line > 0 && !slices.Contains(flakeyModes, m.S) {
		p.At(m.Line, "flakey mode: unknown mode %q%s", m.S, settings.Suggest(m.S, flakeyModes, ""))
	}
}

func (c *FlakeyConfig) mode() FlakeyMode {
	if i := slices.Index(flakeyModes, c.Mode.S); i > 0 {
		return FlakeyMode(i)
	}
	return FlakeyError
}

func (c *FlakeyConfig) Build(legs []Device, _ BuildContext) (Device, error) {
	return NewFlakey(legs[0], FlakeyOptions{Up: c.Up.D, Down: c.Down.D, Mode: c.mode()})
}

func (c *FlakeyConfig) Describe() []string {
	return []string{"up=" + c.Up.String(), "down=" + c.Down.String(), "mode=" + c.mode().String()}
}
