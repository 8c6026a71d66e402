// Package rawsock makes the socket calls of an NBD connection that is
// transmitting over a plain socket (unix or TCP, not TLS): non-blocking
// read(2), readv(2) and writev(2) on a socket the runtime's poller
// watches, made with unix.RawSyscall, not unix.Syscall, that is without
// telling the scheduler. The server's reader and writer (package nbd) and
// the client's reader and sender (package nbd/client) make theirs here.
// The poller still does all the waiting: every call runs under
// RawConn.Read or RawConn.Write, which park the goroutine on EAGAIN and
// keep the socket's deadlines. The design, the bound and what it gives up
// are in docs/DESIGN.md, "Raw socket calls".
//
// Telling the scheduler is for calls that may block: Syscall's
// entersyscall lets sysmon hand the P to another thread if the call takes
// long, and so it wakes sysmon whenever sysmon sleeps because every P was
// idle. A goroutine that drains its socket and parks makes its process
// idle that way thousands of times a second, and each busy spell then
// began with a futex wake of sysmon, which polled every 20 µs until the
// process was idle again: 8% of the server's CPU samples at 4 KiB
// randwrite qd32 on the null target, in context switches on the two cores
// it shares with the client (bench/README.md, "Raw socket calls").
//
// A non-blocking call on a socket waits for nothing but memory, like a
// copy in Go code, so holding the P through it is what a memmove of the
// same bytes would do. That holds only for memory that cannot wait on a
// device: the callers read into and write from their own buffers, pooled
// payload buffers and memory-target chunks, all anonymous memory, never a
// file's pages.
//
// sysmon's polling did one thing for a peer at queue depth 1: it kept a
// CPU out of idle while the peer turned around. On a VM whose guest does
// not poll before it halts (guest_halt_poll_ns 0, as on the bench
// machine), every idle CPU the next request must wake costs an exit to
// the host, and 4 KiB requests at depth 1 lost 12-17% of their rate
// without it. Keeping a CPU busy is the idle loop's job, not the
// server's: with the guest's halt polling on, raw calls are ahead at
// depth 1 too.
package rawsock

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxCopy bounds what one raw call is handed. A goroutine in a raw call
// cannot be stopped, so a stop-the-world waits for the call to return;
// 2 MiB is a few hundred microseconds of copy here. A TCP socket can hold
// more than that, and the rest is the next call's.
const MaxCopy = 2 << 20

// MaxIovecs is the kernel's UIO_MAXIOV: one readv or writev takes at most
// this many vectors.
const MaxIovecs = 1024

// Iovecs points iov at the leading bytes of bufs for one raw readv or
// writev: at most MaxCopy bytes in at most len(iov) vectors, empty slices
// skipped. It returns how many vectors it set; the caller clears them
// after the call, so that iov keeps no pointer into buffers it no longer
// owns.
func Iovecs(iov []unix.Iovec, bufs [][]byte) int {
	n, room := 0, MaxCopy
	for _, p := range bufs {
		if n == len(iov) || room == 0 {
			break
		}
		if len(p) == 0 {
			continue
		}
		iov[n].Base = &p[0]
		iov[n].SetLen(min(len(p), room))
		room -= min(len(p), room)
		n++
	}
	return n
}

// Consume drops the first n bytes of bufs, as a readv or writev that
// moved n bytes leaves them: whole slices, cleared so that the array keeps
// no pointer to them, then the front of the next. It returns what is left.
func Consume(bufs [][]byte, n int) [][]byte {
	for n > 0 {
		if n < len(bufs[0]) {
			bufs[0] = bufs[0][n:]
			break
		}
		n -= len(bufs[0])
		bufs[0] = nil
		bufs = bufs[1:]
	}
	return bufs
}

// Readv is one raw readv(2) of fd into iov, as Iovecs set it. The kernel
// writing the buffers is not told to the race detector, as a DMA would
// not be.
func Readv(fd uintptr, iov []unix.Iovec) (int, syscall.Errno) {
	return vectored(unix.SYS_READV, fd, iov)
}

// Writev is one raw writev(2) of iov, as Iovecs set it, to fd.
func Writev(fd uintptr, iov []unix.Iovec) (int, syscall.Errno) {
	return vectored(unix.SYS_WRITEV, fd, iov)
}

// vectored makes the raw readv or writev (trap), again if a signal
// interrupted it.
func vectored(trap, fd uintptr, iov []unix.Iovec) (int, syscall.Errno) {
	for {
		n, _, e := unix.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), 0
	}
}

// Reader is what a connection's bufio.Reader reads from: NC while Raw is
// nil (a handshake, TLS), and once Raw is set the socket itself, by raw
// read(2) calls. The bufio.Reader keeps its buffered bytes when the source
// changes, since a peer may send its first requests, or replies, right
// behind the last bytes of the handshake.
type Reader struct {
	NC  net.Conn
	Raw syscall.RawConn

	// One read's arguments and results, for readFd, which is readOnce
	// bound once so that RawConn.Read allocates nothing.
	p      []byte
	n      int
	err    error
	readFd func(fd uintptr) bool
}

func (r *Reader) Read(p []byte) (int, error) {
	if r.Raw == nil || len(p) == 0 {
		return r.NC.Read(p)
	}
	if r.readFd == nil {
		r.readFd = r.readOnce
	}
	// bufio hands a large read (a READ reply's payload) straight through.
	r.p, r.n, r.err = p[:min(len(p), MaxCopy)], 0, nil
	err := r.Raw.Read(r.readFd)
	r.p = nil
	if err != nil {
		return 0, err
	}
	return r.n, r.err
}

// readOnce is one read(2) into r.p. It reports false, to wait in the
// poller, on EAGAIN.
func (r *Reader) readOnce(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&r.p[0])), uintptr(len(r.p)))
		switch {
		case e == syscall.EINTR:
			continue
		case e == syscall.EAGAIN:
			return false
		case e != 0:
			r.err = e
		case n == 0:
			r.err = io.EOF
		default:
			r.n = int(n)
		}
		return true
	}
}

// Sender writes whole batches of slices to a socket by raw writev calls,
// waiting in the poller (under the socket's write deadline) while the
// socket is full. It is for one writer at a time.
type Sender struct {
	raw     syscall.RawConn
	iov     []unix.Iovec
	bufs    [][]byte // what is left of the batch being sent
	err     error
	writeFd func(fd uintptr) bool
}

// NewSender returns a Sender of up to iovecs slices a call on raw.
func NewSender(raw syscall.RawConn, iovecs int) *Sender {
	s := &Sender{raw: raw, iov: make([]unix.Iovec, iovecs)}
	s.writeFd = s.writeOnce
	return s
}

// Send writes every byte of bufs, in order. It consumes bufs: the slices
// are resliced as they are sent, and cleared.
func (s *Sender) Send(bufs [][]byte) error {
	s.bufs, s.err = bufs, nil
	err := s.raw.Write(s.writeFd)
	clear(bufs)
	s.bufs = nil
	if err != nil {
		return err
	}
	return s.err
}

// writeOnce sends what the socket takes now. It reports false, to wait in
// the poller, while bytes are left and the socket is full.
func (s *Sender) writeOnce(fd uintptr) bool {
	for len(s.bufs) > 0 {
		n := Iovecs(s.iov, s.bufs)
		if n == 0 {
			s.bufs = nil
			break
		}
		w, e := Writev(fd, s.iov[:n])
		clear(s.iov[:n])
		switch {
		case e == syscall.EAGAIN:
			return false
		case e != 0:
			s.err = e
			return true
		case w == 0:
			return false
		}
		s.bufs = Consume(s.bufs, w)
	}
	return true
}
