package nbd

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Raw socket calls. In transmission over a plain socket every read and
// write the server makes is a non-blocking call on a socket the runtime's
// poller watches (RawConn.Read and Write wait for it), and they are made
// with unix.RawSyscall, not unix.Syscall: without telling the scheduler.
//
// Telling it is for calls that may block: Syscall's entersyscall lets
// sysmon hand the P to another thread if the call takes long, and so it
// wakes sysmon whenever sysmon sleeps because every P was idle. A reader
// that drains its socket and parks goes idle that way many times a
// second, and each busy spell then began with a futex wake of sysmon,
// which polled every 20 µs until the process was idle again: 8% of the
// server's CPU samples at 4 KiB randwrite qd32 on the null target, in
// context switches on the two cores it shares with the client (bench/
// README.md, "Raw socket calls"). A non-blocking call on a socket waits
// for nothing but memory (the payload buffers and lent chunks it reads
// and writes are anonymous memory, never a file's pages), like a copy in
// Go code, so holding the P through it is what a memmove of the same
// bytes would do.
//
// sysmon's polling did one thing for a client at queue depth 1: it kept a
// CPU out of idle while the client turned around. On a VM whose guest
// does not poll before it halts (guest_halt_poll_ns 0, as on the bench
// machine), every idle CPU the next request must wake costs an exit to
// the host, and 4 KiB requests at depth 1 lost 12-17% of their rate
// without it. Waking a thread to keep a CPU busy is the idle loop's job,
// not the server's: with the guest's halt polling on, raw calls are ahead
// at depth 1 too.
//
// What holding the P costs is that a stop-the-world waits for the call to
// return. maxRawCopy bounds that: no raw call is handed more than this
// many bytes, a few hundred microseconds of copy here.
const maxRawCopy = 2 << 20

// rawIovecs points iov at the leading bytes of bufs for one raw readv or
// writev: at most maxRawCopy bytes in at most len(iov) vectors, empty
// slices skipped. It returns how many vectors it set.
func rawIovecs(iov []unix.Iovec, bufs [][]byte) int {
	n, room := 0, maxRawCopy
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

// connReader is what the reader's bufio.Reader reads from: the connection
// (c.nc) during the handshake and over TLS, and in transmission over a
// plain socket the socket itself, by raw read(2) calls (above). The
// bufio.Reader keeps its buffered bytes when the source changes, since a
// client may send its first requests right behind its last option.
type connReader struct {
	nc  net.Conn
	raw syscall.RawConn // set at transmission over a plain socket

	// One read's arguments and results, for readFd, which is readOnce
	// bound once so that RawConn.Read allocates nothing.
	p      []byte
	n      int
	err    error
	readFd func(fd uintptr) bool
}

func (r *connReader) Read(p []byte) (int, error) {
	if r.raw == nil || len(p) == 0 {
		return r.nc.Read(p)
	}
	if r.readFd == nil {
		r.readFd = r.readOnce
	}
	r.p, r.n, r.err = p, 0, nil
	err := r.raw.Read(r.readFd)
	r.p = nil
	if err != nil {
		return 0, err
	}
	return r.n, r.err
}

// readOnce is one read(2) into r.p (the reader's buffer, far under
// maxRawCopy). It reports false, to wait in the poller, on EAGAIN.
func (r *connReader) readOnce(fd uintptr) bool {
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
