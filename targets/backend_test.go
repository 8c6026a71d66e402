package targets

import (
	"bytes"
	"errors"
	"io"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/pojntfx/go-nbd/pkg/backend"

	"go.uber.org/goleak"

	"github.com/stackd/stackd/bioset"
)

func TestBackendModel(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	be, err := NewBackend(backend.NewMemoryBackend(make([]byte, 1<<20+333)))
	if err != nil {
		t.Fatal(err)
	}
	if be.Size() != 1<<20+333 {
		t.Fatalf("Size %d", be.Size())
	}
	if be.Caps()&(bioset.CapBlockStatus|bioset.CapFastZero) != 0 || be.Caps()&bioset.CapFlush == 0 {
		t.Fatalf("Caps %#x", be.Caps())
	}
	// TRIM is a no-op through the adapter, so the model keeps the data.
	exerciseModel(t, be, modelOpts{ops: 800, maxLen: 64 << 10, trimZeroes: false, seed: 3})
	checkOutOfRange(t, be)
	be.Close()
}

// recorder is a backend that counts syncs and fails on demand.
type recorder struct {
	*backend.MemoryBackend
	syncs    atomic.Int32
	writeErr error
	shortEOF bool
}

func (r *recorder) Sync() error { r.syncs.Add(1); return nil }

func (r *recorder) WriteAt(p []byte, off int64) (int, error) {
	if r.writeErr != nil {
		return 0, r.writeErr
	}
	return r.MemoryBackend.WriteAt(p, off)
}

func (r *recorder) ReadAt(p []byte, off int64) (int, error) {
	if r.shortEOF {
		n := len(p) / 2
		for i := range p[:n] {
			p[i] = 1
		}
		return n, io.EOF
	}
	return r.MemoryBackend.ReadAt(p, off)
}

func TestBackendSemantics(t *testing.T) {
	r := &recorder{MemoryBackend: backend.NewMemoryBackend(make([]byte, 1<<20))}
	be, err := NewBackend(r)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()

	data := bytes.Repeat([]byte{4}, 8192)
	mustDo(t, be, bioset.OpWrite, 0, 0, 8192, data)
	mustDo(t, be, bioset.OpFlush, 0, 0, 0, nil)
	mustDo(t, be, bioset.OpWrite, bioset.FlagFUA, 0, 8192, data)
	if n := r.syncs.Load(); n != 2 {
		t.Fatalf("%d syncs after a FLUSH and a FUA write, want 2", n)
	}

	if err := do(t, be, bioset.OpWriteZeroes, bioset.FlagFastZero, 0, 4096, nil); err != syscall.ENOTSUP {
		t.Fatalf("fast zero: %v, want ENOTSUP", err)
	}
	mustDo(t, be, bioset.OpWriteZeroes, bioset.FlagNoHole, 100, 1<<20-100, nil) // > zero buffer
	want := make([]byte, 1<<20)
	copy(want, data[:100])
	if !bytes.Equal(read(t, be, 0, 1<<20), want) {
		t.Fatal("write zeroes read back wrong")
	}
	mustDo(t, be, bioset.OpTrim, 0, 0, 4096, nil)
	mustDo(t, be, bioset.OpCache, 0, 0, 4096, nil)

	// A backend's errno reaches the client; other errors become EIO.
	r.writeErr = syscall.ENOSPC
	if err := do(t, be, bioset.OpWrite, 0, 0, 10, make([]byte, 10)); err != syscall.ENOSPC {
		t.Fatalf("write: %v, want ENOSPC", err)
	}
	r.writeErr = errors.New("disk on fire")
	if err := do(t, be, bioset.OpWrite, 0, 0, 10, make([]byte, 10)); err != syscall.EIO {
		t.Fatalf("write: %v, want EIO", err)
	}

	// A short read at EOF leaves zeroes, not stale buffer contents.
	r.shortEOF = true
	got := read(t, be, 0, 10)
	if !bytes.Equal(got, []byte{1, 1, 1, 1, 1, 0, 0, 0, 0, 0}) {
		t.Fatalf("short read: %v", got)
	}
}

type sizeFails struct{ *backend.MemoryBackend }

func (sizeFails) Size() (int64, error) { return 0, errors.New("no size") }

func TestBackendSizeError(t *testing.T) {
	if _, err := NewBackend(sizeFails{}); err == nil {
		t.Fatal("a backend without a size was accepted")
	}
}
