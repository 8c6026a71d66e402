package targets

import (
	"fmt"
	"io"
	"syscall"

	"github.com/pojntfx/go-nbd/pkg/backend"

	"github.com/stackd/stackd/bioset"
)

// Backend serves a go-nbd backend.Backend as a leaf target, so that storage
// written for go-nbd can sit under stackd's layers. The interface is
// synchronous and may be slow, so calls run on a small worker pool and
// Submit only queues.
type Backend struct {
	be   backend.Backend
	size uint64
	w    *workers
	errorCounter
}

// NewBackend wraps be. Its size is read once: a block device does not
// change size under a running export.
func NewBackend(be backend.Backend) (*Backend, error) {
	n, err := be.Size()
	if err != nil {
		return nil, fmt.Errorf("targets: backend size: %w", err)
	}
	if n < 0 {
		return nil, fmt.Errorf("targets: backend reports negative size %d", n)
	}
	t := &Backend{be: be, size: uint64(n)}
	t.w = newWorkers(DefaultBackendWorkers, t.perform)
	return t, nil
}

// Size returns the device size in bytes.
func (t *Backend) Size() uint64 { return t.size }

// Caps reports what the go-nbd interface lets the adapter honour. There is
// no way to ask a backend for holes, and no way to zero faster than by
// writing, so BLOCK_STATUS and FAST_ZERO are not offered.
func (t *Backend) Caps() bioset.Caps {
	return bioset.CapFlush | bioset.CapFUA | bioset.CapTrim | bioset.CapWriteZeroes | bioset.CapCache
}

// Close waits for queued bios to finish. The backend itself stays open:
// go-nbd backends have no Close, and whoever made it owns it.
func (t *Backend) Close() error {
	t.w.close()
	return nil
}

// Submit queues b for the workers.
func (t *Backend) Submit(_ *bioset.Submitter, b *bioset.Bio) {
	t.w.push(b)
}

func (t *Backend) perform(b *bioset.Bio) {
	if t.admit(b, t.size) {
		t.end(b, t.do(b))
	}
}

func (t *Backend) do(b *bioset.Bio) error {
	off := int64(b.Offset)
	var err error
	switch b.Op {
	case bioset.OpRead:
		return t.read(b.Buf, off)
	case bioset.OpFlush:
		return t.be.Sync()
	case bioset.OpCache, bioset.OpTrim:
		// Both are advisory, and the interface has no way to act on them.
		return nil
	case bioset.OpBlockStatus:
		// Not offered in Caps; if asked anyway, "all data" is the answer
		// that is never wrong.
		f := newExtentFill(b)
		f.add(b.Length, 0)
		return nil
	case bioset.OpWrite:
		err = t.write(b.Buf, off)
	case bioset.OpWriteZeroes:
		if b.Flags&bioset.FlagFastZero != 0 {
			return syscall.ENOTSUP
		}
		for length := int64(b.Length); length > 0 && err == nil; {
			n := min(length, int64(len(zeroes)))
			err = t.write(zeroes[:n], off)
			off, length = off+n, length-n
		}
	}
	if err == nil && b.Flags&bioset.FlagFUA != 0 {
		err = t.be.Sync()
	}
	return err
}

// read fills buf from off. io.ReaderAt allows io.EOF with a full buffer, and
// a short read at EOF means a backend smaller than it said: the missing
// tail reads as zeroes, as past the end of a file.
func (t *Backend) read(buf []byte, off int64) error {
	if len(buf) == 0 {
		return nil // some backends mishandle an empty call at their end
	}
	n, err := t.be.ReadAt(buf, off)
	if err == io.EOF {
		clear(buf[n:])
		return nil
	}
	if err == nil && n < len(buf) {
		return syscall.EIO // io.ReaderAt forbids this; do not pass garbage on
	}
	return err
}

func (t *Backend) write(buf []byte, off int64) error {
	if len(buf) == 0 {
		return nil
	}
	n, err := t.be.WriteAt(buf, off)
	if err == nil && n < len(buf) {
		return syscall.EIO
	}
	return err
}
