package remote

import (
	"time"

	"github.com/stackd/stackd/targets"
)

// Counters are a remote leg's counts, which its Stats and its State both
// carry.
type Counters struct {
	// Reconnects counts successful dials after the first; Retried the
	// requests sent again after their connection dropped; TimedOut those
	// that failed with EIO at their timeout.
	Reconnects uint64 `json:"reconnects"`
	Retried    uint64 `json:"retried"`
	TimedOut   uint64 `json:"timed_out"`
	// InFlight is the bios submitted and not yet ended.
	InFlight int64 `json:"in_flight"`
}

func (r *Remote) counters() Counters {
	return Counters{
		Reconnects: r.reconnects.Load(),
		Retried:    r.retried.Load(),
		TimedOut:   r.timedOut.Load(),
		InFlight:   r.inFlight.Load(),
	}
}

// Stats is a remote leg's counters, for the metrics.
type Stats struct {
	Counters
	// States is each connection's state (a StateNames index).
	States []int
	// Latency is the round-trip histogram (the leaves' one,
	// targets.Latency): per bucket of targets.LatencyBounds
	// (not cumulative, the last one +Inf), and the sum.
	Latency    [len(targets.LatencyBounds) + 1]uint64
	LatencySum time.Duration
}

// Stats returns the leg's counters now.
func (r *Remote) Stats() Stats {
	s := Stats{Counters: r.counters()}
	for _, c := range r.conns {
		s.States = append(s.States, int(c.state.Load()))
	}
	s.Latency, _, s.LatencySum = r.latency.Snapshot()
	return s
}

// State is a remote leg's live state, for `stackd status`.
type State struct {
	URI         string      `json:"uri"`
	Connections []ConnState `json:"connections"`
	Counters
}

// ConnState is one connection's state.
type ConnState struct {
	State      string `json:"state"`
	Reconnects uint64 `json:"reconnects"`
	// Queued waits for the connection; Sent is in flight on it.
	Queued int `json:"queued"`
	Sent   int `json:"sent"`
	// LastError is why the last dial failed or the connection dropped.
	LastError string `json:"last_error,omitempty"`
}

// State returns the leg's state now; each connection's part is read
// under that connection's lock.
func (r *Remote) State() State {
	s := State{URI: r.o.Target(), Counters: r.counters()}
	for _, c := range r.conns {
		cs := ConnState{State: StateNames[c.state.Load()], Reconnects: c.reconnects.Load()}
		if e := c.lastErr.Load(); e != nil {
			cs.LastError = *e
		}
		c.mu.Lock()
		cs.Queued = c.queue.Len()
		cs.Sent = c.started
		c.mu.Unlock()
		s.Connections = append(s.Connections, cs)
	}
	return s
}
