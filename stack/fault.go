package stack

import (
	"fmt"
	"time"
)

// What the two fault layers, error and flakey, share: the state they show
// in `stackd status` and the actions the control socket sends them. Each
// layer's own rules are in its file (error.go, flakey.go).

// The actions a fault layer takes (Controlled.Act).
const (
	// ActionOn arms the layer: it injects its faults.
	ActionOn = "on"
	// ActionOff disarms it: every request passes through to the leg.
	ActionOff = "off"
	// ActionDownNow sends a flakey layer down at once, for its down
	// period; an error layer refuses it.
	ActionDownNow = "down-now"
)

// FaultState is a fault layer's live state, for `stackd status`.
type FaultState struct {
	// Kind is "error" or "flakey".
	Kind string `json:"kind"`
	// Enabled: the layer injects its faults (on); off, it passes every
	// request through.
	Enabled bool `json:"enabled"`
	// Mode is a flakey layer's mode (error, drop_writes, error_writes).
	Mode string `json:"mode,omitempty"`
	// State is a flakey layer's phase now, "up" or "down"; a flakey
	// layer that is off is up.
	State string `json:"state,omitempty"`
	// Until is when a flakey layer that is on changes phase next.
	Until time.Time `json:"until,omitzero"`
	// Failed counts the requests the layer ended with an error, Dropped
	// the writes it acknowledged and discarded.
	Failed  uint64 `json:"failed"`
	Dropped uint64 `json:"dropped"`
}

// checkSelf is the answer of a fault layer to an action on one of its
// legs: it has one leg, which is not the operator's to steer.
func checkSelf(kind string, leg int) error {
	if leg != -1 {
		return fmt.Errorf("%s acts on itself, not on a leg: want leg -1, got %d", kind, leg)
	}
	return nil
}
