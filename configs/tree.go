package configs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode"

	"github.com/stackd/stackd/stack"
)

// StackSize returns the size in bytes of the device s describes, by the
// rules Parse checks: a leaf's size, or for a file with none the size of
// the existing file; a split's leg's; a stripe's legs times the leg size
// rounded down to a whole number of chunks; a linear's legs summed.
func StackSize(s stack.Spec) (uint64, error) {
	switch s.Kind {
	case stack.KindMemory, stack.KindNull:
		return s.Size, nil
	case stack.KindFile:
		if s.Size != 0 {
			return s.Size, nil
		}
		info, err := os.Stat(s.Path)
		if err != nil {
			return 0, err
		}
		return fileSize(s.Path, info, true)
	case stack.KindSplit:
		if len(s.Legs) != 1 {
			return 0, fmt.Errorf("split has %d legs, want 1", len(s.Legs))
		}
		return StackSize(s.Legs[0])
	case stack.KindStripe:
		if s.Chunk == 0 || len(s.Legs) == 0 {
			return 0, errors.New("stripe without chunk or legs")
		}
		var leg uint64
		for i, l := range s.Legs {
			n, err := StackSize(l)
			if err != nil {
				return 0, err
			}
			if i == 0 || n < leg {
				leg = n
			}
		}
		per := leg - leg%s.Chunk
		total, overflow := mulOverflows(per, uint64(len(s.Legs)))
		if overflow {
			return 0, errors.New("stripe is larger than 16EiB")
		}
		return total, nil
	case stack.KindLinear:
		var total uint64
		for _, l := range s.Legs {
			n, err := StackSize(l)
			if err != nil {
				return 0, err
			}
			if total+n < total {
				return 0, errors.New("linear is larger than 16EiB")
			}
			total += n
		}
		return total, nil
	}
	return 0, fmt.Errorf("unknown kind %q", s.Kind)
}

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
		fmt.Fprintf(&b, "%s (%s)", quoteIfNeeded(e.Name), strings.Join(attrs, ", "))
		if e.Description != "" {
			fmt.Fprintf(&b, " %q", e.Description)
		}
		b.WriteByte('\n')
		formatNode(&b, e.Stack, 1)
	}
	io.WriteString(w, b.String())
}

func sizeOf(s stack.Spec) string {
	n, err := StackSize(s)
	if err != nil {
		return "size unknown"
	}
	return FormatSize(n)
}

func formatNode(b *strings.Builder, s stack.Spec, depth int) {
	fields := []string{s.Kind, sizeOf(s)}
	add := func(key, value string) { fields = append(fields, key+"="+value) }
	switch s.Kind {
	case stack.KindSplit:
		add("max_bytes", FormatSize(s.MaxBytes))
		if s.Boundary != 0 {
			add("boundary", FormatSize(s.Boundary))
		}
	case stack.KindStripe:
		add("chunk", FormatSize(s.Chunk))
		add("legs", strconv.Itoa(len(s.Legs)))
	case stack.KindLinear:
		add("legs", strconv.Itoa(len(s.Legs)))
	case stack.KindMemory:
		if s.Chunk != 0 {
			add("chunk", FormatSize(s.Chunk))
		}
	case stack.KindFile:
		add("path", quoteIfNeeded(s.Path))
	}
	if len(s.Legs) > 0 {
		capacity := s.Pool.Capacity
		if capacity == 0 {
			capacity = stack.DefaultPoolCapacity
		}
		add("pool", strconv.Itoa(capacity))
		if s.Pool.NoRescuer {
			add("rescuer", "off")
		}
	}
	if s.Delay != 0 {
		add("delay", s.Delay.String())
	}
	b.WriteString(strings.Repeat("  ", depth))
	b.WriteString(strings.Join(fields, " "))
	b.WriteByte('\n')
	for _, l := range s.Legs {
		formatNode(b, l, depth+1)
	}
}

// quoteIfNeeded quotes s when it would not read as one word on a line.
func quoteIfNeeded(s string) string {
	if s == "" || strings.ContainsAny(s, `"(),=`) || strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || !unicode.IsPrint(r)
	}) {
		return strconv.Quote(s)
	}
	return s
}
