// Package stack holds stackd's stacking layers — split, stripe, linear,
// delay, and the fault layers error and flakey — and builds a stack of
// layers over leaf targets from a Spec.
//
// A layer remaps a bio in place when it falls on one leg, and otherwise
// serves it with children allocated from the layer's own BioSet, each
// submitted before the next is allocated (docs/DESIGN.md rules 3 and 4).
// Layers never import the NBD code: they see only bios.
package stack

import "github.com/stackd/stackd/bioset"

// Device is what every layer and leaf target implements. Targets live in
// package targets and satisfy it without importing this package.
type Device interface {
	bioset.Queue
	// Size in bytes.
	Size() uint64
	// Caps reports the optional operations the device, and everything
	// below it, supports.
	Caps() bioset.Caps
	// Close releases the device once no bio is in flight. A layer closes
	// its own pool, not its legs: Stack.Close closes every device once.
	Close() error
}
