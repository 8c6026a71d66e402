package metrics

import (
	"context"
	"strings"
	"testing"
)

// TestMemorySeries: a memory target reports the chunk memory it holds, and
// the span its writes filled becoming one huge page; the README documents
// both metrics.
func TestMemorySeries(t *testing.T) {
	r := startRig(t, `
exports:
  - name: ram
    default: true
    stack: {memory: {size: 8MiB}}
`, true, Options{})
	c := r.dial(t, "ram")
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	// One whole 2 MiB span of 64 KiB chunks, and 4 KiB in a chunk of
	// another span.
	if err := c.Write(ctx, 0, make([]byte, 2<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, 5<<20, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	g := gather(t, r.m)
	const layer = "layer=ram/memory"
	if v := g.value(t, "stackd_memory_allocated_bytes", layer); v != 2<<20+64<<10 {
		t.Errorf("allocated: %v bytes, want %d", v, 2<<20+64<<10)
	}
	if v := g.value(t, "stackd_memory_spans_collapsed_total", layer); v != 1 {
		t.Errorf("spans collapsed: %v, want 1", v)
	}
	readme := string(readFile(t, "../README.md"))
	for name := range g {
		if strings.HasPrefix(name, "stackd_memory_") && !strings.Contains(readme, "`"+name+"`") {
			t.Errorf("README does not document %s", name)
		}
	}
}
