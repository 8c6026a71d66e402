// Package controltest registers two node kinds that implement
// stack.Controlled, for the tests of the control socket: the real ones
// (mirror, error, flakey) are built elsewhere, and the socket must be
// tested without them. Only tests import this package, so the kinds never
// reach a configuration stackd itself accepts.
//
//	testswitch: {leg: NODE}         actions on, off, down-now on the node
//	testmirror: {legs: [NODE, …]}   actions fail, restore on a leg
//
// Both pass every bio to their first leg unchanged: what they stand for
// is their state and the actions that change it, not their I/O.
package controltest

import (
	"fmt"
	"sync"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/stack"
)

// Stack is a stack node in YAML flow style for the tests: a test mirror
// under a split, whose first leg is a test switch over memory and whose
// second is memory, 1 MiB each. Its paths, in an export "disk":
//
//	disk/split
//	disk/split/testmirror
//	disk/split/testmirror/leg0          the testswitch
//	disk/split/testmirror/leg0/memory
//	disk/split/testmirror/leg1          memory
const Stack = "{split: {max_bytes: 64KiB, leg: {testmirror: {legs: [" +
	"{testswitch: {leg: {memory: {size: 1MiB}}}}, {memory: {size: 1MiB}}]}}}}"

// The kinds' names, as a stack node's key.
const (
	KindSwitch = "testswitch"
	KindMirror = "testmirror"
)

func init() {
	stack.Register(stack.Kind{New: func() stack.Settings { return new(SwitchConfig) }, Rank: 90, Legs: stack.OneLeg})
	stack.Register(stack.Kind{New: func() stack.Settings { return new(MirrorConfig) }, Rank: 91, Legs: stack.ManyLegs})
}

// passthrough is the I/O both kinds share: every bio goes to the first leg.
type passthrough struct{ leg stack.Device }

func (p passthrough) Size() uint64      { return p.leg.Size() }
func (p passthrough) Caps() bioset.Caps { return p.leg.Caps() }
func (p passthrough) Close() error      { return nil }
func (p passthrough) Submit(s *bioset.Submitter, b *bioset.Bio) {
	b.Dev = p.leg
	s.Submit(b)
}

// Switch stands for a fault layer: on, off, or down until switched again.
type Switch struct {
	passthrough
	mu       sync.Mutex
	mode     string
	switches int
}

// SwitchState is what Switch.State returns.
type SwitchState struct {
	Mode     string `json:"mode"`
	Switches int    `json:"switches"`
}

func (sw *Switch) State() any {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return SwitchState{Mode: sw.mode, Switches: sw.switches}
}

func (sw *Switch) Act(action string, leg int) error {
	if leg >= 0 {
		return fmt.Errorf("a %s has no leg actions", KindSwitch)
	}
	mode, ok := map[string]string{"on": "on", "off": "off", "down-now": "down"}[action]
	if !ok {
		return fmt.Errorf("%w %q; a %s takes on, off or down-now", stack.ErrUnknownAction, action, KindSwitch)
	}
	sw.mu.Lock()
	defer sw.mu.Unlock()
	sw.mode = mode
	sw.switches++
	return nil
}

// Mirror stands for a mirror: each leg is in_sync, faulty or resyncing.
type Mirror struct {
	passthrough
	mu   sync.Mutex
	legs []LegState
}

// MirrorState is what Mirror.State returns: one entry per leg, in order,
// as the control socket's status shows beside each leg.
type MirrorState struct {
	Legs []LegState `json:"legs"`
}

// LegState is one leg's state. A restored leg resyncs at ResyncRate,
// bytes a second, and stays at 0% here: the fake copies nothing.
type LegState struct {
	State      string   `json:"state"`
	Percent    *float64 `json:"percent,omitempty"`
	ResyncRate uint64   `json:"resync_bytes_per_second,omitempty"`
}

// ResyncRate is the rate a restored leg of a Mirror shows.
const ResyncRate = 256 << 20

func (m *Mirror) State() any {
	m.mu.Lock()
	defer m.mu.Unlock()
	return MirrorState{Legs: append([]LegState(nil), m.legs...)}
}

func (m *Mirror) Act(action string, leg int) error {
	if action != "fail" && action != "restore" {
		return fmt.Errorf("%w %q; a %s takes fail or restore, on a leg", stack.ErrUnknownAction, action, KindMirror)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if leg < 0 || leg >= len(m.legs) {
		return fmt.Errorf("%s acts on one of its %d legs, not on itself", action, len(m.legs))
	}
	switch {
	case action == "fail" && m.legs[leg].State == "faulty":
		return fmt.Errorf("leg %d is faulty already", leg)
	case action == "fail" && m.inSync() == 1 && m.legs[leg].State == "in_sync":
		return fmt.Errorf("leg %d is the last one in sync", leg)
	case action == "fail":
		m.legs[leg] = LegState{State: "faulty"}
	case m.legs[leg].State != "faulty":
		return fmt.Errorf("leg %d is %s, not faulty", leg, m.legs[leg].State)
	default:
		m.legs[leg] = LegState{State: "resyncing", Percent: new(float64), ResyncRate: ResyncRate}
	}
	return nil
}

func (m *Mirror) inSync() int {
	n := 0
	for _, l := range m.legs {
		if l.State == "in_sync" {
			n++
		}
	}
	return n
}

// SwitchConfig is the settings of a testswitch node.
type SwitchConfig struct {
	Leg stack.Leg `yaml:"leg" need:"true"`
}

func (c *SwitchConfig) Kind() string                                { return KindSwitch }
func (c *SwitchConfig) LegSpecs() []stack.Spec                      { return []stack.Spec{c.Leg.Spec} }
func (c *SwitchConfig) Check(p *settings.Problems)                  {}
func (c *SwitchConfig) NodeSize(legs []stack.Sized) (uint64, error) { return legs[0].Bytes, nil }
func (c *SwitchConfig) Describe() []string                          { return nil }
func (c *SwitchConfig) Build(legs []stack.Device, _ stack.BuildContext) (stack.Device, error) {
	return &Switch{passthrough: passthrough{legs[0]}, mode: "on"}, nil
}

// MirrorConfig is the settings of a testmirror node.
type MirrorConfig struct {
	Legs settings.List[stack.Spec] `yaml:"legs" need:"true" item:"leg"`
}

func (c *MirrorConfig) Kind() string                                { return KindMirror }
func (c *MirrorConfig) LegSpecs() []stack.Spec                      { return c.Legs.Items }
func (c *MirrorConfig) Check(p *settings.Problems)                  {}
func (c *MirrorConfig) NodeSize(legs []stack.Sized) (uint64, error) { return legs[0].Bytes, nil }
func (c *MirrorConfig) Describe() []string                          { return nil }
func (c *MirrorConfig) Build(legs []stack.Device, _ stack.BuildContext) (stack.Device, error) {
	m := &Mirror{passthrough: passthrough{legs[0]}, legs: make([]LegState, len(legs))}
	for i := range m.legs {
		m.legs[i].State = "in_sync"
	}
	return m, nil
}
