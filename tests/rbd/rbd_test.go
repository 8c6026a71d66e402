//go:build rbd

// Package rbd drives the rbd target through the real daemon, built with
// librbd, over a one-node Ceph cluster the test starts itself, with real
// NBD peers: nbdinfo, qemu-img, qemu-io, nbdcopy and fio.
package rbd

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
)

const (
	KiB = 1 << 10
	MiB = 1 << 20
	// cmdTimeout bounds every external command a test runs.
	cmdTimeout = 2 * time.Minute
)

// buildTags are what the daemon needs to serve rbd: librbd through
// go-ceph, built for Ceph Pacific (Debian 12's 16.2).
var buildTags = []string{"rbd", "pacific"}

var (
	binOnce sync.Once
	binDir  string
	bin     string
	binErr  error
)

// TestMain removes the daemon the tests built, once they are done.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// stackd builds the tagged daemon once for the whole package; a machine
// without librbd's headers cannot, which is Missing.
func stackd(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if _, err := os.Stat("/usr/include/rbd/librbd.h"); err != nil {
			binErr = fmt.Errorf("librbd headers missing (Debian package librbd-dev)")
			return
		}
		dir, err := os.MkdirTemp("", "stackd-rbd-bin")
		if err != nil {
			binErr = err
			return
		}
		binDir = dir
		// Under the race detector: the target's workers, librbd's
		// threads and the metrics scrape meet here as nowhere else.
		bin, binErr = stackdtest.BuildWith(dir, stackdtest.BuildOptions{Race: true, Tags: buildTags})
	})
	if binErr != nil {
		if strings.Contains(binErr.Error(), "librbd-dev") {
			stackdtest.Missing(t, "%v", binErr)
		}
		t.Fatal(binErr)
	}
	return bin
}

func need(t *testing.T, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if _, err := exec.LookPath(c); err != nil {
			stackdtest.Missing(t, "peer %s not installed", c)
		}
	}
}

// serve starts the daemon with one export, "disk", over stack (a stack
// node in YAML flow style), on a unix socket, and returns its NBD URI.
func serve(t *testing.T, stack string) (*stackdtest.Daemon, string) {
	t.Helper()
	dir := stackdtest.SocketDir(t)
	sock := filepath.Join(dir, "nbd.sock")
	conf := fmt.Sprintf("listen:\n  - unix: %s\nmetrics: {address: 127.0.0.1:0}\nexports:\n  - name: disk\n    stack: %s\n", sock, stack)
	d := stackdtest.Start(t, stackd(t), dir, conf)
	return d, "nbd+unix:///disk?socket=" + sock
}

// scrape returns the daemon's metrics page.
func scrape(t *testing.T, d *stackdtest.Daemon) string {
	t.Helper()
	_, body := stackdtest.HTTPGet(t, "http://"+d.Metrics+"/metrics")
	return body
}

// checkStack runs stackd check on a configuration, dir/stackd.yaml, of
// one export, "disk", over stack (a stack node in YAML flow style), its
// stack on line 3.
func checkStack(t *testing.T, dir, stack string) (string, error) {
	t.Helper()
	conf := filepath.Join(dir, "stackd.yaml")
	yaml := fmt.Sprintf("exports:\n  - name: disk\n    stack: %s\n", stack)
	if err := os.WriteFile(conf, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return stackdtest.Run(t, cmdTimeout, stackd(t), "check", "-config", conf)
}

func rbdNode(c *stackdtest.Ceph, image string, extra string) string {
	return fmt.Sprintf("{rbd: {pool: %s, image: %s, conf: %s%s}}", c.Pool, image, c.Conf, extra)
}

// randomFile writes size bytes of seeded random data with a zero MiB in
// it (so that copies meet zeroes as well as data) and returns its
// SHA-256.
func randomFile(t *testing.T, path string, size int, seed uint64) [sha256.Size]byte {
	t.Helper()
	data := make([]byte, size)
	r := rand.NewChaCha8([32]byte{byte(seed)})
	r.Read(data)
	if size > 2*MiB {
		clear(data[MiB : 2*MiB])
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

// copyRoundTrip copies 32 MiB of random data (from seed) into the export
// at uri and back with nbdcopy, and checks that it came back whole, what
// saying which round trip failed; it returns the directory of the copies,
// src.img and back.img.
func copyRoundTrip(t *testing.T, uri string, seed uint64, what string) string {
	t.Helper()
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src.img"), filepath.Join(dir, "back.img")
	sum := randomFile(t, src, 32*MiB, seed)
	stackdtest.MustRun(t, cmdTimeout, "nbdcopy", src, uri)
	stackdtest.MustRun(t, cmdTimeout, "nbdcopy", uri, back)
	if got := fileSHA(t, back); got != sum {
		t.Errorf("%s: SHA-256 %x, want %x", what, got, sum)
	}
	return dir
}

func fileSHA(t *testing.T, path string) [sha256.Size]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

// TestRBD runs every case on one cluster: starting one takes about 10 s,
// and each case uses images of its own.
func TestRBD(t *testing.T) {
	need(t, "nbdinfo", "nbdcopy", "qemu-img", "qemu-io", "fio")
	stackd(t)
	c := stackdtest.StartCeph(t)

	t.Run("nbdinfo", func(t *testing.T) {
		c.CreateImage(t, "info", 64*MiB)
		d, uri := serve(t, rbdNode(c, "info", ""))
		out := stackdtest.MustRun(t, cmdTimeout, "nbdinfo", "--json", uri)
		var info struct {
			Exports []struct {
				Size     int64 `json:"export-size"`
				ReadOnly bool  `json:"is_read_only"`
				Flush    bool  `json:"can_flush"`
				FUA      bool  `json:"can_fua"`
				Trim     bool  `json:"can_trim"`
				Zero     bool  `json:"can_zero"`
			} `json:"exports"`
		}
		if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
			t.Fatalf("nbdinfo --json: %v\n%s", err, out)
		}
		e := info.Exports[0]
		if e.Size != 64*MiB || e.ReadOnly || !e.Flush || !e.FUA || !e.Trim || !e.Zero {
			t.Errorf("nbdinfo: %+v; want 64 MiB, writable, with flush, FUA, trim and zero\n%s", e, out)
		}
		// nbdinfo read the first sectors (to probe the content): the
		// leg's librbd histogram has them, and nothing is in flight.
		metrics := scrape(t, d)
		for _, want := range []string{
			`stackd_target_service_request_duration_seconds_count{layer="disk/rbd",op="read"}`,
			`stackd_target_service_requests_in_flight{layer="disk/rbd"} 0`,
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("metrics lack %s:\n%s", want, metrics)
			}
		}
	})

	t.Run("qemu-img", func(t *testing.T) {
		c.CreateImage(t, "qemu", 32*MiB)
		_, uri := serve(t, rbdNode(c, "qemu", ""))
		dir := t.TempDir()
		src, back := filepath.Join(dir, "src.img"), filepath.Join(dir, "back.img")
		sum := randomFile(t, src, 32*MiB, 1)
		stackdtest.MustRun(t, cmdTimeout, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
		stackdtest.MustRun(t, cmdTimeout, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
		stackdtest.MustRun(t, cmdTimeout, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, back)
		if fileSHA(t, back) != sum {
			t.Errorf("qemu-img convert back: the image differs from what was written")
		}
	})

	t.Run("nbdcopy", func(t *testing.T) {
		c.CreateImage(t, "copy", 32*MiB)
		_, uri := serve(t, rbdNode(c, "copy", ""))
		copyRoundTrip(t, uri, 2, "nbdcopy round trip")
	})

	t.Run("qemu-io zero trim fua", func(t *testing.T) {
		c.CreateImage(t, "zero", 16*MiB)
		_, uri := serve(t, rbdNode(c, "zero", ""))
		// -f: FUA. write -z: WRITE_ZEROES (punching, then with NO_HOLE
		// as -u leaves out). discard: TRIM, after which the range is
		// only read back from what was written around it.
		out := stackdtest.MustRun(t, cmdTimeout, "qemu-io", "-f", "raw",
			"-c", "write -P 0xab 0 4M",
			"-c", "write -f -P 0xcd 4M 1M",
			"-c", "write -z 0 1M",
			"-c", "write -z -u 1M 64k",
			"-c", "flush",
			"-c", "read -P 0 0 1M",
			"-c", "read -P 0 1M 64k",
			"-c", "read -P 0xab 2M 1M",
			"-c", "read -P 0xcd 4M 1M",
			"-c", "discard 8M 4M",
			uri)
		if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
			t.Errorf("qemu-io:\n%s", out)
		}
	})

	t.Run("block status", func(t *testing.T) {
		c.CreateImage(t, "map", 32*MiB)
		_, uri := serve(t, rbdNode(c, "map", ""))
		stackdtest.MustRun(t, cmdTimeout, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 9M 64k", uri)
		// Objects are 4 MiB: the one written, [8M, 12M), is data; the
		// rest of the image is a hole that reads as zeroes.
		out := stackdtest.MustRun(t, cmdTimeout, "nbdinfo", "--map", "--json", uri)
		var extents []struct {
			Offset int64 `json:"offset"`
			Length int64 `json:"length"`
			Type   int   `json:"type"`
		}
		if err := json.Unmarshal([]byte(out), &extents); err != nil {
			t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
		}
		type ext struct {
			off, len int64
			typ      int
		}
		var got []ext
		for _, e := range extents {
			got = append(got, ext{e.Offset, e.Length, e.Type})
		}
		want := []ext{{0, 8 * MiB, 3}, {8 * MiB, 4 * MiB, 0}, {12 * MiB, 20 * MiB, 3}}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("nbdinfo --map: %v, want %v\n%s", got, want, out)
		}
	})

	t.Run("fio verify", func(t *testing.T) {
		c.CreateImage(t, "fio", 32*MiB)
		_, uri := serve(t, rbdNode(c, "fio", ""))
		out := stackdtest.MustRun(t, cmdTimeout, "fio", "--ioengine=nbd", "--uri="+uri, "--name=verify", "--rw=randwrite",
			"--bs=4k", "--iodepth=32", "--size=32M", "--verify=crc32c", "--do_verify=1",
			"--runtime=60", "--verify_state_save=0", "--output-format=json")
		if strings.Contains(out, "verify:") || strings.Contains(out, "bad magic") || !strings.Contains(out, `"error" : 0`) {
			t.Errorf("fio:\n%s", out)
		}
	})

	t.Run("stripe over two images", func(t *testing.T) {
		c.CreateImage(t, "stripe-a", 16*MiB)
		c.CreateImage(t, "stripe-b", 16*MiB)
		_, uri := serve(t, fmt.Sprintf("{stripe: {chunk: 64KiB, legs: [%s, %s]}}",
			rbdNode(c, "stripe-a", ""), rbdNode(c, "stripe-b", "")))
		dir := copyRoundTrip(t, uri, 3, "nbdcopy round trip through the stripe")
		// The chunks alternate: the second 64 KiB of the export is the
		// first of leg 1's image.
		legB := filepath.Join(dir, "b.img")
		c.RBD(t, "export", "stripe-b", legB)
		want, _ := os.ReadFile(filepath.Join(dir, "src.img"))
		got, _ := os.ReadFile(legB)
		if len(got) < 64*KiB || !bytes.Equal(got[:64*KiB], want[64*KiB:128*KiB]) {
			t.Errorf("stripe-b's first chunk is not the export's second")
		}
	})

	t.Run("mirror of an image and a file", func(t *testing.T) {
		// The rbd leg is failed through the control socket while the
		// export is written, so the client goes on with the file alone;
		// restored, it is resynced from the file, and then the image
		// and the file hold the same bytes.
		c.CreateImage(t, "mirrored", 16*MiB)
		dir := stackdtest.SocketDir(t)
		file, sock, ctlSock := filepath.Join(dir, "leg1.img"), filepath.Join(dir, "nbd.sock"), filepath.Join(dir, "control.sock")
		conf := fmt.Sprintf("listen:\n  - unix: %s\nmetrics: {address: off}\ncontrol: %s\nexports:\n  - name: disk\n    stack: {mirror: {legs: [%s, {file: {path: %s, size: 16MiB}}]}}\n",
			sock, ctlSock, rbdNode(c, "mirrored", ""), file)
		d := stackdtest.Start(t, stackd(t), dir, conf)
		uri := "nbd+unix:///disk?socket=" + sock
		ctl := func(args ...string) string {
			return stackdtest.MustRun(t, cmdTimeout, stackd(t), append(args, "-control", ctlSock)...)
		}
		legs := func() string {
			var st struct {
				Exports []struct {
					Root struct {
						State struct {
							Legs []struct {
								State string `json:"state"`
							} `json:"legs"`
						} `json:"state"`
					} `json:"root"`
				} `json:"exports"`
			}
			out := ctl("status", "-json")
			if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Exports) == 0 {
				t.Fatalf("stackd status -json: %v\n%s", err, out)
			}
			var s []string
			for _, l := range st.Exports[0].Root.State.Legs {
				s = append(s, l.State)
			}
			return strings.Join(s, " ")
		}
		stackdtest.WaitFor(t, "the first resync (image to file)", time.Minute, func() bool { return legs() == "in_sync in_sync" })

		ctl("leg", "fail", "disk/mirror/leg0")
		if got := legs(); got != "faulty in_sync" {
			t.Fatalf("after leg fail: legs %s", got)
		}
		src := filepath.Join(dir, "src.img")
		sum := randomFile(t, src, 16*MiB, 9)
		stackdtest.MustRun(t, cmdTimeout, "nbdcopy", src, uri) // the file leg alone takes it
		ctl("leg", "restore", "disk/mirror/leg0")
		stackdtest.WaitFor(t, "the rbd leg's resync", time.Minute, func() bool { return legs() == "in_sync in_sync" })
		d.Stop(t)

		image := filepath.Join(dir, "image.img")
		c.RBD(t, "export", "mirrored", image)
		if got := fileSHA(t, image); got != sum {
			t.Errorf("the rbd image after resync: SHA-256 %x, want the data written while it was failed, %x", got, sum)
		}
		if got := fileSHA(t, file); got != sum {
			t.Errorf("the file leg: SHA-256 %x, want %x", got, sum)
		}
	})

	t.Run("image smaller than its size", func(t *testing.T) {
		c.CreateImage(t, "small", 16*MiB)
		dir := t.TempDir()
		out, err := checkStack(t, dir, rbdNode(c, "small", ", size: 32MiB"))
		if err == nil || !strings.Contains(out, "smaller than its configured size 32MiB") || !strings.Contains(out, "stackd.yaml:3") {
			t.Errorf("stackd check of a 16 MiB image configured as 32 MiB: %v\n%s", err, out)
		}
		// At the image's size, check accepts it and shows the leaf.
		out, err = checkStack(t, dir, rbdNode(c, "small", ", size: 16MiB"))
		if err != nil {
			t.Fatalf("stackd check: %v\n%s", err, out)
		}
		if !strings.Contains(out, "rbd 16MiB pool=rbd image=small conf="+c.Conf) {
			t.Errorf("stackd check of a 16 MiB image configured as 16 MiB:\n%s", out)
		}
	})

	t.Run("prefix of an image", func(t *testing.T) {
		c.CreateImage(t, "prefix", 32*MiB)
		_, uri := serve(t, rbdNode(c, "prefix", ", size: 16MiB"))
		if out := strings.TrimSpace(stackdtest.MustRun(t, cmdTimeout, "nbdinfo", "--size", uri)); out != "16777216" {
			t.Errorf("nbdinfo --size of a 32 MiB image served as 16 MiB: %s", out)
		}
		// The last block of the prefix is served; the one past it is not.
		stackdtest.MustRun(t, cmdTimeout, "qemu-io", "-f", "raw", "-c", "write -P 0x77 16380k 4k", "-c", "read -P 0x77 16380k 4k", uri)
		if out, err := stackdtest.Run(t, cmdTimeout, "qemu-io", "-f", "raw", "-c", "read 16M 4k", uri); err == nil && !strings.Contains(out, "error") {
			t.Errorf("read past the prefix succeeded:\n%s", out)
		}
	})

	t.Run("missing image", func(t *testing.T) {
		out, err := checkStack(t, t.TempDir(), rbdNode(c, "nosuch", ""))
		if err == nil || !strings.Contains(out, "does not exist") {
			t.Errorf("stackd check of a missing image: %v\n%s", err, out)
		}
	})

	t.Run("cluster unreachable", func(t *testing.T) {
		// A conf naming a monitor where nothing listens: the check
		// gives up within connect_timeout, and says why.
		dir := t.TempDir()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		cephConf := filepath.Join(dir, "ceph.conf")
		if err := os.WriteFile(cephConf, []byte(fmt.Sprintf("[global]\nmon host = v2:%s\nauth client required = none\nlog file = %s/client.log\n", addr, dir)), 0o644); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		out, err := checkStack(t, dir, fmt.Sprintf("{rbd: {pool: rbd, image: x, conf: %s, connect_timeout: 2s}}", cephConf))
		took := time.Since(start)
		if err == nil || !strings.Contains(out, "cannot reach the cluster") {
			t.Errorf("stackd check with no monitor: %v\n%s", err, out)
		}
		if took > 15*time.Second {
			t.Errorf("stackd check with no monitor took %v; want about connect_timeout (2s)", took)
		}
		t.Logf("check gave up after %v: %s", took.Round(time.Millisecond), strings.TrimSpace(out))
	})

	// Last: it stops the cluster.
	t.Run("cluster lost", func(t *testing.T) {
		c.CreateImage(t, "lost", 16*MiB)
		d, uri := serve(t, rbdNode(c, "lost", ", op_timeout: 3s"))
		stackdtest.MustRun(t, cmdTimeout, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", uri)
		c.Stop()
		start := time.Now()
		out, _ := stackdtest.Run(t, cmdTimeout, "qemu-io", "-f", "raw", "-c", "read -P 0x11 2M 1M", uri)
		took := time.Since(start)
		if !strings.Contains(out, "Input/output error") {
			t.Errorf("read with the cluster gone: want an I/O error\n%s", out)
		}
		if took > 30*time.Second {
			t.Errorf("read with the cluster gone took %v; want it bounded by op_timeout (3s) and librbd's retries", took)
		}
		t.Logf("read failed after %v", took.Round(time.Millisecond))
		d.Alive(t)
		// The daemon's log has librbd's own errno, which the client's
		// EIO does not carry.
		logged := false
		for _, r := range d.Log().Records() {
			if r["msg"] == "rbd request failed" && r["librbd_errno"] != nil && r["image"] == c.Pool+"/lost" {
				logged = true
				t.Logf("logged: librbd errno %v (%v), the client got %v", r["librbd_errno"], r["err"], r["errno"])
			}
		}
		if !logged {
			t.Errorf("no \"rbd request failed\" record with librbd_errno for image %s/lost in the log", c.Pool)
		}
	})
}
