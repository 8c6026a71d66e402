package configs

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// parseWithin parses src and fails the test if that takes longer than d.
func parseWithin(t *testing.T, d time.Duration, src string) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := Parse("test.yaml", []byte(src))
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("Parse took more than %v", d)
		return nil
	}
}

// TestAliasBomb: ten levels of aliases, each a linear over ten of the
// level below, would expand this 1 KiB file to 10^10 nodes. It must be
// refused, quickly, at the alias that crosses the bound.
func TestAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("exports:\n  - name: a\n    stack:\n      linear:\n        legs:\n          - &a0 {memory: {size: 1MiB}}\n")
	for i := 1; i <= 10; i++ {
		legs := strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*a%d, ", i-1), 10), ", ")
		fmt.Fprintf(&b, "          - &a%d {linear: {legs: [%s]}}\n", i, legs)
	}
	src := b.String()
	if len(src) > 2048 {
		t.Fatalf("the file is %d bytes", len(src))
	}
	err := parseWithin(t, 2*time.Second, src)
	want := "test.yaml:11: the configuration is more than 131072 YAML nodes once its aliases are expanded"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("got %v\nwant %s…", err, want)
	}
}

func TestStackBounds(t *testing.T) {
	// A stack one node deeper than allowed: splits over splits.
	var b strings.Builder
	b.WriteString("exports:\n  - name: a\n    stack:\n")
	indent := "      "
	for i := 0; i < MaxStackDepth; i++ {
		fmt.Fprintf(&b, "%ssplit:\n%s  max_bytes: 4KiB\n%s  leg:\n", indent, indent, indent)
		indent += "    "
	}
	fmt.Fprintf(&b, "%smemory: {size: 1MiB}\n", indent)
	err := parseWithin(t, 2*time.Second, b.String())
	want := fmt.Sprintf(`test.yaml:%d: export "a": its stack is more than %d nodes deep here`, 4+3*MaxStackDepth, MaxStackDepth)
	if err == nil || err.Error() != want {
		t.Errorf("deep stack: got %v\nwant %s", err, want)
	}

	// More nodes than allowed, in exports of a linear each.
	b.Reset()
	b.WriteString("exports:\n")
	leg := "{null: {size: 1MiB}}"
	perExport := 256
	for e := 0; e*(perExport+1) <= MaxStackNodes; e++ {
		fmt.Fprintf(&b, "  - name: e%d\n    stack: {linear: {legs: [%s]}}\n", e, strings.TrimSuffix(strings.Repeat(leg+", ", perExport), ", "))
	}
	err = parseWithin(t, 5*time.Second, b.String())
	if err == nil || !strings.HasSuffix(err.Error(), fmt.Sprintf("the stacks have more than %d nodes in all; stackd serves at most that many", MaxStackNodes)) {
		t.Errorf("too many nodes: got %v", err)
	}
}
