package stack

import (
	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/targets"
)

// KindMemory is the memory target's kind.
const KindMemory = "memory"

func init() { Register(Kind{New: func() Settings { return new(MemoryConfig) }, Rank: 40}) }

// minMemoryChunk is the smallest memory allocation chunk: a page.
const minMemoryChunk = 4 << 10

// MemoryConfig is the settings of a memory leaf, RAM allocated as it is
// written:
//
//	memory: {size: 256MiB, chunk: 64KiB}
type MemoryConfig struct {
	leaf
	// Size is required, a positive multiple of 512.
	Size settings.Size `yaml:"size" need:"true"`
	// Chunk is the allocation unit: a power of two, at least 4KiB
	// (absent: targets.DefaultMemoryChunk).
	Chunk settings.Size `yaml:"chunk"`
}

func (c *MemoryConfig) Kind() string { return KindMemory }

// MemoryStats is what a memory node reports for metrics
// (targets.Memory): the chunk memory it holds, and how often its chunks
// were gathered into huge pages.
type MemoryStats interface {
	Allocated() uint64
	CollapsedSpans() uint64
}

func (c *MemoryConfig) Check(p *settings.Problems) {
	checkBlocks(p, "memory size", c.Size)
	switch ch := c.Chunk; {
	case ch.Line == 0:
	case ch.Bytes&(ch.Bytes-1) != 0 || ch.Bytes == 0:
		p.At(ch.Line, "memory chunk: %s is not a power of two", ch)
	case ch.Bytes < minMemoryChunk:
		p.At(ch.Line, "memory chunk: %s is smaller than %s, a page", ch, settings.FormatSize(minMemoryChunk))
	}
}

func (c *MemoryConfig) NodeSize(legs []Sized) (uint64, error) { return c.Size.Bytes, nil }

func (c *MemoryConfig) Build(legs []Device, b BuildContext) (Device, error) {
	return targets.NewMemory(c.Size.Bytes, c.Chunk.Bytes), nil
}

func (c *MemoryConfig) Describe() []string {
	if c.Chunk.Bytes == 0 {
		return nil
	}
	return []string{"chunk=" + c.Chunk.String()}
}
