package stack

import "time"

// The kinds of node a Spec can describe.
const (
	KindSplit  = "split"
	KindStripe = "stripe"
	KindLinear = "linear"
	KindMemory = "memory"
	KindFile   = "file"
	KindNull   = "null"
)

// Spec describes a stack as a tree: a layer with its legs, or a leaf
// target. It is the plain Go form that configs/ decodes YAML into; Build
// turns it into running devices. Fields that do not apply to a kind must be
// zero.
type Spec struct {
	Kind string

	// split: READ and WRITE longer than MaxBytes are cut into pieces of
	// at most MaxBytes, and no piece of any op but BLOCK_STATUS crosses a
	// multiple of Boundary (0: none). See Split for why.
	MaxBytes uint64
	Boundary uint64

	// stripe: chunk size (a multiple of 512). memory: allocation chunk
	// (0: DefaultMemoryChunk).
	Chunk uint64

	// memory, null, file: size in bytes. For file, the size of the file to
	// create when missing; an existing file must be at least this large (0:
	// use the existing file's size).
	Size uint64
	// file: path of the file or block device.
	Path string
	// memory, file, null: added latency per request, to model a slow leg.
	Delay time.Duration

	// Pool sizes the layer's BioSet (layers only).
	Pool PoolSpec

	// Legs of a stripe or linear layer; the single leg of a split.
	Legs []Spec
}

// PoolSpec sizes a layer's BioSet.
type PoolSpec struct {
	// Capacity in bios (0: DefaultPoolCapacity).
	Capacity int
	// NoRescuer turns the layer's rescuer off. Only for demonstrating the
	// deadlock the rescuer prevents.
	NoRescuer bool
}

// DefaultPoolCapacity is a layer's pool size when the Spec gives none: large
// enough that a 32 MiB request through a 64 KiB-chunk stripe (512 children)
// rarely waits, small enough to stay a bound (a bio is 168 bytes on
// amd64).
const DefaultPoolCapacity = 1024
