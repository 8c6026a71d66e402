//go:build !rbd

package stack

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/stackd/stackd/settings"
)

// TestRBDWithoutLibrbd: a stackd built without the rbd tag still knows
// the kind, and its host check says at the image's line how to build one
// that serves it.
func TestRBDWithoutLibrbd(t *testing.T) {
	var s Spec
	if err := yaml.Unmarshal([]byte("rbd:\n  pool: rbd\n  image: disk0\n"), &s); err != nil {
		t.Fatal(err)
	}
	var h Host
	var p settings.Problems
	h.CheckHost(s, &p)
	err := p.Err()
	if err == nil || !strings.Contains(err.Error(), "-tags rbd,pacific") || !strings.HasPrefix(err.Error(), "line 3: ") {
		t.Fatalf("host check of an rbd node without librbd: %v; want, at line 3, how to build with the rbd tag", err)
	}
	if _, ok := s.Size(); ok {
		t.Errorf("the node's size is known after a failed host check")
	}
	if _, err := Build("a", s, BuildOptions{}); err == nil || !strings.Contains(err.Error(), "make build-rbd") {
		t.Errorf("Build of an rbd node without librbd: %v", err)
	}
}
