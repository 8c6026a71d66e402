package nbd

import (
	"io"
	"syscall"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/rawsock"
	"golang.org/x/sys/unix"
)

// Direct writes (docs/DESIGN.md, "Direct writes"): when the export's whole
// stack is memory reached through layers that only move ranges about
// (bioset.Direct), a WRITE's payload goes from the socket straight into
// the device instead of into a pooled buffer that the leaf then copies. The
// request takes no payload buffer and no budget, and no bio goes down the
// stack: the reader writes the payload in place, the request completes at
// once, and its reply is queued like any other.
//
// The bytes already in the reader's buffer (all of a small WRITE, usually)
// are copied from it under the device's locks; the rest is read by the
// kernel into the device's memory with no lock held, since the client may
// be slow to send it. A READ overlapping the write may then see part of
// it, and a TRIM overlapping it may win: NBD leaves overlapping requests
// in flight together unordered, as for lent READ memory. If the client
// disconnects mid-payload, part of an unacknowledged write has landed,
// which a block device may do to a write it never completed.

// socketFill reads from the socket, without the reader's buffer, into the
// memory a Direct device hands it. A device hands its memory over a chunk
// at a time (the memory target's are 64 KiB), so fill gathers the pieces
// and reads them with one readv per maxFillIovecs: a 1 MiB write is then
// a read of up to 1 MiB, as into one buffer, not sixteen of 64 KiB. It is
// bound once per connection, so that a direct write allocates nothing.
type socketFill struct {
	raw    syscall.RawConn
	pieces [][]byte     // gathered, not yet read; pieces[0] may be partly read
	iov    []unix.Iovec // readv's vector over pieces
	err    error
	// fill is gather bound, for bioset.Direct.WriteDirect; readFd is
	// readOnce bound, for RawConn.Read.
	fill   func([]byte) error
	readFd func(fd uintptr) bool
}

// maxFillIovecs is how many pieces one readv fills at most: 64 pieces of
// 64 KiB cover 4 MiB, more than a socket holds at once.
const maxFillIovecs = 64

func newSocketFill(raw syscall.RawConn) *socketFill {
	f := &socketFill{
		raw:    raw,
		pieces: make([][]byte, 0, maxFillIovecs),
		iov:    make([]unix.Iovec, maxFillIovecs),
	}
	f.fill = f.gather
	f.readFd = f.readOnce
	return f
}

// gather takes one piece of the device's memory to be read into, reading
// the pieces gathered so far once there are maxFillIovecs of them.
func (f *socketFill) gather(dst []byte) error {
	f.pieces = append(f.pieces, dst)
	if len(f.pieces) == cap(f.pieces) {
		return f.readAll()
	}
	return nil
}

// readAll reads every gathered piece full, waiting for the bytes in the
// runtime's poller (so read deadlines, and with them shutdown, still end
// the wait).
func (f *socketFill) readAll() error {
	defer func() {
		clear(f.pieces) // keep no pointer into the device
		f.pieces = f.pieces[:0]
	}()
	for len(f.pieces) > 0 {
		if err := f.raw.Read(f.readFd); err != nil {
			return err
		}
		if f.err != nil {
			return f.err
		}
	}
	return nil
}

// readOnce is one raw readv(2) (internal/rawsock) into the pieces, of at
// most rawsock.MaxCopy bytes. It reports false, to wait for the socket, on
// EAGAIN. The syscall is the kernel writing the device's memory, as a DMA
// would; unlike syscall.Read it does not tell the race detector, which
// would otherwise flag the overlapping READs that NBD (and the comment at
// the top of this file) allow.
func (f *socketFill) readOnce(fd uintptr) bool {
	nv := rawsock.Iovecs(f.iov, f.pieces)
	n, e := rawsock.Readv(fd, f.iov[:nv])
	clear(f.iov[:nv])
	switch {
	case e == syscall.EAGAIN:
		return false
	case e != 0:
		f.err = e
		return true
	case n == 0:
		f.err = io.ErrUnexpectedEOF
		return true
	}
	// Drop what was read, and move the rest back to the front: gather
	// appends up to the array's end.
	rest := copy(f.pieces, rawsock.Consume(f.pieces, n))
	clear(f.pieces[rest:])
	f.pieces = f.pieces[:rest]
	return true
}

// writeDirect serves valid WRITE r, whose header the reader has just
// decoded, by writing its payload straight into the device. It returns an
// error only when the payload could not be read, and the connection must
// end.
func (c *conn) writeDirect(r *request) error {
	t := c.tx
	length := int(r.length)
	head, _ := c.br.Peek(min(c.br.Buffered(), length))
	if len(head) < length {
		// The rest comes from the socket, and may wait: send the
		// replies held back first, as before any read that may block.
		c.idle()
	}
	t.f.err = nil
	err := t.direct.WriteDirect(r.off, uint64(r.length), head, t.f.fill)
	if err == nil {
		err = t.f.readAll() // what is still gathered
	}
	c.br.Discard(len(head))
	if err != nil {
		return err
	}
	if c.srv.obs != nil {
		c.srv.obs.RequestStarted(c.exp.Name, r.op)
	}
	t.bytesIn += uint64(r.length)
	r.counted = true
	t.submitted.Add(1)
	t.readerActive.Store(true) // the reader answers it, as for a Submit
	r.bio.End(nil)
	return nil
}

// directOf returns the export device's direct access for a connection, or
// nil where direct writes do not apply: without a RawConn (TLS) the
// payload comes through Go code, and a read-only export takes no writes.
func (c *conn) directOf(raw syscall.RawConn) bioset.Direct {
	if raw == nil || c.exp.ReadOnly {
		return nil
	}
	return bioset.DirectOf(c.exp.Device)
}
