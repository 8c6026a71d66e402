package main

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/stack"

	"github.com/stackd/stackd/internal/stackdtest"
)

// immutable makes path immutable (chattr +i), so that no one, root
// included, can open it for writing, and undoes that when the test ends.
// Without root or a file system that supports it, the test is skipped, or
// fails under CI=true, where the tests run as root on ext4.
func immutable(t *testing.T, path string) {
	t.Helper()
	if os.Geteuid() != 0 {
		stackdtest.Missing(t, "chattr +i needs root")
	}
	if out, err := exec.Command("chattr", "+i", path).CombinedOutput(); err != nil {
		stackdtest.Missing(t, "chattr +i %s: %v: %s", path, err, out)
	}
	// Registered after t.TempDir's cleanup, so it runs first: the
	// directory can then be removed.
	t.Cleanup(func() { exec.Command("chattr", "-i", path).Run() })
	out, err := exec.Command("lsattr", path).Output()
	if err != nil || !strings.Contains(strings.Fields(string(out))[0], "i") {
		t.Fatalf("lsattr %s: %q, %v: not immutable", path, out, err)
	}
	if f, err := os.OpenFile(path, os.O_RDWR, 0); err == nil {
		f.Close()
		t.Fatalf("%s opens read-write although immutable", path)
	}
}

// do submits one bio to dev and waits for it.
func do(dev stack.Device, op bioset.Op, off uint64, buf []byte) error {
	done := make(chan struct{})
	var b bioset.Bio
	b.Init(op, off, uint64(len(buf)), buf, func(*bioset.Bio) { close(done) })
	b.Dev = dev
	b.TopOffset = off
	var s bioset.Submitter
	s.Submit(&b)
	<-done
	return b.Err()
}

// TestReadOnlyImmutableImage: an image no one may write, served by a
// read-only export, as configs/examples/read-only.yaml promises. check
// accepts it, serve builds it (its file target opened read-only), reads
// return the image, writes get EPERM from the target itself. Without
// read_only, check and serve refuse it alike.
func TestReadOnlyImmutableImage(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "golden.img")
	data := bytes.Repeat([]byte("golden\n"), 1<<20/7+1)[:1<<20]
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	immutable(t, img)

	config := func(readOnly bool) string {
		path := filepath.Join(dir, "stackd.yaml")
		src := "listen: [{unix: " + filepath.Join(dir, "nbd.sock") + "}]\nmetrics: {address: off}\n" +
			"exports:\n  - name: golden\n    read_only: " + map[bool]string{true: "true", false: "false"}[readOnly] +
			"\n    stack: {file: {path: " + img + "}}\n"
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}

	path := config(true)
	code, out, errOut := runCmd("check", "-config", path)
	if code != 0 || !strings.Contains(out, "golden (1MiB, default, read-only)") {
		t.Fatalf("check: exit %d\n%s%s", code, out, errOut)
	}
	cfg, err := loadConfig(path) // what serve runs
	if err != nil {
		t.Fatalf("serve's loadConfig: %v", err)
	}
	d, err := start(cfg, slog.New(slog.DiscardHandler), serveOptions{})
	if err != nil {
		t.Fatalf("serve: %v", err)
	}
	defer d.stop()
	root := d.stacks[0].Root
	got := make([]byte, 64<<10)
	if err := do(root, bioset.OpRead, 4096, got); err != nil || !bytes.Equal(got, data[4096:4096+len(got)]) {
		t.Fatalf("read: %v (data equal: %v)", err, bytes.Equal(got, data[4096:4096+len(got)]))
	}
	if err := do(root, bioset.OpWrite, 0, make([]byte, 4096)); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("write to the target: %v, want EPERM", err)
	}

	// Read-write, the image is refused, by check and serve alike.
	path = config(false)
	code, _, errOut = runCmd("check", "-config", path)
	_, serveErr := loadConfig(path)
	want := "is not writable"
	if code != 1 || !strings.Contains(errOut, want) || serveErr == nil || strings.TrimSpace(errOut) != serveErr.Error() {
		t.Fatalf("read-write export of an immutable image: check exit %d: %q; serve: %v", code, errOut, serveErr)
	}
}
