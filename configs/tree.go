package configs

import (
	"fmt"
	"io"
	"strings"

	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/stack"
)

// FormatTree writes each export of c and its stack as an indented tree,
// one node a line with its size, for `stackd check`:
//
//	default (1GiB, default) "striped RAM disk"
//	  split 1GiB max_bytes=1MiB pool=1024
//	    stripe 1GiB chunk=64KiB legs=4 pool=1024
//	      memory 256MiB
//	      …
//
// Sizes are in the units the configuration accepts. Write errors are
// ignored, as fmt.Fprint callers usually do: the writer is a terminal.
func FormatTree(w io.Writer, c *Config) {
	var b strings.Builder
	for _, e := range c.Exports {
		attrs := []string{sizeOf(e.Stack)}
		if e.Default {
			attrs = append(attrs, "default")
		}
		if e.ReadOnly {
			attrs = append(attrs, "read-only")
		}
		if e.TLSRequired {
			attrs = append(attrs, "tls only")
		}
		if len(e.Allow) > 0 {
			attrs = append(attrs, fmt.Sprintf("allow: %d rules", len(e.Allow)))
		}
		fmt.Fprintf(&b, "%s (%s)", settings.Word(e.Name), strings.Join(attrs, ", "))
		if e.Description != "" {
			fmt.Fprintf(&b, " %q", e.Description)
		}
		b.WriteByte('\n')
		formatNode(&b, e.Stack, 1)
	}
	io.WriteString(w, b.String())
}

func sizeOf(s stack.Spec) string {
	n, ok := s.Size()
	if !ok {
		return "size unknown"
	}
	return settings.FormatSize(n)
}

// formatNode writes s and its legs, asking each node's kind for its words.
func formatNode(b *strings.Builder, s stack.Spec, depth int) {
	fields := append([]string{s.Kind(), sizeOf(s)}, s.Config.Describe()...)
	b.WriteString(strings.Repeat("  ", depth))
	b.WriteString(strings.Join(fields, " "))
	b.WriteByte('\n')
	for _, l := range s.Config.LegSpecs() {
		formatNode(b, l, depth+1)
	}
}
