package stack

import (
	"sync/atomic"

	"github.com/stackd/stackd/bioset"
)

// NodeStats counts the bios that enter a node from above, by op. A split's
// requeued remainder is not counted again, so Requests and Bytes are what
// the node was asked to do, not how often it looked at it.
type NodeStats struct {
	requests [bioset.NumOps]atomic.Uint64
	bytes    [bioset.NumOps]atomic.Uint64
}

// Requests returns the bios of op that entered the node.
func (ns *NodeStats) Requests(op bioset.Op) uint64 { return ns.requests[op].Load() }

// Bytes returns the bytes those bios addressed (FLUSH addresses none).
func (ns *NodeStats) Bytes(op bioset.Op) uint64 { return ns.bytes[op].Load() }

// counted is how Build attaches NodeStats to a node: it wraps the device
// and counts each bio on its way in. Layers hold their legs' wrappers, so
// every bio a layer sends down is counted once at the leg it reaches.
type counted struct {
	Device
	stats NodeStats
}

func (c *counted) Submit(s *bioset.Submitter, b *bioset.Bio) {
	c.count(b.Op, b.Length)
	c.Device.Submit(s, b)
}

func (c *counted) count(op bioset.Op, length uint64) {
	c.stats.requests[op].Add(1)
	c.stats.bytes[op].Add(length)
}

// Direct passes the device's direct access up (see bioset.Direct),
// counting each direct write as the WRITE bio it stands for.
func (c *counted) Direct() bioset.Direct {
	if d := bioset.DirectOf(c.Device); d != nil {
		return countedDirect{c, d}
	}
	return nil
}

type countedDirect struct {
	c *counted
	d bioset.Direct
}

func (cd countedDirect) WriteDirect(off, length uint64, head []byte, fill func([]byte) error) error {
	cd.c.count(bioset.OpWrite, length)
	return cd.d.WriteDirect(off, length, head, fill)
}

// FaultStats counts what a fault layer (error, flakey) did to the bios it
// was given instead of passing them on: Failed were ended with an error,
// Dropped were acknowledged without reaching the leg. Atomic adds, so the
// request path takes no lock for them.
type FaultStats struct {
	failed  atomic.Uint64
	dropped atomic.Uint64
}

// Failed returns how many bios the layer failed.
func (fs *FaultStats) Failed() uint64 { return fs.failed.Load() }

// Dropped returns how many writes the layer acknowledged and discarded.
func (fs *FaultStats) Dropped() uint64 { return fs.dropped.Load() }

// Errors makes a fault layer an error source for Node.Errors: the bios it
// fails are failures at or below every node above it.
func (fs *FaultStats) Errors() uint64 { return fs.Failed() }

// Faults returns fs, for Build to find a fault layer's counters.
func (fs *FaultStats) Faults() *FaultStats { return fs }
