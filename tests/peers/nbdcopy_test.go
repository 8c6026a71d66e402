package peers

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// TestNbdcopyRoundTrip copies a 256 MiB image (random, with zero holes)
// into an export and back out with nbdcopy, which uses several
// connections (the export advertises multi-conn), many requests in
// flight, zero detection and block status; the copy must hash the same.
func TestNbdcopyRoundTrip(t *testing.T) {
	need(t, "nbdcopy")
	const size = 256 * MiB
	src := filepath.Join(t.TempDir(), "src.img")
	want := randomImage(t, src, size, 4)

	for _, tc := range []struct {
		name       string
		stack      func(dir string) string
		persistent bool
		copyFlags  []string
	}{
		// Maximum-size requests (32 MiB, cut into 32 pieces by the split
		// layer), and a flush at the end.
		{"memory", func(string) string { return memStack(size / 4) }, false, []string{"--request-size=33554432", "--flush"}},
		// nbdcopy's defaults: 256 KiB requests, 4 connections.
		{"files", func(dir string) string { return fileStack(dir, size/4) }, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d := startDaemon(t, daemonConfig{Exports: []export{{Name: "default", Stack: tc.stack(dir)}}})
			uri := d.uri("default")
			// Dirty the export first, so that nbdcopy's zero handling must
			// really zero the holes (a fresh export reads as zeroes anyway).
			if _, err := exec.LookPath("nbdkit"); err == nil {
				mustRun(t, "nbdcopy", "--", "[", "nbdkit", "--exit-with-parent", "pattern", fmt.Sprintf("size=%d", size), "]", uri)
			} else {
				t.Log("nbdkit not installed: copying onto a fresh export")
			}

			mustRun(t, "nbdcopy", slices.Concat(tc.copyFlags, []string{src, uri})...)
			dst := filepath.Join(dir, "dst.img")
			mustRun(t, "nbdcopy", slices.Concat(tc.copyFlags, []string{uri, dst})...)
			got, n := fileSHA256(t, dst)
			if n != size {
				t.Fatalf("copied out %d bytes, want %d", n, size)
			}
			if got != want {
				t.Fatalf("round trip through %s: SHA-256 %x, want %x; first difference at byte %d",
					tc.name, got, want, firstDiff(t, src, dst))
			}
			if !tc.persistent {
				return
			}
			// The files keep the data across a restart: stop (SIGTERM, the
			// final flush), serve the same files again, copy out again.
			d.Stop(t)
			d = startDaemon(t, daemonConfig{Exports: []export{{Name: "default", Stack: tc.stack(dir)}}})
			mustRun(t, "nbdcopy", d.uri("default"), dst)
			if got, _ := fileSHA256(t, dst); got != want {
				t.Fatalf("after a restart: SHA-256 %x, want %x; first difference at byte %d",
					got, want, firstDiff(t, src, dst))
			}
		})
	}
}
