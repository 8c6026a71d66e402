package stack

import (
	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/targets"
)

// KindNull is the null target's kind.
const KindNull = "null"

func init() { Register(Kind{New: func() Settings { return new(NullConfig) }, Rank: 60}) }

// NullConfig is the settings of a null leaf, which discards writes and
// reads zeroes:
//
//	null: {size: 1GiB}
type NullConfig struct {
	leaf
	// Size is required, a positive multiple of 512.
	Size settings.Size `yaml:"size" need:"true"`
}

func (c *NullConfig) Kind() string { return KindNull }

func (c *NullConfig) Check(p *settings.Problems) { checkBlocks(p, "null size", c.Size) }

func (c *NullConfig) NodeSize(legs []Sized) (uint64, error) { return c.Size.Bytes, nil }

func (c *NullConfig) Build(legs []Device, b BuildContext) (Device, error) {
	return targets.NewNull(c.Size.Bytes), nil
}

func (c *NullConfig) Describe() []string { return nil }
