package targets

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/stackd/stackd/bioset"
)

// FileOptions configure a File target.
type FileOptions struct {
	// ReadOnly opens the file read-only; WRITE, TRIM and WRITE_ZEROES then
	// fail with EPERM. A missing file is not created: a read-only export of
	// a file that does not exist is a configuration mistake.
	ReadOnly bool
	// Workers is the number of goroutines doing I/O (0: DefaultWorkers).
	// They bound how many syscalls the target has outstanding at once.
	Workers int
}

// File is a target backed by a regular file or a block device. Syscalls
// may wait on the disk, and the submitter, which may hold other layers'
// bios, must not: so a fixed pool of workers performs the bios, except a
// READ or WRITE that is sure not to wait (see inline), which Submit does
// at once. Handing a bio to a worker and back costs two goroutine
// switches, as much as the I/O itself when the data is in the page cache.
type File struct {
	path     string
	fd       int
	size     uint64
	readOnly bool
	w        *workers
	errorCounter
	closing  sync.Once
	closeErr error

	// inRAM: the file is on tmpfs or ramfs. Its reads and writes copy
	// memory and never wait on a disk, like the memory target's, so they
	// run inline without asking the kernel.
	inRAM bool
	// inlined counts the bios Submit performed itself, for tests.
	inlined atomic.Uint64

	// Learned at the first failure, so that a filesystem without a mode
	// costs one failed syscall, not one per bio.
	noPunch       atomic.Bool
	noZeroRange   atomic.Bool
	noNowaitRead  atomic.Bool
	noNowaitWrite atomic.Bool
}

// OpenFile opens path as a target of size bytes.
//
// A missing path is created as a sparse file of size bytes (size must then
// not be 0), synced with its directory before OpenFile returns. An
// existing regular file must be at least size bytes — serving a file
// smaller than configured would make the tail of the device silently fail
// or read zeroes — and size 0 means its current size. A block device
// serves its whole size unless size is smaller.
func OpenFile(path string, size uint64, o FileOptions) (*File, error) {
	flags := unix.O_RDWR | unix.O_CLOEXEC
	if o.ReadOnly {
		flags = unix.O_RDONLY | unix.O_CLOEXEC
	}
	fd, err := openOrCreate(path, flags, size, o.ReadOnly)
	if err != nil {
		return nil, err
	}
	have, err := deviceSize(fd, path)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	switch {
	case size == 0:
		size = have
	case have < size:
		unix.Close(fd)
		return nil, fmt.Errorf("targets: %s is %d bytes, smaller than the configured size %d", path, have, size)
	}
	f := &File{path: path, fd: fd, size: size, readOnly: o.ReadOnly}
	var fs unix.Statfs_t
	if unix.Fstatfs(fd, &fs) == nil && (fs.Type == unix.TMPFS_MAGIC || fs.Type == unix.RAMFS_MAGIC) {
		f.inRAM = true
	}
	f.w = newWorkers(o.Workers, f.perform)
	return f, nil
}

// openOrCreate opens path, creating it as a sparse file of size bytes if it
// does not exist. O_EXCL settles a race with another creator: whoever loses
// opens the winner's file instead.
func openOrCreate(path string, flags int, size uint64, readOnly bool) (int, error) {
	for {
		fd, err := unix.Open(path, flags, 0)
		if err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return -1, fmt.Errorf("targets: open %s: %w", path, err)
		}
		if readOnly {
			return -1, fmt.Errorf("targets: %s does not exist and the target is read-only", path)
		}
		if size == 0 {
			return -1, fmt.Errorf("targets: %s does not exist and no size is configured to create it with", path)
		}
		// 0600: a disk image holds whatever its users stored in it.
		fd, err = unix.Open(path, flags|unix.O_CREAT|unix.O_EXCL, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("targets: create %s: %w", path, err)
		}
		if size > 1<<63-1 {
			unix.Close(fd)
			unix.Unlink(path)
			return -1, fmt.Errorf("targets: create %s: size %d is too large", path, size)
		}
		if err := unix.Ftruncate(fd, int64(size)); err != nil {
			unix.Close(fd)
			unix.Unlink(path)
			return -1, fmt.Errorf("targets: create %s with %d bytes: %w", path, size, err)
		}
		if err := syncCreated(fd, path); err != nil {
			unix.Close(fd)
			unix.Unlink(path)
			return -1, fmt.Errorf("targets: create %s: %w", path, err)
		}
		return fd, nil
	}
}

// syncCreated makes a file just created and sized survive a crash: its
// inode (the size) with fsync, then its directory, because the new entry
// is durable only once the directory is synced. Without it, a crash right
// after start could lose the file, or leave it empty, under clients that
// were told their FLUSHes were done.
func syncCreated(fd int, path string) error {
	if err := retry(func() error { return unix.Fsync(fd) }); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	dir := filepath.Dir(path)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open its directory to sync it: %w", err)
	}
	defer unix.Close(dfd)
	err = retry(func() error { return unix.Fsync(dfd) })
	// EINVAL: the filesystem cannot sync a directory (some FUSE and
	// network filesystems); there is nothing stronger to ask of it, and
	// refusing to start would make it unusable.
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// deviceSize returns the size of the regular file or block device open as
// fd. Anything else (a directory, a pipe) cannot serve as a disk.
func deviceSize(fd int, path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("targets: stat %s: %w", path, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return uint64(st.Size), nil
	case unix.S_IFBLK:
		n, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
		if err != nil {
			return 0, fmt.Errorf("targets: size of block device %s: %w", path, err)
		}
		return n, nil
	default:
		return 0, fmt.Errorf("targets: %s is neither a regular file nor a block device", path)
	}
}

// Path returns the path the target was opened with.
func (f *File) Path() string { return f.path }

// ReadOnly reports whether the target rejects writes, so that the export
// above it can advertise itself read-only.
func (f *File) ReadOnly() bool { return f.readOnly }

// Size returns the device size in bytes.
func (f *File) Size() uint64 { return f.size }

// Caps reports what the target can do. FAST_ZERO is always offered because
// honouring it only means failing quickly with ENOTSUP when the filesystem
// cannot zero in place, which the target can always do. A read-only target
// offers nothing that writes.
func (f *File) Caps() bioset.Caps {
	if f.readOnly {
		return bioset.CapFlush | bioset.CapBlockStatus | bioset.CapCache
	}
	return bioset.CapsAll
}

// Close waits for the workers to finish what is queued and closes the file.
func (f *File) Close() error {
	f.closing.Do(func() {
		f.w.close()
		f.closeErr = unix.Close(f.fd)
	})
	return f.closeErr
}

// Submit performs b at once if that cannot wait on the disk, and queues
// it for the workers otherwise; it never blocks on I/O.
func (f *File) Submit(_ *bioset.Submitter, b *bioset.Bio) {
	if f.inline(b) {
		return
	}
	f.w.push(b)
}

// fileInlineMax is the longest bio File.inline performs. Handing a bio to
// a worker costs a few microseconds, copying 16 KiB about one. Longer
// copies are better left to the workers, where they run on another CPU
// while the submitter goes on to the next request: inline, 64 KiB random
// reads ran at about 0.9x, and 1 MiB sequential ones at 0.7-0.95x, of the
// workers' throughput (fio over a unix socket, tmpfs, 2 CPUs).
const fileInlineMax = 16 << 10

// inline tries a short READ, or WRITE without FUA, on the submitting goroutine,
// and reports whether it did (b has then ended). Off tmpfs it asks the
// kernel for RWF_NOWAIT: the call fails with EAGAIN rather than wait for
// the disk (pages not cached, dirty-page throttling), and the bio goes to
// the workers. A filesystem that cannot do RWF_NOWAIT at all (EOPNOTSUPP:
// buffered writes on many) is remembered and not asked again.
//
// Anything short of the whole bio done goes to the workers, which redo it
// from the start: a short or failed read changed nothing, and a short write
// is rewritten with the same bytes. They also report the errors, EOF and
// EINTR the way they always do.
func (f *File) inline(b *bioset.Bio) bool {
	var no *atomic.Bool
	switch b.Op {
	case bioset.OpRead:
		no = &f.noNowaitRead
	case bioset.OpWrite:
		if f.readOnly || b.Flags&bioset.FlagFUA != 0 {
			return false // EPERM, and fdatasync, are the workers' to do
		}
		no = &f.noNowaitWrite
	default:
		return false
	}
	if b.Length == 0 || b.Length > fileInlineMax || Check(b, f.size) != 0 {
		return false
	}
	flags := 0
	if !f.inRAM {
		if no.Load() {
			return false
		}
		flags = unix.RWF_NOWAIT
	}
	var n int
	var err error
	iov := [][]byte{b.Buf}
	if b.Op == bioset.OpRead {
		n, err = unix.Preadv2(f.fd, iov, int64(b.Offset), flags)
	} else {
		n, err = unix.Pwritev2(f.fd, iov, int64(b.Offset), flags)
	}
	if err == unix.EOPNOTSUPP && flags != 0 {
		no.Store(true)
	}
	if err != nil || n != len(b.Buf) {
		return false
	}
	f.inlined.Add(1)
	f.end(b, nil)
	return true
}

func (f *File) perform(b *bioset.Bio) {
	if f.admit(b, f.size) {
		f.end(b, f.do(b))
	}
}

func (f *File) do(b *bioset.Bio) error {
	off := int64(b.Offset)
	switch b.Op {
	case bioset.OpRead:
		return f.read(b.Buf, off)
	case bioset.OpFlush:
		return retry(func() error { return unix.Fdatasync(f.fd) })
	case bioset.OpCache:
		// A hint only: a failure changes nothing the client can see. An
		// empty range is skipped because fadvise reads it as "to EOF".
		if b.Length > 0 {
			_ = unix.Fadvise(f.fd, off, int64(b.Length), unix.FADV_WILLNEED)
		}
		return nil
	case bioset.OpBlockStatus:
		f.blockStatus(b)
		return nil
	}
	if f.readOnly {
		return syscall.EPERM
	}
	var err error
	switch {
	case b.Length == 0:
		// Nothing to write, and fallocate rejects an empty range.
	case b.Op == bioset.OpWrite:
		err = f.write(b.Buf, off)
	case b.Op == bioset.OpTrim:
		err = f.trim(off, int64(b.Length))
	case b.Op == bioset.OpWriteZeroes:
		err = f.writeZeroes(off, int64(b.Length), b.Flags)
	}
	if err == nil && b.Flags&bioset.FlagFUA != 0 {
		err = retry(func() error { return unix.Fdatasync(f.fd) })
	}
	return err
}

// read fills buf from off. A read past the end of the file — possible if
// someone truncated it behind our back — reads zeroes, like a hole.
func (f *File) read(buf []byte, off int64) error {
	rest, err := f.transfer(unix.Pread, buf, off)
	if err == nil {
		clear(rest)
	}
	return err
}

func (f *File) write(buf []byte, off int64) error {
	rest, err := f.transfer(unix.Pwrite, buf, off)
	if err == nil && len(rest) > 0 {
		return syscall.EIO // no progress and no reason: do not spin
	}
	return err
}

// transfer calls pio (pread or pwrite) until buf is done, again after
// EINTR; it stops at an error, or where pio makes no progress, and returns
// what of buf is left, for the caller to say what that means.
func (f *File) transfer(pio func(fd int, p []byte, off int64) (int, error), buf []byte, off int64) (rest []byte, err error) {
	for len(buf) > 0 {
		n, err := pio(f.fd, buf, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return buf, err
		}
		buf, off = buf[n:], off+int64(n)
	}
	return nil, nil
}

// trim punches a hole. TRIM is advisory, so a filesystem that cannot punch
// holes makes it a successful no-op rather than an error.
func (f *File) trim(off, length int64) error {
	if f.noPunch.Load() {
		return nil
	}
	err := f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if unsupported(err) {
		learn(&f.noPunch, err)
		return nil
	}
	return err
}

// writeZeroes makes the range read as zeroes by the cheapest means allowed:
// a punched hole unless NO_HOLE, else an in-place ZERO_RANGE, else writing
// zeroes — which FAST_ZERO forbids, since the client asked to be told
// instead so that it can choose a faster way itself.
func (f *File) writeZeroes(off, length int64, flags bioset.Flags) error {
	if flags&bioset.FlagNoHole == 0 && !f.noPunch.Load() {
		err := f.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if !unsupported(err) {
			return err
		}
		learn(&f.noPunch, err)
	}
	if !f.noZeroRange.Load() {
		err := f.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if !unsupported(err) {
			return err
		}
		learn(&f.noZeroRange, err)
	}
	if flags&bioset.FlagFastZero != 0 {
		return syscall.ENOTSUP
	}
	for length > 0 {
		n := min(length, int64(len(zeroes)))
		if err := f.write(zeroes[:n], off); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

func (f *File) fallocate(mode uint32, off, length int64) error {
	return retry(func() error { return unix.Fallocate(f.fd, mode, off, length) })
}

// unsupported reports whether a fallocate error means this call cannot be
// done in place, as opposed to the I/O failing, so that the caller should
// fall back. EINVAL counts: the range is already checked, so it means a mode
// or an alignment the file cannot do.
func unsupported(err error) bool {
	return err == unix.EOPNOTSUPP || err == unix.ENOSYS || err == unix.ENODEV || err == unix.EINVAL
}

// learn remembers that a fallocate mode is missing altogether. EINVAL is
// not remembered: a block device returns it for a range that is not
// sector-aligned, and the next, aligned, request deserves the fast path.
func learn(missing *atomic.Bool, err error) {
	if err != unix.EINVAL {
		missing.Store(true)
	}
}

// blockStatus reports data and holes as SEEK_DATA and SEEK_HOLE see them.
// lseek moves the shared file position, which is harmless: all other I/O
// uses pread and pwrite, which ignore it.
//
// When the filesystem cannot answer, the rest is reported as data, which
// is never wrong: a client may only skip what is reported as zero.
func (f *File) blockStatus(b *bioset.Bio) {
	fill := newExtentFill(b)
	pos, end := int64(b.Offset), int64(b.Offset+b.Length)
	for pos < end {
		data, err := seek(f.fd, pos, unix.SEEK_DATA)
		switch {
		case err == unix.ENXIO: // no data from pos to the end of the file
			fill.add(uint64(end-pos), holeZero)
			return
		case err != nil:
			fill.add(uint64(end-pos), 0)
			return
		case data > pos:
			n := min(data, end) - pos
			if !fill.add(uint64(n), holeZero) {
				return
			}
			pos += n
			continue
		}
		hole, err := seek(f.fd, pos, unix.SEEK_HOLE)
		if err != nil || hole <= pos {
			// Every file has a hole at its end, so this is the
			// filesystem failing: call the rest data.
			hole = end
		}
		n := min(hole, end) - pos
		if !fill.add(uint64(n), 0) {
			return
		}
		pos += n
	}
}

func seek(fd int, off int64, whence int) (int64, error) {
	for {
		n, err := unix.Seek(fd, off, whence)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// retry repeats a syscall interrupted by a signal: Go installs handlers
// with SA_RESTART, but not every call restarts.
func retry(call func() error) error {
	for {
		if err := call(); err != unix.EINTR {
			return err
		}
	}
}
