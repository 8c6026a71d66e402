package targets_test

import (
	"github.com/stackd/stackd/stack"
	"github.com/stackd/stackd/targets"
)

// The targets satisfy stack.Device without importing stack. This check sits
// in an external test package because stack builds targets from a Spec, and
// an internal test importing stack would then be an import cycle.
var (
	_ stack.Device = (*targets.Memory)(nil)
	_ stack.Device = (*targets.File)(nil)
	_ stack.Device = (*targets.Null)(nil)
	_ stack.Device = (*targets.Backend)(nil)
)
