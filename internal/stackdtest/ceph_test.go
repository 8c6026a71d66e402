package stackdtest

import (
	"strings"
	"testing"
)

// TestStartCeph brings a cluster up and creates an image in its pool.
func TestStartCeph(t *testing.T) {
	c := StartCeph(t)
	c.CreateImage(t, "disk0", 64<<20)
	if out := c.RBD(t, "info", "disk0"); !strings.Contains(out, "size 64 MiB") {
		t.Fatalf("rbd info disk0:\n%s", out)
	}
}
