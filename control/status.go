package control

import (
	"encoding/json"
	"strings"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/stack"
)

// Status is the body of GET /v1/status: the server's figures and every
// export's tree of nodes, as they are at the moment of the request.
type Status struct {
	Server  *ServerStatus  `json:"server,omitempty"`
	Exports []ExportStatus `json:"exports"`
}

// ServerStatus is the NBD server's share of the status.
type ServerStatus struct {
	ConnectionsOpen      int    `json:"connections_open"`
	PayloadInUseBytes    int64  `json:"payload_in_use_bytes"`
	PayloadCapacityBytes int64  `json:"payload_capacity_bytes"`
	PayloadWaits         uint64 `json:"payload_waits"`
	ConnectionsRejected  uint64 `json:"connections_rejected"`
}

// ExportStatus is one export and the tree of nodes that serves it.
type ExportStatus struct {
	Name     string     `json:"name"`
	Size     uint64     `json:"size"`
	Default  bool       `json:"default,omitempty"`
	ReadOnly bool       `json:"read_only,omitempty"`
	Root     NodeStatus `json:"root"`
}

// NodeStatus is one layer or target of a running stack.
type NodeStatus struct {
	// Path names the node in actions and in metrics' layer label.
	Path string `json:"path"`
	Kind string `json:"kind"`
	Size uint64 `json:"size"`
	// Requests counts the bios that entered the node, of every op;
	// Errors those that failed at or below it.
	Requests uint64      `json:"requests"`
	Errors   uint64      `json:"errors"`
	Pool     *PoolStatus `json:"pool,omitempty"`
	// Controlled: the node takes actions (POST …/actions/ACTION), and
	// State is its live state, as the node reports it. StateError says
	// why a state could not be encoded.
	Controlled bool            `json:"controlled,omitempty"`
	State      json.RawMessage `json:"state,omitempty"`
	StateError string          `json:"state_error,omitempty"`
	Legs       []NodeStatus    `json:"legs,omitempty"`
}

// PoolStatus is a layer's pool of bios (bioset.Stats).
type PoolStatus struct {
	Capacity int `json:"capacity"`
	InUse    int `json:"in_use"`
	// Punted counts the bios handed to the rescuer, Rescued those it has
	// submitted, RescueQueue those waiting for it now; Waits the
	// allocations that found the pool empty.
	Punted      uint64 `json:"punted"`
	Rescued     uint64 `json:"rescued"`
	RescueQueue int    `json:"rescue_queue"`
	Waits       uint64 `json:"waits"`
	Rescuer     bool   `json:"rescuer"`
}

// Export is one export the control socket shows and steers.
type Export struct {
	Name              string
	Default, ReadOnly bool
	Stack             *stack.Stack
}

// status takes a snapshot of every export's nodes, and of srv if any.
func status(exports []Export, srv Stater) Status {
	st := Status{Exports: make([]ExportStatus, 0, len(exports))}
	if srv != nil {
		s := srv.Stats()
		st.Server = &ServerStatus{
			ConnectionsOpen:      s.ConnsOpen,
			PayloadInUseBytes:    s.PayloadInUse,
			PayloadCapacityBytes: s.PayloadCapacity,
			PayloadWaits:         s.PayloadWaits,
			ConnectionsRejected:  s.ConnsRejected,
		}
	}
	for _, e := range exports {
		st.Exports = append(st.Exports, ExportStatus{
			Name: e.Name, Size: e.Stack.Root.Size(), Default: e.Default, ReadOnly: e.ReadOnly,
			Root: tree(e.Stack.Nodes),
		})
	}
	return st
}

// Stater is what the status asks of the NBD server.
type Stater interface{ Stats() nbd.ServerStats }

// tree turns a stack's nodes, parents before their legs, into the tree
// their paths describe: a node's legs are the nodes whose path is its
// own and one more element.
func tree(nodes []stack.Node) NodeStatus {
	var build func(i int) (NodeStatus, int)
	// build returns the status of nodes[i] and the index of the first
	// node after its subtree.
	build = func(i int) (NodeStatus, int) {
		ns := nodeStatus(&nodes[i])
		j := i + 1
		for j < len(nodes) && isLeg(nodes[i].Path, nodes[j].Path) {
			var leg NodeStatus
			leg, j = build(j)
			ns.Legs = append(ns.Legs, leg)
		}
		return ns, j
	}
	root, _ := build(0)
	return root
}

// isLeg reports whether path names a leg of the node at parent.
func isLeg(parent, path string) bool {
	rest, ok := strings.CutPrefix(path, parent+"/")
	return ok && !strings.Contains(rest, "/")
}

// nodeStatus is one node's figures and state, without its legs.
func nodeStatus(n *stack.Node) NodeStatus {
	ns := NodeStatus{Path: n.Path, Kind: n.Kind, Size: n.Dev.Size(), Errors: n.Errors()}
	for _, op := range bioset.Ops() {
		ns.Requests += n.Stats.Requests(op)
	}
	if n.Pool != nil {
		s := n.Pool.Stats()
		ns.Pool = &PoolStatus{
			Capacity: s.Capacity, InUse: s.InUse, Punted: s.Punted, Rescued: s.Rescued,
			RescueQueue: s.RescueQueue, Waits: s.Waits, Rescuer: s.RescuerOn,
		}
	}
	if n.Control != nil {
		ns.Controlled = true
		if b, err := json.Marshal(n.Control.State()); err != nil {
			ns.StateError = err.Error()
		} else {
			ns.State = b
		}
	}
	return ns
}
