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

// TestRBDImageUsedTwice: an image backs one leg only, caught before the
// cluster is asked anything.
func TestRBDImageUsedTwice(t *testing.T) {
	var s Spec
	doc := "stripe:\n  chunk: 64KiB\n  legs:\n    - rbd: {pool: rbd, image: disk0}\n    - rbd: {pool: rbd, image: disk0}\n"
	if err := yaml.Unmarshal([]byte(doc), &s); err != nil {
		t.Fatal(err)
	}
	var h Host
	var p settings.Problems
	h.CheckHost(s, &p)
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "line 5: rbd image rbd/disk0 is already used at line 4") {
		t.Fatalf("two legs on one image: %v", err)
	}
}
