package nbd

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/intrusive"
	"github.com/stackd/stackd/internal/rawsock"
	"github.com/stackd/stackd/nbd/wire"
)

// Replies leave a connection in batches. A batch is an iovec list: reply
// headers and small bodies are encoded into the batch's arena, and a READ
// reply's payload is sent from the request's own buffer, or from the memory
// the device lent in its place (bioset.Lend), so the payload is copied
// once, by the kernel, and never through a user-space write buffer. One
// writev then sends every reply that was ready.
//
// Two goroutines send batches, never at once (transmission.sendMu):
//
//   - The reader, when it is about to block (see conn.idle), sends what
//     completed while it worked, with one non-blocking writev. With a
//     device that completes inside Submit (memory), the reader thus reads a
//     request, runs it and answers it without waking another goroutine.
//   - The writer goroutine sends what completes while the reader is blocked
//     (file workers, delayed legs, slow stacks), and whatever the reader
//     could not send without blocking.
//
// The reader never blocks on the socket's send side: a client that is slow
// to read replies must not stop the reader from taking its requests (the
// client may be blocked writing them), so whatever a non-blocking writev
// leaves unsent goes to the writer.

const (
	// replyArenaSize holds the headers of a few hundred replies, more than
	// MaxInFlight's worth of plain ones.
	replyArenaSize = 32 << 10
	// maxReplyMessage clips the message of a structured error reply. The
	// server's messages are short constants; the clip keeps the arena
	// arithmetic below true whatever an errno's text is.
	maxReplyMessage = 512
	// maxReplyIovecs is the most iovecs one reply takes: its header, and a
	// READ payload of lent pieces with a piece of the buffer around each.
	maxReplyIovecs = 1 + 2*maxLoans + 1
)

const msgNoExtents = "device reported no extents"

// Lengths of the structured replies this server sends: each is one chunk,
// its header followed by the chunk's fixed data.
const (
	errorReplyLen      = wire.ChunkHeaderLen + wire.ErrorChunkLen // then the message
	offsetDataReplyLen = wire.ChunkHeaderLen + 8                  // the offset; then the data
	blockStatusLen     = wire.ChunkHeaderLen + 4                  // the context id; then 8 bytes an extent
)

// replyBatch is the replies being sent and the requests they answer. Its
// requests are released only once every byte of the batch is on the wire
// (or the connection failed), because the iovecs point into their buffers.
type replyBatch struct {
	reqs    []*request
	iov     [][]byte // unsent bytes; its first slice may be partly sent
	iovBuf  [][]byte // iov's backing array, kept across batches
	arena   []byte   // headers and small bodies; cap never changes, so iov may point into it
	open    bool     // iov's last slice ends at len(arena) and may grow
	sysIov  []unix.Iovec
	pending bool // a non-blocking send left bytes for the writer

	// onSocket and trySocket are writeFd and tryFd bound once, so that
	// handing them to the RawConn allocates nothing; err is their result.
	onSocket  func(fd uintptr) bool
	trySocket func(fd uintptr)
	err       error
}

// writeFd is what the writer's RawConn.Write runs on the socket:
// RawConn.Write waits for the socket to drain, under the write deadline,
// and calls again while this reports false.
func (b *replyBatch) writeFd(fd uintptr) bool {
	b.err = b.writevOnce(fd)
	return b.err != syscall.EAGAIN
}

// tryFd is what the reader's RawConn.Control runs on the socket: one
// non-blocking attempt, which leaves b.err EAGAIN if the socket is full.
func (b *replyBatch) tryFd(fd uintptr) {
	b.err = b.writevOnce(fd)
}

func newReplyBatch(maxReplies int) replyBatch {
	return replyBatch{
		reqs: make([]*request, 0, maxReplies),
		// Room for a header and a payload per reply, and for the one
		// reply of the most pieces: any reply fits an empty batch.
		iovBuf: make([][]byte, 0, 2*maxReplies+maxReplyIovecs),
		arena:  make([]byte, 0, replyArenaSize),
		sysIov: make([]unix.Iovec, rawsock.MaxIovecs),
	}
}

// metaLen is an upper bound on the bytes r's reply needs in the arena.
func metaLen(r *request) int {
	switch {
	case r.errno != 0:
		return errorReplyLen + maxReplyMessage
	case r.cmd == wire.CmdBlockStatus:
		// Extents, or the error an empty answer turns into.
		return max(blockStatusLen+8*r.nslots, errorReplyLen+len(msgNoExtents))
	}
	return offsetDataReplyLen // the longest header without a message
}

// iovecsLen is an upper bound on the iovecs r's reply adds to the batch.
func iovecsLen(r *request) int {
	if r.loans != nil {
		return 1 + 2*r.loans.Cap() + 1
	}
	return 2
}

// fits reports whether r's reply can join the batch. The iovec bound keeps
// iov within iovBuf, so that a batch never allocates.
func (b *replyBatch) fits(r *request) bool {
	return len(b.reqs) < cap(b.reqs) && cap(b.arena)-len(b.arena) >= metaLen(r) &&
		cap(b.iovBuf)-len(b.iov) >= iovecsLen(r)
}

// reserve returns n bytes at the end of the arena, to be filled, and adds
// them to the iovecs.
func (b *replyBatch) reserve(n int) []byte {
	start := len(b.arena)
	b.arena = b.arena[:start+n]
	if b.open {
		last := &b.iov[len(b.iov)-1]
		*last = (*last)[:len(*last)+n]
	} else {
		b.iov = append(b.iov, b.arena[start:start+n])
		b.open = true
	}
	return b.arena[start : start+n]
}

// payload adds p to the iovecs, sent in place.
func (b *replyBatch) payload(p []byte) {
	b.iov = append(b.iov, p)
	b.open = false
}

// readPayload adds the data of READ r: the pieces its device lent, in
// place, and between them the parts of r.buf the device filled.
func (b *replyBatch) readPayload(r *request) {
	pos := uint64(0)
	if r.loans != nil {
		for _, l := range r.loans.Sorted() {
			if l.Pos > pos {
				b.payload(r.buf[pos:l.Pos])
			}
			b.payload(l.Data)
			pos = l.Pos + uint64(len(l.Data))
		}
	}
	if pos < uint64(len(r.buf)) {
		b.payload(r.buf[pos:])
	}
}

// consume drops the first n sent bytes from the iovecs. Nothing joins a
// batch once sending has begun (the sender finishes it, or leaves it
// pending for the writer, and then resets it), so no slice needs to stay
// open for growth.
func (b *replyBatch) consume(n int) {
	b.open = false
	b.iov = rawsock.Consume(b.iov, n)
}

func (b *replyBatch) reset() {
	clear(b.reqs)
	b.reqs = b.reqs[:0]
	// Sent slices were dropped as they left (consume); what is left is
	// what a failed connection never sent.
	clear(b.iov)
	b.iov = b.iovBuf[:0]
	b.arena = b.arena[:0]
	b.open = false
	b.pending = false
}

// writevOnce writes as much of b.iov as the socket takes now, by raw
// writev(2) calls of at most rawsock.MaxCopy bytes each (internal/rawsock).
// It returns syscall.EAGAIN when the socket is full.
func (b *replyBatch) writevOnce(fd uintptr) error {
	for len(b.iov) > 0 {
		n := rawsock.Iovecs(b.sysIov, b.iov)
		if n == 0 {
			b.iov = b.iov[:0]
			break
		}
		w, e := rawsock.Writev(fd, b.sysIov[:n])
		clear(b.sysIov[:n]) // keep no pointers into released buffers
		switch {
		case e != 0:
			return e
		case w == 0:
			return syscall.EAGAIN
		}
		b.consume(w)
	}
	return nil
}

// encodeReply adds r's reply to the batch; the caller checked fits(r).
func (c *conn) encodeReply(r *request) {
	t := c.tx
	b := &t.out
	b.reqs = append(b.reqs, r)
	var code uint32
	if r.errno != 0 {
		code = wire.EncodeErrno(r.errno)
	}
	if !c.structured {
		wire.PutSimpleReply(b.reserve(wire.SimpleReplyLen), wire.SimpleReply{Error: code, Cookie: r.cookie})
		if r.cmd == wire.CmdRead && code == 0 && r.length > 0 {
			t.bytesOut += uint64(r.length)
			b.readPayload(r)
		}
		return
	}

	var ext []bioset.Extent
	if code == 0 && r.cmd == wire.CmdBlockStatus {
		ext = compactExtents(r.window[:r.nslots], r.off, uint64(r.length))
		if len(ext) == 0 {
			// The spec: at least one extent on success.
			code, r.msg = wire.EIO, msgNoExtents
		}
	}
	switch {
	case code != 0:
		msg := r.msg
		if msg == "" {
			msg = r.errno.Error()
		}
		if len(msg) > maxReplyMessage {
			msg = msg[:maxReplyMessage]
		}
		h := b.reserve(errorReplyLen + len(msg))
		doneChunk(h, r.cookie, wire.ReplyTypeError, wire.ErrorChunkLen+len(msg))
		be.PutUint32(h[20:], code)
		be.PutUint16(h[24:], uint16(len(msg)))
		copy(h[errorReplyLen:], msg)

	case r.cmd == wire.CmdRead && r.length > 0:
		h := b.reserve(offsetDataReplyLen)
		doneChunk(h, r.cookie, wire.ReplyTypeOffsetData, 8+int(r.length))
		be.PutUint64(h[20:], r.off)
		t.bytesOut += uint64(r.length)
		b.readPayload(r)

	case r.cmd == wire.CmdBlockStatus:
		h := b.reserve(blockStatusLen + 8*len(ext))
		doneChunk(h, r.cookie, wire.ReplyTypeBlockStatus, 4+8*len(ext))
		be.PutUint32(h[20:], c.metaID)
		for i, e := range ext {
			// compactExtents clips to the request, whose length fits.
			be.PutUint32(h[24+8*i:], uint32(e.Length))
			be.PutUint32(h[28+8*i:], uint32(e.Flags))
		}

	case r.cmd == wire.CmdRead:
		// A READ of nothing: the spec allows no READ a simple reply.
		doneChunk(b.reserve(wire.ChunkHeaderLen), r.cookie, wire.ReplyTypeNone, 0)

	default:
		// A success without data (WRITE, FLUSH, TRIM, WRITE_ZEROES,
		// CACHE) gets a simple reply, which the spec allows once
		// structured replies are negotiated to any reply without data
		// but a READ's. It is what a client reads fastest: libnbd (fio's
		// nbd engine, nbdinfo, nbdcopy) reads every reply as a simple one
		// first and needs a second recv for a chunk header's last 4
		// bytes. nbdkit sends a simple reply here too. Errors stay
		// structured chunks, as the spec prefers, for their message.
		wire.PutSimpleReply(b.reserve(wire.SimpleReplyLen), wire.SimpleReply{Cookie: r.cookie})
	}
}

// doneChunk encodes, at the start of h, the header of a reply's one and
// final chunk, with length bytes of data after the header: every
// structured reply this server sends is one chunk.
func doneChunk(h []byte, cookie uint64, typ uint16, length int) {
	wire.PutChunk(h, wire.Chunk{Flags: wire.ReplyFlagDone, Type: typ, Cookie: cookie, Length: uint32(length)})
}

// sendBatch puts t.out on the wire and, once all of it is there, releases
// its requests. With block false (the reader, which has t.raw) it makes
// one non-blocking attempt and reports false if bytes are left, which then
// wait in t.out for the writer. After a write error nothing more is
// written: the requests are released unanswered, the socket is already
// closed. The caller holds t.sendMu.
func (c *conn) sendBatch(block bool) bool {
	t := c.tx
	b := &t.out
	if len(b.iov) > 0 && t.werr == nil {
		var err error
		switch {
		case t.raw != nil && !block:
			// The write deadline is the writer's (see armWriteDeadline):
			// the reader's attempt cannot block, so there is nothing for a
			// deadline to bound, and it must not trip over one the writer
			// set for a send long finished. RawConn.Control runs writev on
			// the socket without consulting the deadline (RawConn.Write
			// would fail at once on an expired one). Control does not take
			// the socket's write lock, which sendMu stands in for: the
			// reader and the writer never send at once.
			if err = t.raw.Control(b.trySocket); err == nil && b.err != syscall.EAGAIN {
				err = b.err
			}
		case t.raw != nil:
			c.armWriteDeadline()
			if err = t.raw.Write(b.onSocket); err == nil {
				err = b.err
			}
		case t.tlsw != nil:
			c.armWriteDeadline()
			// Only the writer sends without a RawConn (see idle), and it
			// blocks. Through the buffer, so that a batch of small replies
			// is one TLS record and one write, not one of each per header.
			for _, p := range b.iov {
				if _, err = t.tlsw.Write(p); err != nil {
					break
				}
			}
			if err == nil {
				err = t.tlsw.Flush()
			}
			clear(b.iov)
			b.iov = b.iov[:0]
		default:
			c.armWriteDeadline()
			// Only the writer sends without a RawConn (see idle), and it
			// blocks.
			bufs := net.Buffers(b.iov)
			_, err = bufs.WriteTo(c.nc)
			clear(b.iov)
			b.iov = b.iov[:0]
		}
		if err != nil {
			c.writeFailed(err)
		} else if len(b.iov) > 0 {
			b.pending = true
			return false
		}
	}
	for _, r := range b.reqs {
		c.complete(r)
	}
	b.reset()
	return true
}

// complete accounts for r's reply and releases it.
func (c *conn) complete(r *request) {
	if c.srv.obs != nil && !r.bad {
		n := uint64(r.length)
		if r.op == bioset.OpFlush {
			n = 0
		}
		c.srv.obs.RequestDone(c.exp.Name, r.op, n, r.errno, time.Since(r.start))
	}
	c.release(r)
}

// takeQueue takes every completed request awaiting its reply. With
// readerIdle it also records that the reader is about to block, so that
// completions from now on wake the writer.
func (c *conn) takeQueue(readerIdle bool) intrusive.List[request] {
	t := c.tx
	if readerIdle {
		t.readerActive.Store(false) // before taking the queue: see readerActive
	}
	t.mu.Lock()
	list := t.replies.Take()
	t.mu.Unlock()
	return list
}

// requeue puts list back at the head of the reply queue.
func (c *conn) requeue(list *intrusive.List[request]) {
	t := c.tx
	t.mu.Lock()
	t.replies.PushFrontList(list)
	t.mu.Unlock()
}

// sendList answers the requests in list, in batches. With block false it
// never waits on the socket and reports false if anything is left: bytes
// in t.out, or requests put back in the queue, for the writer. The caller
// holds t.sendMu.
func (c *conn) sendList(list intrusive.List[request], block bool) bool {
	t := c.tx
	for r := list.Front(); r != nil; r = list.Front() {
		if !t.out.fits(r) && !c.sendBatch(block) {
			c.requeue(&list)
			return false
		}
		list.PopFront()
		c.encodeReply(r)
	}
	return c.sendBatch(block)
}

// idle runs on the reader before anything that may block it: a socket
// read that the buffer cannot satisfy, or a wait for a top bio or for
// payload budget. It sends the replies that completed while the reader
// worked (enqueue did not wake the writer for them) and marks the reader
// inactive, so that completions during the wait wake the writer. Sending
// them first is also what keeps the waits safe: a reply the reader held
// back would hold back the bio or the budget it waits for.
func (c *conn) idle() {
	t := c.tx
	if t.raw != nil && t.sendMu.TryLock() {
		if !t.out.pending {
			sent := c.sendList(c.takeQueue(true), false)
			t.sendMu.Unlock()
			if !sent {
				c.wakeWriter()
			}
			return
		}
		t.sendMu.Unlock()
	}
	// The writer is sending, or owes the rest of a batch, or this socket
	// has no non-blocking send: the writer takes the queue.
	t.readerActive.Store(false)
	t.mu.Lock()
	wake := !t.replies.Empty()
	t.mu.Unlock()
	if wake {
		c.wakeWriter()
	}
}
