// Package peers tests the stackd daemon against the NBD clients people
// actually use with it: nbdinfo, nbdcopy and libnbd's Python bindings
// (nbdsh), qemu-io and qemu-img, fio's nbd engine, and a hand-written raw
// client for what no well-behaved client sends.
//
// TestMain builds ./cmd/stackd once; each test starts its own daemon on a
// unix socket in its temporary directory (and 127.0.0.1 where it needs
// TCP), and stops it with SIGTERM at the end, requiring a clean exit.
//
// The nbd kind's tests (remote_test.go, hosts_test.go) run the peers as
// remote servers instead, behind a front stackd; hosts_test.go puts each
// on a network namespace of its own.
//
// A test whose peer is not installed is skipped, or fails when CI=true:
// scripts/install-test-deps.sh installs them all.
package peers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
)

// cmdTimeout bounds every external command a test runs.
const cmdTimeout = 2 * time.Minute

// stackdBin is the daemon TestMain built.
var stackdBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "stackd-peers-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "peers:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if stackdBin, err = stackdtest.Build(dir, false); err != nil {
		fmt.Fprintln(os.Stderr, "peers:", err)
		return 1
	}
	return m.Run()
}

// need makes sure the peer command is installed.
func need(t *testing.T, cmd string) {
	t.Helper()
	if _, err := exec.LookPath(cmd); err != nil {
		stackdtest.Missing(t, "peer %s not installed", cmd)
	}
}

// nbdPython finds a Python interpreter that can import libnbd's bindings
// (python3-libnbd, what nbdsh runs). nbdsh itself runs whatever python3
// comes first on PATH, which need not be the one the bindings were
// installed for, so the tests run their scripts with the interpreter
// found here instead.
var nbdPython = sync.OnceValue(func() string {
	var candidates []string
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, "/usr/bin/python3", "/usr/local/bin/python3")
	for _, p := range candidates {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := exec.CommandContext(ctx, p, "-c", "import nbd; nbd.NBD()").Run()
		cancel()
		if err == nil {
			return p
		}
	}
	return ""
})

// needNBDPython returns the interpreter for libnbd scripts.
func needNBDPython(t *testing.T) string {
	t.Helper()
	p := nbdPython()
	if p == "" {
		stackdtest.Missing(t, "no python3 with libnbd bindings (python3-libnbd, nbdsh) installed")
	}
	return p
}

// run and mustRun run an external command within cmdTimeout (see
// stackdtest.Run).
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	return stackdtest.Run(t, cmdTimeout, name, args...)
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	return stackdtest.MustRun(t, cmdTimeout, name, args...)
}

// exitCode returns the exit status of a command that ran, or -1.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}

var cmdline = stackdtest.Cmdline

// Sizes.
const (
	KiB = 1 << 10
	MiB = 1 << 20
)

// randomImage writes a size-byte image of seeded random data with zero
// holes in it (a whole MiB every 8 MiB, a 4 KiB block every 3 MiB), so
// that copies exercise the clients' sparse handling and the server's
// block status as well as plain data. It returns the SHA-256 of the image.
func randomImage(t *testing.T, path string, size int64, seed uint64) [sha256.Size]byte {
	t.Helper()
	var key [32]byte
	for i := range key {
		key[i] = byte(seed >> (8 * (i % 8)))
	}
	key[31] ^= 0x5a
	rng := rand.NewChaCha8(key)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	w := io.MultiWriter(f, h)
	buf := make([]byte, MiB)
	for off := int64(0); off < size; off += MiB {
		n := min(int64(MiB), size-off)
		b := buf[:n]
		if (off/MiB)%8 == 5 {
			clear(b)
		} else {
			rng.Read(b)
			if (off/MiB)%3 == 1 {
				clear(b[12*KiB : 16*KiB])
			}
		}
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// fileSHA256 hashes a file.
func fileSHA256(t *testing.T, path string) ([sha256.Size]byte, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum, n
}

// firstDiff returns the offset of the first differing byte of two files,
// or -1, for a readable failure message.
func firstDiff(t *testing.T, a, b string) int64 {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, MiB), make([]byte, MiB)
	for off := int64(0); ; off += MiB {
		na, _ := io.ReadFull(fa, ba)
		nb, _ := io.ReadFull(fb, bb)
		if i := mismatch(ba[:na], bb[:nb]); i >= 0 {
			return off + int64(i)
		}
		if na == 0 {
			return -1
		}
	}
}

// mismatch returns the first index where a and b differ, or -1.
func mismatch(a, b []byte) int {
	n := min(len(a), len(b))
	if bytes.Equal(a[:n], b[:n]) {
		if len(a) != len(b) {
			return n
		}
		return -1
	}
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// nbdcopyRoundTrip writes a random image of size bytes (from seed, see
// randomImage) into the export at uri with nbdcopy, copies the export back
// out, and fails the test unless the copy hashes the same; what names the
// round trip in the failure. It returns the image's path.
func nbdcopyRoundTrip(t *testing.T, uri string, size int64, seed uint64, what string) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src.img")
	want := randomImage(t, src, size, seed)
	mustRun(t, "nbdcopy", src, uri)
	dst := filepath.Join(t.TempDir(), "dst.img")
	mustRun(t, "nbdcopy", uri, dst)
	if got, n := fileSHA256(t, dst); n != size || got != want {
		t.Fatalf("nbdcopy round trip %s: %d bytes, SHA-256 %x, want %x; first difference at %d",
			what, n, got, want, firstDiff(t, src, dst))
	}
	return src
}

// fioVerify has fio write size bytes of the export at uri, 4 KiB at a time
// at queue depth 32 in random order, and read them back with crc32c
// verification, and fails the test unless every job wrote and verified
// all of them.
func fioVerify(t *testing.T, uri string, size int64) {
	t.Helper()
	jobs := runFio(t, uri, "--name=randwrite", "--rw=randwrite", "--bs=4k", "--iodepth=32",
		fmt.Sprintf("--size=%d", size), "--verify=crc32c", "--do_verify=1")
	for _, j := range jobs {
		if j.Write.Bytes != size || j.Read.Bytes != j.Write.Bytes {
			t.Errorf("fio job %s: wrote %d, verified %d bytes; want %d both", j.Name, j.Write.Bytes, j.Read.Bytes, size)
		}
	}
}
