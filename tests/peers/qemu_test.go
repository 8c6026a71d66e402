package peers

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// qemuIO runs qemu-io commands on an NBD URI in one session and fails
// the test if any of them failed. qemu-io does not always exit non-zero
// when a command fails (a `read -P` mismatch only prints a message in
// some versions), so its output is checked as well.
func qemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw", "-d", "unmap"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, uri)
	out, err := run(t, "qemu-io", args...)
	if err != nil || qemuIOFailed(out) {
		t.Fatalf("%s: %v\n%s", cmdline("qemu-io", args), err, out)
	}
	return out
}

// qemuIOFailed recognises qemu-io's messages for failed commands.
func qemuIOFailed(out string) bool {
	for _, s := range []string{"Pattern verification failed", "failed:", "error", "Error"} {
		if strings.Contains(out, s) {
			return true
		}
	}
	return false
}

// TestQemuIO writes patterns at offsets chosen to cut across the stack's
// boundaries (64 KiB stripe chunks, 1 MiB split pieces), unaligned and
// tiny, and reads them back along with their untouched neighbours; then
// zeroes and discards part of a pattern.
func TestQemuIO(t *testing.T) {
	need(t, "qemu-io")
	d := startDaemon(t, daemonConfig{Exports: []export{{Name: "default", Stack: memStack(16 * MiB)}}})
	uri := d.uri("default")

	type pattern struct {
		val      byte
		off, len int64
		fua      bool // written with FUA (qemu-io write -f)
	}
	patterns := []pattern{
		{0x11, 3, 1, false},                    // one byte, unaligned
		{0xa5, 65024, 1024, false},             // across the first chunk boundary
		{0x22, 131071, 511, false},             // 511 bytes across the second
		{0x5a, 1048000, 200000, false},         // across the 1 MiB split and 3 chunks
		{0x33, 2*MiB - 5000, 3*MiB + 9, false}, // over three split boundaries, ~49 chunks
		{0x44, 6*MiB + 65535, 2, false},        // two bytes on either side of a chunk edge
		{0x77, 12*MiB - 3, 70000, true},        // FUA, across a split and two chunks
		{0x55, 64*MiB - 513, 513, false},       // the very end of the export
	}
	var cmds []string
	for _, p := range patterns {
		fua := ""
		if p.fua {
			fua = "-f "
		}
		cmds = append(cmds, fmt.Sprintf("write %s-P 0x%02x %d %d", fua, p.val, p.off, p.len))
	}
	qemuIO(t, uri, cmds...)

	// Read back in a separate session: nothing cached on the client side.
	cmds = nil
	prevEnd := int64(0)
	for _, p := range patterns {
		cmds = append(cmds, fmt.Sprintf("read -P 0x%02x %d %d", p.val, p.off, p.len))
		if p.off > prevEnd {
			// The gap before it was never written.
			cmds = append(cmds, fmt.Sprintf("read -P 0 %d %d", prevEnd, p.off-prevEnd))
		}
		prevEnd = p.off + p.len
	}
	out := qemuIO(t, uri, cmds...)
	if n := strings.Count(out, "read "); n != len(cmds) {
		t.Fatalf("qemu-io reported %d reads, want %d:\n%s", n, len(cmds), out)
	}

	// Write zeroes and discard in the middle of a pattern; the pattern
	// around them stays.
	const base = 8 * MiB
	qemuIO(t, uri,
		fmt.Sprintf("write -P 0x66 %d %d", base, 3*MiB),
		fmt.Sprintf("write -z %d %d", base+1000, 200000),
		fmt.Sprintf("discard %d %d", base+MiB+12345, MiB+54321),
		fmt.Sprintf("write -z -u %d %d", base+2*MiB+600000, 256*KiB),
	)
	qemuIO(t, uri,
		fmt.Sprintf("read -P 0x66 %d %d", base, 1000),
		fmt.Sprintf("read -P 0 %d %d", base+1000, 200000),
		fmt.Sprintf("read -P 0x66 %d %d", base+201000, MiB+12345-201000),
		fmt.Sprintf("read -P 0 %d %d", base+MiB+12345, MiB+54321),
		fmt.Sprintf("read -P 0x66 %d %d", base+2*MiB+66666, 600000-66666),
		fmt.Sprintf("read -P 0 %d %d", base+2*MiB+600000, 256*KiB),
		fmt.Sprintf("read -P 0x66 %d %d", base+2*MiB+600000+256*KiB, MiB-600000-256*KiB),
	)

	// The check can fail: a pattern that is not there is reported.
	args := []string{"-f", "raw", "-c", fmt.Sprintf("read -P 0x77 %d 512", base), uri}
	out, err := run(t, "qemu-io", args...)
	if err == nil && !qemuIOFailed(out) {
		t.Fatalf("qemu-io read -P of a wrong pattern passed: %v\n%s", err, out)
	}
}

// TestQemuImg copies a random image in with qemu-img convert and
// compares it with qemu-img compare; a byte flipped through qemu-io must
// make the comparison fail.
func TestQemuImg(t *testing.T) {
	need(t, "qemu-img")
	need(t, "qemu-io")
	const size = 64 * MiB
	d := startDaemon(t, daemonConfig{Exports: []export{{Name: "default", Stack: memStack(size / 4)}}})
	uri := d.uri("default")
	src := filepath.Join(t.TempDir(), "src.img")
	randomImage(t, src, size, 3)

	mustRun(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
	out := mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	if !strings.Contains(out, "identical") {
		t.Errorf("qemu-img compare: %s", out)
	}

	// Flip one byte in the middle of a stripe chunk of the second split
	// piece of the 41st MiB.
	const off = 40*MiB + 300000 + 4321
	img, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	qemuIO(t, uri, fmt.Sprintf("write -P 0x%02x %d 1", img[off]^0xff, off))
	out, err = run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	if code := exitCode(err); code != 1 {
		t.Fatalf("qemu-img compare after flipping byte %d: exit %d (%v), want 1 (images differ)\n%s", off, code, err, out)
	}
	m := regexp.MustCompile(`mismatch at offset (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("qemu-img compare does not say where:\n%s", out)
	}
	// qemu-img reports the first differing byte, or the start of the
	// sector holding it in older versions.
	var at int64
	fmt.Sscan(m[1], &at)
	if at > off || off-at >= 512 {
		t.Errorf("qemu-img compare reports a mismatch at %d; the flipped byte is at %d", at, off)
	}
}
