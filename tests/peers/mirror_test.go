package peers

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd/wire"
)

// mirrorLegSize is each leg's size: fio writes and verifies all of it.
const mirrorLegSize = 64 * MiB

// mirrorDaemon serves export "default": a mirror of two file legs, the
// first under a flakey layer that stays up (for an hour) until the test
// sends it down, with the control socket and a bitmap file beside leg0, so
// that a daemon started again on the same legs finds it.
func mirrorDaemon(t *testing.T, leg0, leg1 string) *daemon {
	t.Helper()
	dir := socketDir(t)
	stack := fmt.Sprintf(`{mirror: {resync_rate: 256MiB/s, bitmap: {path: %s, region: 64KiB}, legs: [
	  {flakey: {up: 1h, down: 2s, mode: error, leg: {file: {path: %s, size: %d}}}},
	  {file: {path: %s, size: %d}}]}}`,
		strconv.Quote(filepath.Join(filepath.Dir(leg0), "m.bitmap")), strconv.Quote(leg0), mirrorLegSize, strconv.Quote(leg1), mirrorLegSize)
	return startDaemon(t, daemonConfig{
		Exports: []export{{Name: "default", Stack: stack}},
		Control: filepath.Join(dir, "control.sock"),
	})
}

// ctl runs a stackd control command against d and returns its output.
func (d *daemon) ctl(t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(t, stackdBin, append(args, "-control", d.ControlSocket)...)
}

// statusNode is a node of `stackd status -json`'s tree, as far as these
// tests read it.
type statusNode struct {
	Path  string `json:"path"`
	State *struct {
		Legs []struct {
			State string `json:"state"`
		} `json:"legs"`
	} `json:"state"`
	Legs []statusNode `json:"legs"`
}

// find returns the node at path in the tree below n, or nil.
func (n *statusNode) find(path string) *statusNode {
	if n.Path == path {
		return n
	}
	for i := range n.Legs {
		if f := n.Legs[i].find(path); f != nil {
			return f
		}
	}
	return nil
}

// remoteConnected reports whether the nbd leg of uri has every one of its
// connections up, as `stackd status -json` reports them.
func (d *daemon) remoteConnected(t *testing.T, uri string) bool {
	t.Helper()
	type node struct {
		State json.RawMessage `json:"state"`
		Legs  []node          `json:"legs"`
	}
	roots, out := statusRoots[node](t, d)
	var walk func(n node) (found, up bool)
	walk = func(n node) (bool, bool) {
		var leg struct {
			URI         string `json:"uri"`
			Connections []struct {
				State string `json:"state"`
			} `json:"connections"`
		}
		if json.Unmarshal(n.State, &leg) == nil && leg.URI == uri {
			up := len(leg.Connections) > 0
			for _, c := range leg.Connections {
				up = up && c.State == "connected"
			}
			return true, up
		}
		for _, l := range n.Legs {
			if found, up := walk(l); found {
				return true, up
			}
		}
		return false, false
	}
	for _, root := range roots {
		if found, up := walk(root); found {
			return up
		}
	}
	t.Fatalf("no nbd leg of %s in stackd status:\n%s", uri, out)
	return false
}

// legStates returns the mirror's legs' states as `stackd status -json`
// reports them.
func (d *daemon) legStates(t *testing.T) []string {
	t.Helper()
	roots, out := statusRoots[statusNode](t, d)
	for _, root := range roots {
		if n := root.find("default/mirror"); n != nil && n.State != nil {
			var states []string
			for _, l := range n.State.Legs {
				states = append(states, l.State)
			}
			return states
		}
	}
	t.Fatalf("no mirror state in stackd status -json:\n%s", out)
	return nil
}

// waitLegs waits, boundedly, until the mirror's legs are in want.
func (d *daemon) waitLegs(t *testing.T, what string, want ...string) {
	t.Helper()
	stackdtest.WaitFor(t, what, 2*time.Minute, func() bool {
		got := d.legStates(t)
		return fmt.Sprint(got) == fmt.Sprint(want)
	})
}

// verifyDuring runs fio over the export at uri, writing every block once and
// verifying it (crc32c, with a verify backlog, so that blocks are read
// back while writes go on), and runs fault once fio has been writing for a
// while. Any error fio sees, or a block that does not verify, fails the
// test: a leg that fails under a mirror must cost the client nothing.
func verifyDuring(t *testing.T, uri string, fault func()) {
	t.Helper()
	need(t, "fio")
	done := make(chan struct{})
	go func() {
		defer close(done)
		runFio(t, uri, "--name=mirror", "--rw=randwrite", "--bs=4k", "--iodepth=16",
			"--size="+strconv.Itoa(mirrorLegSize), "--verify=crc32c", "--verify_backlog=512",
			"--do_verify=1", "--rate=24m")
	}()
	// About a second of writes at the rate cap, so that the fault comes in
	// the middle of the run.
	select {
	case <-done:
		t.Fatal("fio finished before the fault")
	case <-time.After(time.Second):
	}
	fault()
	select {
	case <-done:
	case <-time.After(cmdTimeout):
		t.Fatal("fio did not finish")
	}
}

// equalLegs stops d (a clean shutdown flushes both legs) and requires the
// two legs to be byte-equal. A leg is a file, or the URI of a remote
// export, which is read straight from its server, not through d.
func equalLegs(t *testing.T, d *daemon, leg0, leg1 string) {
	t.Helper()
	d.Stop(t)
	a, b := legImage(t, leg0), legImage(t, leg1)
	if off := firstDiff(t, a, b); off >= 0 {
		t.Fatalf("after resync the legs differ from byte %d", off)
	}
	sum, n := fileSHA256(t, a)
	t.Logf("legs byte-equal: %d bytes, SHA-256 %x", n, sum)
}

// legImage is a file holding leg's bytes: leg itself if it is a file, or
// a copy of the remote export at that nbd URI, made by nbdcopy.
func legImage(t *testing.T, leg string) string {
	t.Helper()
	if !strings.HasPrefix(leg, "nbd://") && !strings.HasPrefix(leg, "nbd+unix://") {
		return leg
	}
	need(t, "nbdcopy")
	f := filepath.Join(t.TempDir(), "leg.img")
	mustRun(t, "nbdcopy", leg, f)
	return f
}

// TestMirrorLegFailsUnderVerify: through the real daemon, a mirror's leg
// fails in the middle of a fio verify run, three ways: its flakey layer
// goes down, the control socket fails it, and its file system fills up.
// Each time the client sees no error and every block verifies; the leg is
// then restored, resync makes it whole, and the legs' files are byte-equal.
func TestMirrorLegFailsUnderVerify(t *testing.T) {
	for _, tc := range []struct {
		name string
		leg  int
		fail []string // the control command that fails the leg
		// up is how long the leg takes to come up again by itself: a
		// flakey layer is down for 2 s.
		up time.Duration
	}{
		{"flakey-down", 0, []string{"fault", "default/mirror/leg0", "down-now"}, 2500 * time.Millisecond},
		{"control-socket", 1, []string{"leg", "fail", "default/mirror/leg1"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			leg0, leg1 := filepath.Join(dir, "leg0.img"), filepath.Join(dir, "leg1.img")
			d := mirrorDaemon(t, leg0, leg1)
			verifyDuring(t, d.uri("default"), func() { d.ctl(t, tc.fail...) })
			faulty := []string{"in_sync", "in_sync"}
			faulty[tc.leg] = "faulty"
			d.waitLegs(t, fmt.Sprintf("leg %d to be faulty", tc.leg), faulty...)
			time.Sleep(tc.up)
			d.ctl(t, "leg", "restore", fmt.Sprintf("default/mirror/leg%d", tc.leg))
			d.waitLegs(t, fmt.Sprintf("leg %d's resync to complete", tc.leg), "in_sync", "in_sync")
			equalLegs(t, d, leg0, leg1)
		})
	}

	t.Run("file-system-full", func(t *testing.T) {
		if os.Geteuid() != 0 {
			stackdtest.Missing(t, "mounting a small tmpfs needs root")
		}
		dir := t.TempDir()
		small := filepath.Join(dir, "small")
		if err := os.Mkdir(small, 0o755); err != nil {
			t.Fatal(err)
		}
		// Room for a quarter of the leg: its writes fail with ENOSPC once
		// fio has written that much of it.
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", small).CombinedOutput(); err != nil {
			stackdtest.Missing(t, "mount tmpfs: %v: %s", err, out)
		}
		t.Cleanup(func() { exec.Command("umount", "-l", small).Run() })
		leg0, leg1 := filepath.Join(dir, "leg0.img"), filepath.Join(small, "leg1.img")
		d := mirrorDaemon(t, leg0, leg1)
		verifyDuring(t, d.uri("default"), func() {})
		d.waitLegs(t, "leg 1 to be faulty once its file system filled", "in_sync", "faulty")
		if out, err := exec.Command("mount", "-o", "remount,size=128m", small).CombinedOutput(); err != nil {
			t.Fatalf("remount the tmpfs larger: %v: %s", err, out)
		}
		d.ctl(t, "leg", "restore", "default/mirror/leg1")
		d.waitLegs(t, "leg 1's resync to complete", "in_sync", "in_sync")
		equalLegs(t, d, leg0, leg1)
	})
}

// TestMirrorCrashResyncsOnlyDirtyRegions: stackd is killed with SIGKILL
// while it writes to a mirror with a bitmap file. Started again on the
// same files, it resyncs only the regions the bitmap marked dirty (far
// less than the leg), the legs end byte-equal, and every write that was
// acknowledged with FUA before the kill reads back.
func TestMirrorCrashResyncsOnlyDirtyRegions(t *testing.T) {
	dir := t.TempDir()
	leg0, leg1 := filepath.Join(dir, "leg0.img"), filepath.Join(dir, "leg1.img")
	d := mirrorDaemon(t, leg0, leg1)
	// A new bitmap file holds no record of the legs, so the first start
	// copies leg 0 to leg 1 whole; a crash before that ends would rightly
	// resync everything again.
	d.waitLegs(t, "the first start's full resync to complete", "in_sync", "in_sync")
	// Bits are cleared lazily, once a region has been idle for a while
	// with every leg in sync: wait for the resync's to go.
	stackdtest.WaitFor(t, "the bitmap to be clean", time.Minute, func() bool { return d.mirrorStatus(t).DirtyRegions == 0 })
	c := connectRaw(t, d.Socket, "default")
	// 64 KiB writes, one every 1 MiB: 64 of the leg's 1024 regions of
	// 64 KiB are dirtied, each acknowledged with FUA.
	const step, size = MiB, 64 * KiB
	var acked []uint64
	for off := uint64(0); off < mirrorLegSize; off += step {
		errno, _, err := c.do(wire.CmdFlagFUA, wire.CmdWrite, off, size, slotData(int(off/step)))
		if err != nil || errno != 0 {
			t.Fatalf("FUA WRITE at %d: errno %d, %v", off, errno, err)
		}
		acked = append(acked, off)
	}
	d.Kill()

	d = mirrorDaemon(t, leg0, leg1)
	d.waitLegs(t, "the resync after the crash to complete", "in_sync", "in_sync")
	resynced := d.mirrorStatus(t).Resync.DoneBytes
	t.Logf("%d bytes resynced after the crash, of %d", resynced, mirrorLegSize)
	if resynced == 0 || resynced > uint64(len(acked))*size*2 {
		t.Errorf("%d bytes resynced after the crash; want the dirty regions only (%d writes of %d)", resynced, len(acked), size)
	}
	c = connectRaw(t, d.Socket, "default")
	for _, off := range acked {
		if got := c.mustRead(t, off, size); string(got) != string(slotData(int(off/step))) {
			t.Fatalf("the FUA write at %d, acknowledged before the crash, does not read back", off)
		}
	}
	c.disconnect()
	equalLegs(t, d, leg0, leg1)
}

// mirrorState is the part of the mirror's `stackd status -json` state
// these tests read.
type mirrorState struct {
	DirtyRegions int `json:"dirty_regions"`
	Resync       struct {
		DoneBytes uint64 `json:"done_bytes"`
	} `json:"resync"`
}

// mirrorStatus is the mirror's state, by `stackd status -json`.
func (d *daemon) mirrorStatus(t *testing.T) mirrorState {
	t.Helper()
	roots, out := statusRoots[struct {
		State mirrorState `json:"state"`
	}](t, d)
	if len(roots) == 0 {
		t.Fatalf("no export in stackd status -json:\n%s", out)
	}
	return roots[0].State
}

// statusRoots decodes `stackd status -json` with each export's root node
// as an R, the part of the tree a caller reads, and returns the roots and
// the text.
func statusRoots[R any](t *testing.T, d *daemon) ([]R, string) {
	t.Helper()
	var st struct {
		Exports []struct {
			Root R `json:"root"`
		} `json:"exports"`
	}
	out := d.ctl(t, "status", "-json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("stackd status -json: %v\n%s", err, out)
	}
	roots := make([]R, len(st.Exports))
	for i, e := range st.Exports {
		roots[i] = e.Root
	}
	return roots, out
}
