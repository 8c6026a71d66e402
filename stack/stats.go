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
	c.stats.requests[b.Op].Add(1)
	c.stats.bytes[b.Op].Add(b.Length)
	c.Device.Submit(s, b)
}
