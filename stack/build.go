package stack

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/targets"
)

// Node is one layer or target of a built stack.
type Node struct {
	// Path is stable across restarts and names the node in metrics:
	// the export name, then the kind of each layer down to this one, a
	// multi-leg layer's legs as "legN" — "default/split/stripe/leg2".
	Path string
	Kind string
	Dev  Device
	// Pool is the layer's BioSet; nil for a target, and for a layer that
	// allocates no bios.
	Pool *bioset.BioSet
	// Stats counts the bios that entered the node.
	Stats *NodeStats
	// Control is the node's device if the operator can steer it (see
	// Controlled); nil otherwise.
	Control Controlled
	// Fault counts what a fault layer (error, flakey) failed or dropped;
	// nil for every other node.
	Fault *FaultStats
	// Service is the counters of a target that waits on a remote service
	// (the rbd target's cluster), for metrics; nil for other nodes.
	Service targets.ServiceStats
	// Remote reports a remote leg's connections and round trips (the
	// nbd kind); nil for every other node.
	Remote interface{ RemoteStats() RemoteStats }
	// Memory reports a memory target's chunk memory, for metrics; nil for
	// every other node.
	Memory MemoryStats
	// errorSources are the nodes at or below this one that count the bios
	// they fail: targets and fault layers. ownErrors is this node's own,
	// or nil.
	errorSources []errorSource
	ownErrors    errorSource
}

type errorSource interface{ Errors() uint64 }

// Errors returns how many bios failed at or below the node. Errors arise
// at targets and fault layers and travel up their parents' chains, so a
// layer's count is the sum of theirs.
func (n *Node) Errors() uint64 {
	var sum uint64
	for _, e := range n.errorSources {
		sum += e.Errors()
	}
	return sum
}

// Stack is a built stack: its top device and every node below it.
type Stack struct {
	Root Device
	// Nodes lists every node, parents before their legs.
	Nodes []Node
	opts  BuildOptions
}

// Close closes every node, top down, once no bio is in flight.
func (st *Stack) Close() error {
	var errs []error
	for _, n := range st.Nodes {
		if err := n.Dev.Close(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.Path, err))
		}
	}
	return errors.Join(errs...)
}

// BuildOptions are what a stack's nodes learn from the export it serves.
type BuildOptions struct {
	// ReadOnly: the export refuses writes, so the leaves open what they
	// serve read-only (a file an export may not write can then be
	// served: one only root may read, or one made immutable).
	ReadOnly bool
	// Logger receives the nodes' logs (absent: slog.Default()).
	Logger *slog.Logger
}

// Build creates the devices that spec describes, for the export called
// name. On error, whatever was already built is closed.
func Build(name string, spec Spec, o BuildOptions) (*Stack, error) {
	st := &Stack{opts: o}
	root, err := st.build(name+"/"+spec.Kind(), spec)
	if err != nil {
		st.Close()
		return nil, err
	}
	st.Root = root
	return st, nil
}

func (st *Stack) log() *slog.Logger {
	if st.opts.Logger != nil {
		return st.opts.Logger
	}
	return slog.Default()
}

func (st *Stack) build(path string, spec Spec) (Device, error) {
	if spec.Config == nil {
		return nil, fmt.Errorf("%s: a node with no kind", path)
	}
	var legs []Device
	first := len(st.Nodes)
	for i, l := range spec.Config.LegSpecs() {
		p := path + "/leg" + strconv.Itoa(i)
		if kinds[spec.Kind()].Legs == OneLeg {
			p = path + "/" + l.Kind()
		}
		d, err := st.build(p, l)
		if err != nil {
			return nil, err
		}
		legs = append(legs, d)
	}
	dev, err := spec.Config.Build(legs, BuildContext{Path: path, ReadOnly: st.opts.ReadOnly, Log: st.log()})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c := &counted{Device: dev}
	n := Node{Path: path, Kind: spec.Kind(), Dev: c, Stats: &c.stats}
	if l, ok := dev.(interface{ Pool() *bioset.BioSet }); ok {
		n.Pool = l.Pool()
	}
	if e, ok := dev.(errorSource); ok {
		n.ownErrors = e
		n.errorSources = []errorSource{e}
	}
	if ctl, ok := dev.(Controlled); ok {
		n.Control = ctl
	}
	if f, ok := dev.(interface{ Faults() *FaultStats }); ok {
		n.Fault = f.Faults()
	}
	if svc, ok := dev.(targets.ServiceStats); ok {
		n.Service = svc
	}
	if r, ok := dev.(interface{ RemoteStats() RemoteStats }); ok {
		n.Remote = r
	}
	if mem, ok := dev.(MemoryStats); ok {
		n.Memory = mem
	}
	for _, below := range st.Nodes[first:] {
		if below.ownErrors != nil {
			n.errorSources = append(n.errorSources, below.ownErrors)
		}
	}
	// Parents go before their legs in Nodes: insert this node before the
	// nodes built for its legs during the recursion.
	st.Nodes = append(st.Nodes, Node{})
	copy(st.Nodes[first+1:], st.Nodes[first:])
	st.Nodes[first] = n
	return c, nil
}
