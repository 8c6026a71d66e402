//go:build rbd && pacific

package targets

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/stackd/stackd/bioset"
)

// rbdTarget is an open image. go-ceph's image calls are synchronous, so a
// bounded pool of workers makes them: each blocked call holds one OS
// thread, and Workers of them bound both the threads and what the target
// asks of the cluster at once. (librbd's own threads do the networking; a
// worker only waits for its call's completion.) See docs/DESIGN.md, "The
// rbd target", for why this and not a shim over rbd_aio_*.
type rbdTarget struct {
	conn     *rados.Conn
	ioctx    *rados.IOContext
	img      *rbd.Image
	name     string // pool/namespace/image, for logs
	size     uint64
	readOnly bool
	w        *workers
	errorCounter

	inFlight atomic.Int64
	latency  [bioset.NumOps]Latency
	// lastLog is when an error was last logged (UnixNano): a lost
	// cluster fails every bio, and one line a second says so.
	lastLog atomic.Int64

	closing  sync.Once
	closeErr error
}

// rbdConnect reads the conf, bounds every wait librados and librbd may do,
// and connects. client_mount_timeout bounds the monitor handshake; the op
// timeouts bound each call afterwards, so that a lost cluster fails bios
// instead of holding them.
func rbdConnect(o RBDOptions) (*rados.Conn, error) {
	conn, err := rados.NewConnWithUser(o.User)
	if err != nil {
		return nil, fmt.Errorf("rbd: user %s: %w", o.User, err)
	}
	if err := conn.ReadConfigFile(o.Conf); err != nil {
		conn.Shutdown()
		return nil, fmt.Errorf("rbd: read %s: %w", o.Conf, err)
	}
	secs := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }
	for _, kv := range [][2]string{
		{"client_mount_timeout", secs(o.ConnectTimeout)},
		{"rados_mon_op_timeout", secs(o.OpTimeout)},
		{"rados_osd_op_timeout", secs(o.OpTimeout)},
	} {
		if err := conn.SetConfigOption(kv[0], kv[1]); err != nil {
			conn.Shutdown()
			return nil, fmt.Errorf("rbd: set %s: %w", kv[0], err)
		}
	}
	// Connect honours client_mount_timeout; the timer is a second bound
	// in case a step outside it hangs (a conf naming an address that
	// drops packets). A connect that outlives it is abandoned: the
	// process is failing to start anyway.
	done := make(chan error, 1)
	go func() { done <- conn.Connect() }()
	select {
	case err := <-done:
		if err != nil {
			conn.Shutdown()
			return nil, fmt.Errorf("rbd: cannot reach the cluster of %s within %v: %w", o.Conf, o.ConnectTimeout, err)
		}
	case <-time.After(o.ConnectTimeout + 5*time.Second):
		return nil, fmt.Errorf("rbd: cannot reach the cluster of %s within %v", o.Conf, o.ConnectTimeout)
	}
	return conn, nil
}

func rbdImageName(o RBDOptions) string {
	if o.Namespace != "" {
		return o.Pool + "/" + o.Namespace + "/" + o.Image
	}
	return o.Pool + "/" + o.Image
}

// rbdOpen connects and opens the image, read-only if asked.
func rbdOpen(o RBDOptions, readOnly bool) (*rados.Conn, *rados.IOContext, *rbd.Image, error) {
	conn, err := rbdConnect(o)
	if err != nil {
		return nil, nil, nil, err
	}
	ioctx, err := conn.OpenIOContext(o.Pool)
	if err != nil {
		conn.Shutdown()
		return nil, nil, nil, fmt.Errorf("rbd: pool %s: %w", o.Pool, err)
	}
	ioctx.SetNamespace(o.Namespace)
	var img *rbd.Image
	if readOnly {
		img, err = rbd.OpenImageReadOnly(ioctx, o.Image, rbd.NoSnapshot)
	} else {
		img, err = rbd.OpenImage(ioctx, o.Image, rbd.NoSnapshot)
	}
	if err != nil {
		ioctx.Destroy()
		conn.Shutdown()
		if errors.Is(err, rbd.ErrNotFound) {
			return nil, nil, nil, fmt.Errorf("rbd: image %s does not exist (rbd create --size SIZE %s)", rbdImageName(o), rbdImageName(o))
		}
		return nil, nil, nil, fmt.Errorf("rbd: open image %s: %w", rbdImageName(o), err)
	}
	return conn, ioctx, img, nil
}

func probeRBD(o RBDOptions) (uint64, error) {
	conn, ioctx, img, err := rbdOpen(o, true)
	if err != nil {
		return 0, err
	}
	defer func() {
		img.Close()
		ioctx.Destroy()
		conn.Shutdown()
	}()
	size, err := img.GetSize()
	if err != nil {
		return 0, fmt.Errorf("rbd: size of image %s: %w", rbdImageName(o), err)
	}
	return size, nil
}

func openRBD(o RBDOptions) (RBDDevice, error) {
	conn, ioctx, img, err := rbdOpen(o, o.ReadOnly)
	if err != nil {
		return nil, err
	}
	size, err := img.GetSize()
	if err != nil {
		img.Close()
		ioctx.Destroy()
		conn.Shutdown()
		return nil, fmt.Errorf("rbd: size of image %s: %w", rbdImageName(o), err)
	}
	r := &rbdTarget{conn: conn, ioctx: ioctx, img: img, name: rbdImageName(o), size: size, readOnly: o.ReadOnly}
	r.w = newWorkers(o.Workers, r.perform)
	return r, nil
}

func (r *rbdTarget) Size() uint64 { return r.size }

// Caps: librbd has flush, discard and writesame, and tells which objects
// exist (rbd_diff_iterate2), for BLOCK_STATUS. CACHE and FAST_ZERO are
// not offered: librbd can neither prefetch on request nor promise that
// zeroing is fast.
func (r *rbdTarget) Caps() bioset.Caps {
	if r.readOnly {
		return bioset.CapFlush | bioset.CapBlockStatus
	}
	return bioset.CapFlush | bioset.CapFUA | bioset.CapTrim | bioset.CapWriteZeroes | bioset.CapBlockStatus
}

func (r *rbdTarget) InFlight() int64 { return r.inFlight.Load() }

func (r *rbdTarget) ServiceLatency(op bioset.Op) *Latency {
	if int(op) >= len(r.latency) {
		return nil
	}
	return &r.latency[op]
}

// Close lets the workers finish what is queued, then flushes and closes
// the image and the connection.
func (r *rbdTarget) Close() error {
	r.closing.Do(func() {
		r.w.close()
		var errs []error
		if !r.readOnly {
			errs = append(errs, r.img.Flush())
		}
		errs = append(errs, r.img.Close())
		r.ioctx.Destroy()
		r.conn.Shutdown()
		r.closeErr = errors.Join(errs...)
	})
	return r.closeErr
}

// Submit queues b for a worker; it never waits on the cluster.
func (r *rbdTarget) Submit(_ *bioset.Submitter, b *bioset.Bio) {
	if !r.admit(b, r.size) {
		return
	}
	if r.readOnly && b.Op != bioset.OpRead && b.Op != bioset.OpFlush && b.Op != bioset.OpCache && b.Op != bioset.OpBlockStatus {
		r.end(b, syscall.EPERM)
		return
	}
	r.inFlight.Add(1)
	r.w.push(b)
}

func (r *rbdTarget) perform(b *bioset.Bio) {
	start := time.Now()
	err := r.do(b)
	r.latency[b.Op].Observe(time.Since(start))
	r.inFlight.Add(-1)
	if err != nil {
		err = r.failed(b, err)
	}
	r.end(b, err)
}

// failed logs a librbd error with its errno, at most once a second, and
// returns the errno the bio ends with.
func (r *rbdTarget) failed(b *bioset.Bio, err error) error {
	var code interface{ ErrorCode() int }
	errno := syscall.EIO
	ret := 0
	if errors.As(err, &code) {
		ret = code.ErrorCode()
		errno = rbdErrno(ret)
	}
	now := time.Now().UnixNano()
	if last := r.lastLog.Load(); now-last >= int64(time.Second) && r.lastLog.CompareAndSwap(last, now) {
		slog.Warn("rbd request failed", "image", r.name, "op", b.Op.String(),
			"offset", b.Offset, "length", b.Length, "librbd_errno", -ret, "err", err.Error(), "errno", errno.Error())
	}
	return errno
}

// rbdZeroBlock is the pattern writesame repeats to zero a range.
var rbdZeroBlock = zeroes[:rbdBlock]

// rbdBlock is the unit NBD ranges come in, and writesame's pattern.
const rbdBlock = 512

// rbdWriteSameMax bounds one rbd_writesame: it returns the bytes written as
// an int, so a range of 2 GiB or more would read as an error.
const rbdWriteSameMax = 1 << 30

func (r *rbdTarget) do(b *bioset.Bio) error {
	switch b.Op {
	case bioset.OpRead:
		_, err := r.img.ReadAt(b.Buf, int64(b.Offset))
		if err == io.EOF {
			// A short read inside the size: the image shrank under
			// the target.
			return syscall.EIO
		}
		return err
	case bioset.OpWrite:
		if _, err := r.img.WriteAt(b.Buf, int64(b.Offset)); err != nil {
			if err == io.EOF {
				return syscall.EIO
			}
			return err
		}
	case bioset.OpFlush:
		return r.img.Flush()
	case bioset.OpTrim:
		if _, err := r.img.Discard(b.Offset, b.Length); err != nil {
			return err
		}
	case bioset.OpWriteZeroes:
		if err := r.writeZeroes(b); err != nil {
			return err
		}
	case bioset.OpBlockStatus:
		return r.blockStatus(b)
	case bioset.OpCache:
		return nil // a hint; librbd's cache fills on reads anyway
	default:
		return syscall.EINVAL
	}
	if b.Flags&bioset.FlagFUA != 0 {
		// librbd 16's synchronous calls take no FUA flag: the write,
		// then a flush of everything before it, which includes it.
		return r.img.Flush()
	}
	return nil
}

// writeZeroes zeroes the bio's range. Without NO_HOLE, writesame of a
// zero block, which librbd turns into a discard that zeroes (objects
// wholly inside are removed, the edges written); with it, zeroes are
// written, since the client asked for the range to stay allocated.
func (r *rbdTarget) writeZeroes(b *bioset.Bio) error {
	off, n := b.Offset, b.Length
	if b.Flags&bioset.FlagNoHole == 0 && off%rbdBlock == 0 && n%rbdBlock == 0 {
		for n > 0 {
			step := min(n, rbdWriteSameMax)
			if _, err := r.img.WriteSame(off, step, rbdZeroBlock, 0); err != nil {
				return err
			}
			off, n = off+step, n-step
		}
		return nil
	}
	for n > 0 {
		step := min(n, uint64(len(zeroes)))
		if _, err := r.img.WriteAt(zeroes[:step], int64(off)); err != nil {
			return err
		}
		off, n = off+step, n-step
	}
	return nil
}

// rbdExtentsFull stops a diff iteration once the bio's extent slots are
// full: the answer then covers a prefix of the range, as the protocol
// allows.
const rbdExtentsFull = -int(syscall.ECANCELED)

// blockStatus answers BLOCK_STATUS from the objects that exist:
// rbd_diff_iterate2 from the image's creation, whole objects (from the
// object map when the image has one, so no OSD is asked), the parent's
// included for a clone. What it does not report reads as zeroes.
func (r *rbdTarget) blockStatus(b *bioset.Bio) error {
	f := newExtentFill(b)
	end := b.Offset + b.Length
	full := false
	err := r.img.DiffIterate(rbd.DiffIterateConfig{
		SnapName: rbd.NoSnapshot, Offset: b.Offset, Length: b.Length,
		IncludeParent: rbd.IncludeParent, WholeObject: rbd.EnableWholeObject,
		Callback: func(off, n uint64, exists int, _ any) int {
			// Whole objects may reach past the range; and only what
			// follows the answer so far can be added to it.
			from, to := max(off, f.pos), min(off+n, end)
			if to <= from {
				return 0
			}
			var flags bioset.ExtentFlags
			if exists == 0 {
				flags = holeZero
			}
			if !f.add(from-f.pos, holeZero) || !f.add(to-from, flags) {
				full = true
				return rbdExtentsFull
			}
			return 0
		},
	})
	switch {
	case full:
		return nil
	case err != nil:
		return err
	}
	f.add(end-f.pos, holeZero)
	return nil
}
