package targets

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/goleak"

	"github.com/stackd/stackd/bioset"

	"github.com/stackd/stackd/internal/stackdtest"
)

func openTestFile(t *testing.T, size uint64, o FileOptions) (*File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := OpenFile(path, size, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, path
}

func TestFileCreatesSparse(t *testing.T) {
	const size = 256 << 20
	f, path := openTestFile(t, size, FileOptions{})
	if f.Size() != size || f.Caps() != bioset.CapsAll {
		t.Fatalf("Size %d Caps %#x", f.Size(), f.Caps())
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size {
		t.Fatalf("created file is %d bytes, want %d", st.Size, size)
	}
	if used := st.Blocks * 512; used > 1<<20 {
		t.Fatalf("created file uses %d bytes on disk: not sparse", used)
	}
	if st.Mode&0o077 != 0 {
		t.Fatalf("created file mode %o is readable by others", st.Mode&0o777)
	}
	if got := read(t, f, size-4096, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("new file does not read zero")
	}

	if _, err := OpenFile(filepath.Join(t.TempDir(), "none"), 0, FileOptions{}); err == nil {
		t.Fatal("creating a file of size 0 succeeded")
	}
}

// createUnderStrace names the file that TestFileCreationIsDurable's child
// process creates: the test binary re-run under strace.
const createUnderStrace = "STACKD_TEST_CREATE_FILE"

// TestFileCreationIsDurable: once a missing file is created and sized, its
// inode and then its directory are fsynced, before OpenFile returns, so
// that a crash right after stackd starts cannot lose the file or its size
// (a new directory entry is durable only once the directory is synced).
// A crash cannot be staged here, so the test watches the syscalls for
// real: it runs itself under strace, which names the path of each fd (-y),
// and checks the order creat, ftruncate, fsync(file), fsync(dir).
func TestFileCreationIsDurable(t *testing.T) {
	if path := os.Getenv(createUnderStrace); path != "" {
		f, err := OpenFile(path, 1<<20, FileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		return
	}
	straceBin, err := exec.LookPath("strace")
	if err != nil {
		stackdtest.Missing(t, "strace not found: install Debian's strace")
	}
	// EvalSymlinks: strace prints the fd's real path.
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "disk.img")
	trace := filepath.Join(t.TempDir(), "strace.out")
	cmd := exec.Command(straceBin, "-f", "-qq", "-y", "-o", trace,
		"-e", "trace=openat,ftruncate,fsync,fdatasync",
		os.Args[0], "-test.run=^TestFileCreationIsDurable$", "-test.count=1")
	cmd.Env = append(os.Environ(), createUnderStrace+"="+path)
	if out, err := cmd.CombinedOutput(); err != nil {
		if strings.Contains(string(out), "ptrace") {
			stackdtest.Missing(t, "strace cannot trace here: %s", out)
		}
		t.Fatalf("the child that creates %s: %v\n%s", path, err, out)
	}
	data, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	// Each step must come after the one before it, and succeed; "= 0"
	// may follow on a "<... resumed>" line when another thread's call
	// interleaves, so a step is matched by its call and checked for
	// success by the absence of an error on the rest of its line.
	fd := `\d+<` + regexp.QuoteMeta(path) + `>`
	steps := []struct{ what, re string }{
		{"create the file", `openat\(.*"` + regexp.QuoteMeta(path) + `", [^)]*O_CREAT\|O_EXCL`},
		{"size it", `ftruncate\(` + fd + `, 1048576`},
		{"fsync the file", `fsync\(` + fd + `\)`},
		{"fsync its directory", `fsync\(\d+<` + regexp.QuoteMeta(dir) + `>\)`},
	}
	lines := strings.Split(string(data), "\n")
	at := 0
	for _, step := range steps {
		re := regexp.MustCompile(step.re)
		for at < len(lines) && !re.MatchString(lines[at]) {
			at++
		}
		if at == len(lines) {
			t.Fatalf("OpenFile did not %s (%s) after the steps before it; the syscalls it made:\n%s", step.what, step.re, data)
		}
		if strings.Contains(lines[at], "= -1 ") {
			t.Fatalf("%s failed: %s", step.what, lines[at])
		}
		at++
	}
}

func TestFileExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "small.img")
	if err := os.WriteFile(path, make([]byte, 12345), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenFile(path, 1<<20, FileOptions{})
	if err == nil {
		t.Fatal("a file smaller than the configured size was accepted")
	}
	for _, want := range []string{path, "12345", "1048576"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}

	// Size 0 takes the file's size; a smaller size serves a prefix.
	for _, c := range []struct{ size, want uint64 }{{0, 12345}, {4096, 4096}, {12345, 12345}} {
		f, err := OpenFile(path, c.size, FileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if f.Size() != c.want {
			t.Errorf("size %d: got %d, want %d", c.size, f.Size(), c.want)
		}
		f.Close()
	}

	if _, err := OpenFile(t.TempDir(), 0, FileOptions{ReadOnly: true}); err == nil {
		t.Fatal("a directory was accepted as a disk")
	}
}

func TestFileModel(t *testing.T) {
	f, _ := openTestFile(t, 1<<20+777, FileOptions{Workers: 3})
	exerciseModel(t, f, modelOpts{ops: 800, maxLen: 96 << 10, trimZeroes: true, seed: 7})
}

func TestFileOutOfRange(t *testing.T) {
	f, _ := openTestFile(t, 1<<20, FileOptions{})
	checkOutOfRange(t, f)
}

func TestFileReadOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ro.img")
	data := bytes.Repeat([]byte("stackd"), 2000)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path, 0, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.ReadOnly() || f.Caps()&(bioset.CapTrim|bioset.CapWriteZeroes|bioset.CapFUA) != 0 {
		t.Fatalf("ReadOnly %v, Caps %#x", f.ReadOnly(), f.Caps())
	}
	for _, op := range []bioset.Op{bioset.OpWrite, bioset.OpTrim, bioset.OpWriteZeroes} {
		var buf []byte
		if op.HasPayload() {
			buf = make([]byte, 100)
		}
		if err := do(t, f, op, 0, 0, 100, buf); err != syscall.EPERM {
			t.Errorf("%v on a read-only file: %v, want EPERM", op, err)
		}
	}
	if got := read(t, f, 0, uint64(len(data))); !bytes.Equal(got, data) {
		t.Fatal("read-only file reads back wrong")
	}
	mustDo(t, f, bioset.OpFlush, 0, 0, 0, nil)
	mustDo(t, f, bioset.OpCache, 0, 0, 4096, nil)

	if _, err := OpenFile(path+".missing", 4096, FileOptions{ReadOnly: true}); err == nil {
		t.Fatal("a read-only target created its missing file")
	}
}

func TestFileFUAAndFlush(t *testing.T) {
	f, path := openTestFile(t, 1<<20, FileOptions{})
	data := bytes.Repeat([]byte{0x5a}, 10000)
	mustDo(t, f, bioset.OpWrite, bioset.FlagFUA, 3000, uint64(len(data)), data)
	mustDo(t, f, bioset.OpWriteZeroes, bioset.FlagFUA|bioset.FlagNoHole, 4000, 100, nil)
	mustDo(t, f, bioset.OpTrim, bioset.FlagFUA, 8000, 100, nil)
	mustDo(t, f, bioset.OpFlush, 0, 0, 0, nil)
	onDisk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20)
	copy(want[3000:], data)
	clear(want[4000:4100])
	clear(want[8000:8100])
	if !bytes.Equal(onDisk, want) {
		t.Fatal("file contents differ from what was written")
	}
}

// When ZERO_RANGE is missing, WRITE_ZEROES with NO_HOLE writes zeroes —
// unless FAST_ZERO asks to be told instead. Without hole punching, TRIM
// quietly does nothing.
func TestFileZeroFallbacks(t *testing.T) {
	f, _ := openTestFile(t, 4<<20, FileOptions{})
	fill := bytes.Repeat([]byte{1}, 4<<20)
	write(t, f, 0, fill)
	f.noZeroRange.Store(true)
	f.noPunch.Store(true)

	if err := do(t, f, bioset.OpWriteZeroes, bioset.FlagNoHole|bioset.FlagFastZero, 0, 4096, nil); err != syscall.ENOTSUP {
		t.Fatalf("fast zero without ZERO_RANGE: %v, want ENOTSUP", err)
	}
	if err := do(t, f, bioset.OpWriteZeroes, bioset.FlagFastZero, 0, 4096, nil); err != syscall.ENOTSUP {
		t.Fatalf("fast zero without either mode: %v, want ENOTSUP", err)
	}
	if !bytes.Equal(read(t, f, 0, 4096), fill[:4096]) {
		t.Fatal("a failed fast zero changed the data")
	}
	// Slow path, longer than the shared zero buffer and unaligned.
	mustDo(t, f, bioset.OpWriteZeroes, bioset.FlagNoHole, 100, 3<<20, nil)
	want := bytes.Clone(fill)
	clear(want[100 : 100+3<<20])
	if !bytes.Equal(read(t, f, 0, 4<<20), want) {
		t.Fatal("written zeroes read back wrong")
	}
	mustDo(t, f, bioset.OpTrim, 0, 0, 4<<20, nil) // advisory: a no-op now
	if !bytes.Equal(read(t, f, 0, 4<<20), want) {
		t.Fatal("a trim without hole punching changed data")
	}

	// With the modes available, FAST_ZERO succeeds.
	f.noZeroRange.Store(false)
	f.noPunch.Store(false)
	mustDo(t, f, bioset.OpWriteZeroes, bioset.FlagNoHole|bioset.FlagFastZero, 0, 4096, nil)
	mustDo(t, f, bioset.OpWriteZeroes, bioset.FlagFastZero, 4096, 4096, nil)
	clear(want[:8192])
	if !bytes.Equal(read(t, f, 0, 4<<20), want) {
		t.Fatal("fast zero read back wrong")
	}
}

func TestFileBlockStatus(t *testing.T) {
	const k = 64 << 10
	f, _ := openTestFile(t, 16*k, FileOptions{})
	first := blockStatus(t, f, 0, 16*k, 4, 0)
	if len(first) != 1 || first[0].Flags != hz {
		t.Skipf("filesystem reports no holes in a new sparse file (%v)", first)
	}
	write(t, f, 4*k, bytes.Repeat([]byte{3}, k))
	write(t, f, 10*k, bytes.Repeat([]byte{3}, 2*k))
	wantExtents(t, blockStatus(t, f, 0, 16*k, 8, 0),
		ext(0, 4*k, hz), ext(4*k, k, 0), ext(5*k, 5*k, hz), ext(10*k, 2*k, 0), ext(12*k, 4*k, hz))

	const base = 1 << 40
	wantExtents(t, blockStatus(t, f, 4*k+100, 8*k, 8, base),
		ext(base, k-100, 0), ext(base+k-100, 5*k, hz), ext(base+6*k-100, 2*k, 0), ext(base+8*k-100, 100, hz))
	wantExtents(t, blockStatus(t, f, 0, 16*k, 2, 0), ext(0, 4*k, hz), ext(4*k, k, 0))
	wantExtents(t, blockStatus(t, f, 0, 16*k, 0, 0))

	// A trimmed range turns back into a hole.
	mustDo(t, f, bioset.OpTrim, 0, 10*k, 2*k, nil)
	wantExtents(t, blockStatus(t, f, 0, 16*k, 8, 0),
		ext(0, 4*k, hz), ext(4*k, k, 0), ext(5*k, 11*k, hz))
	// The tail of the file is a hole up to the end (ENXIO from SEEK_DATA).
	wantExtents(t, blockStatus(t, f, 6*k, 10*k, 8, 0), ext(0, 10*k, hz))
}

func TestFileCloseLeaksNothing(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	path := filepath.Join(t.TempDir(), "leak.img")
	for range 3 {
		f, err := OpenFile(path, 1<<20, FileOptions{Workers: 16})
		if err != nil {
			t.Fatal(err)
		}
		write(t, f, 0, make([]byte, 4096))
		read(t, f, 0, 4096)
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
}

// ramDir returns a fresh directory on tmpfs (/dev/shm), where a File runs
// its reads and writes inline.
func ramDir(t *testing.T) string {
	t.Helper()
	var fs syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &fs); err != nil || fs.Type != 0x01021994 {
		t.Skip("no tmpfs at /dev/shm on this machine")
	}
	dir, err := os.MkdirTemp("/dev/shm", "stackd-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestFileModelInRAM: the model on tmpfs, where READ and WRITE run inline
// and everything else on the workers, in any mix.
func TestFileModelInRAM(t *testing.T) {
	f, err := OpenFile(filepath.Join(ramDir(t), "disk.img"), 1<<20+777, FileOptions{Workers: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.inRAM {
		t.Fatal("a file on tmpfs is not recognised as RAM")
	}
	exerciseModel(t, f, modelOpts{ops: 800, maxLen: 96 << 10, trimZeroes: true, seed: 8})
	if f.inlined.Load() == 0 {
		t.Fatal("no bio ran inline on tmpfs")
	}
}

// TestFileInline: which bios Submit performs itself, and that the inline
// path allocates nothing.
func TestFileInline(t *testing.T) {
	path := filepath.Join(ramDir(t), "disk.img")
	f, err := OpenFile(path, 1<<20, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := bytes.Repeat([]byte("inline!!"), 512)
	write(t, f, 4096, data)
	if got := read(t, f, 4096, 4096); !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
	if n := f.inlined.Load(); n != 2 {
		t.Fatalf("%d of a READ and a WRITE ran inline, want both", n)
	}
	// FUA needs fdatasync, FLUSH is one, TRIM a fallocate: the workers'.
	mustDo(t, f, bioset.OpWrite, bioset.FlagFUA, 0, 4096, data)
	mustDo(t, f, bioset.OpFlush, 0, 0, 0, nil)
	mustDo(t, f, bioset.OpTrim, 0, 0, 4096, nil)
	if n := f.inlined.Load(); n != 2 {
		t.Fatalf("FUA, FLUSH or TRIM ran inline (%d inline)", n)
	}

	// Someone truncates the file behind the target's back: the inline
	// read comes up short, and the workers read the missing tail as zeroes.
	if err := os.Truncate(path, 4096+100); err != nil {
		t.Fatal(err)
	}
	got := read(t, f, 4096, 4096)
	if !bytes.Equal(got[:100], data[:100]) || !bytes.Equal(got[100:], make([]byte, 4096-100)) {
		t.Fatal("a read across the truncated end is not data then zeroes")
	}
	if err := os.Truncate(path, 1<<20); err != nil {
		t.Fatal(err)
	}

	buf := make([]byte, 4096)
	var b bioset.Bio
	var s bioset.Submitter
	for _, op := range []bioset.Op{bioset.OpWrite, bioset.OpRead} {
		if n := testing.AllocsPerRun(100, func() {
			b.Init(op, 8192, 4096, buf, nopEnd)
			b.Dev = f
			s.Submit(&b)
		}); n != 0 {
			t.Errorf("inline %v: %v allocations per bio, want 0", op, n)
		}
	}
}

// TestFileInlineOnDisk: off tmpfs, a READ of cached data runs inline if
// the filesystem can promise not to wait (RWF_NOWAIT), and the target
// learns when it cannot; either way the data is right.
func TestFileInlineOnDisk(t *testing.T) {
	f, _ := openTestFile(t, 1<<20, FileOptions{})
	data := bytes.Repeat([]byte("on disk!"), 512)
	write(t, f, 0, data) // now in the page cache
	for range 3 {
		if got := read(t, f, 0, 4096); !bytes.Equal(got, data) {
			t.Fatal("read back differs")
		}
	}
	t.Logf("inline: %d; filesystem lacks RWF_NOWAIT for reads: %v, for writes: %v",
		f.inlined.Load(), f.noNowaitRead.Load(), f.noNowaitWrite.Load())
	if f.inlined.Load() == 0 && !f.noNowaitRead.Load() {
		t.Fatal("cached reads went to the workers, though the filesystem takes RWF_NOWAIT")
	}
}
