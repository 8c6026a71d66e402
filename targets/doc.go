// Package targets holds stackd's leaf targets: the devices at the bottom of
// a stack that actually store (or, for Null, discard) the bytes.
//
// A target performs a bio and calls b.End, either inside Submit or later
// from one of its own goroutines. It never allocates from a BioSet and never
// waits for another bio (docs/DESIGN.md rules 3 and 8), so it can sit under
// any layer without taking part in the forward-progress argument of package
// bioset: it always makes progress on its own.
//
// Targets satisfy stack.Device without importing package stack, keeping the
// dependency arrow pointing from stack to targets and both to bioset.
package targets
