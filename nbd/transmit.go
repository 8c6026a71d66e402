package nbd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/intrusive"
	"github.com/stackd/stackd/nbd/wire"
)

// request is one decoded request, from its header to its reply. A
// connection preallocates MaxInFlight of them, one per top bio.
type request struct {
	link intrusive.Link[request] // on the reply queue, guarded by transmission.mu
	bio  *bioset.Bio

	// The request as the client sent it. Layers remap the bio in place
	// (Dev, Offset, Buf, Extents), so once the bio is submitted the range
	// is read from here, never from the bio.
	cookie uint64
	off    uint64
	length uint32
	cmd    uint16
	flags  uint16
	op     bioset.Op
	start  time.Time // only with an Observer

	pbuf    *[]byte // payload buffer of READ and WRITE, from the size-class pools
	buf     []byte  // (*pbuf)[:length]
	charged int64   // payload budget held for pbuf

	window *[maxExtents]bioset.Extent // BLOCK_STATUS result slots
	nslots int
	loans  *bioset.Loans // memory a READ's leaves lent in place of buf (see bioset.Lend)

	errno syscall.Errno // the reply's error; 0: success
	msg   string        // message for a structured error reply
	bad   bool          // rejected by check: never reached the device
	// counted: in transmission.submitted, from just before submit until
	// release.
	counted bool
}

// transmission is a connection's state in the transmission phase.
type transmission struct {
	bs     *bioset.BioSet // top bios, one per request in flight
	sub    bioset.Submitter
	endIO  func(*bioset.Bio) // c.endIO, bound once so that setting it does not allocate
	reqs   []request
	waiter *budgetWaiter
	// share is this connection's part of the server's payload budget
	// (Options.ConnectionPayload): the reader takes a request's charge
	// from it before the server's budget, so one connection can hold at
	// most that much of the server's.
	share *budget
	hdr   wire.RequestHeader // reader's header buffer, decoded in place
	raw   syscall.RawConn    // the socket's non-blocking side; nil: use nc only
	// direct is the export device's direct access, when WRITEs go
	// straight into it (see direct.go); nil otherwise. f reads their
	// payloads.
	direct bioset.Direct
	f      *socketFill
	tlsw   *bufio.Writer // over TLS, the writer's buffer in front of nc; nil otherwise

	// sendMu is held by whoever puts replies on the wire: the reader (see
	// idle) or the writer. It guards the fields below.
	sendMu sync.Mutex
	out    replyBatch
	werr   error     // first write error
	armed  time.Time // when the write deadline was last set

	mu         sync.Mutex
	replies    intrusive.List[request] // completed requests awaiting their reply
	free       []*request              // requests not in flight
	inflight   int                     // requests allocated and not yet released
	readerDone bool                    // no more requests will be allocated
	wake       chan struct{}

	// readerActive is true from just before the reader submits a request
	// until it next may block. The reader then answers whatever completes
	// meanwhile (see idle), so enqueue need not wake the writer: for a
	// device that completes inside Submit, a request is read, run and
	// answered on the reader alone.
	//
	// It is an atomic outside mu so that setting it costs the reader no
	// lock per request. No completion is stranded: enqueue pushes under mu
	// and then loads the flag; the reader stores false and then takes the
	// queue under mu. If enqueue loaded true, its load came before that
	// store, so its push came before the reader's lock, and the reader
	// takes it.
	readerActive atomic.Bool

	// draining is set by beginClose in transmission: the server is
	// shutting down. The reader then submits nothing more; each request it
	// decodes from then on is answered with NBD_ESHUTDOWN (doc/proto.md:
	// a server that is shutting down may answer requests with it, and
	// should not submit new ones), until the requests submitted before are
	// answered, and then it stops reading.
	draining atomic.Bool
	// submitted counts the requests handed to the device whose reply is
	// not yet sent. The drain ends when it reaches zero: release
	// decrements and then loads draining; beginClose stores draining and
	// then loads submitted. Whichever comes second sees the other, so one
	// of them wakes the reader, or both do, which is harmless.
	submitted atomic.Int64

	requests uint64 // reader only
	bytesIn  uint64 // reader only
	bytesOut uint64 // under sendMu
	wakeups  uint64 // writer only: times it was woken to send
}

var (
	errFraming    = errors.New("framing violation")
	errDisconnect = errors.New("client sent NBD_CMD_DISC")
	errStopped    = errors.New("connection closing")
)

// extentWindows pools BLOCK_STATUS result windows (6 KiB each), which only
// block-status requests need.
var extentWindows = sync.Pool{New: func() any { return new([maxExtents]bioset.Extent) }}

// A READ's loan table (bioset.Loans) is taken from a pool per READ rather
// than kept per request, so that an idle connection holds none, and sized to
// the read. Tables are not charged to the payload budget; sized this way
// they add at most 3% to what it bounds: about 128 bytes to a READ of under
// 64 KiB, which is charged at least 4 KiB, and about 1.1 KiB to a longer
// one, charged at least 64 KiB.
const (
	// maxLoans is a long READ's table: a 1 MiB read over 64 KiB chunks
	// lends in 17 pieces at most. Longer reads, or reads over smaller
	// chunks, lend their first maxLoans pieces and have the rest copied.
	maxLoans = 32
	// smallLoans is a short READ's: one under 64 KiB spans at most two
	// chunks of 64 KiB (the memory target's default).
	smallLoans      = 2
	smallLoansBelow = 64 << 10
)

var loanTables = [2]sync.Pool{
	{New: func() any { return bioset.NewLoans(smallLoans) }},
	{New: func() any { return bioset.NewLoans(maxLoans) }},
}

// loanTablePool returns the pool of tables for READs of length bytes.
func loanTablePool(length uint32) *sync.Pool {
	if length < smallLoansBelow {
		return &loanTables[0]
	}
	return &loanTables[1]
}

// transmit serves requests until the client disconnects, the connection
// fails or the server shuts down, and returns once every request it
// accepted has completed and its buffers are released.
func (c *conn) transmit() {
	o := &c.srv.opts
	t := &transmission{
		// No rescuer (docs/DESIGN.md rule 5): a rescuer is needed when Alloc
		// may wait while bios queued on the caller's Submitter have not
		// reached their devices. Only the reader allocates from this pool,
		// and always between Submits: its Submitter is idle, nothing sits
		// on it. Every bio it waits for is in a device or waiting for its
		// reply to be sent by the writer (the reader sends the replies it
		// holds back before it waits; see idle), and both finish without
		// the reader.
		bs: bioset.New(bioset.Options{
			Name:      fmt.Sprintf("nbd/%s/conn%d", c.exp.Name, c.id),
			Capacity:  o.MaxInFlight,
			NoRescuer: true,
		}),
		reqs:   make([]request, o.MaxInFlight),
		free:   make([]*request, 0, o.MaxInFlight),
		waiter: newBudgetWaiter(),
		share:  newBudget(o.ConnectionPayload),
		wake:   make(chan struct{}, 1),
		out:    newReplyBatch(o.MaxInFlight),
	}
	if uc, ok := c.sock.(*net.UnixConn); ok {
		// Best effort: the kernel clips it to net.core.wmem_max.
		uc.SetWriteBuffer(unixSendBufSize)
	}
	if c.tlsUp {
		// Over TLS every byte is encrypted by Go code, so there is no
		// RawConn to send from (and so no lending, see submit): the
		// writer sends everything, through a buffer that gathers a
		// batch's small replies into full TLS records.
		t.tlsw = bufio.NewWriterSize(c.nc, tlsWriteBufSize)
		c.tlsSock.transmitting = true // before the writer starts
	} else if sc, ok := c.nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			t.raw = raw
			c.src.Raw = raw
		}
	}
	if t.direct = c.directOf(t.raw); t.direct != nil {
		t.f = newSocketFill(t.raw)
	}
	t.endIO = c.endIO
	t.out.onSocket = t.out.writeFd
	t.out.trySocket = t.out.tryFd
	for i := range t.reqs {
		t.free = append(t.free, &t.reqs[i])
	}
	c.mu.Lock()
	c.tx = t
	c.mu.Unlock()
	c.srv.log.Info("nbd: connection opened", "conn", c.id, "remote", c.remote, "export", c.exp.Name,
		"size", c.size, "flags", fmt.Sprintf("%#x", c.tflags), "structured", c.structured, "block_status", c.metaID != 0,
		"tls", c.tlsUp, "client_cert", c.peerName())

	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	err := c.readLoop()
	t.mu.Lock()
	t.readerDone = true
	t.mu.Unlock()
	t.readerActive.Store(false)
	c.wakeWriter()
	// The writer returns only once every request is released: the device
	// may still be filling or reading a buffer until its bio ends.
	<-writerDone
	t.bs.Close()

	reason := "eof"
	switch {
	case err == errDisconnect:
		reason = "disconnect"
	case c.srv.isShutdown():
		reason = "shutdown"
	case t.werr != nil:
		reason = "write failed: " + t.werr.Error()
	case errors.Is(err, io.EOF):
	case errors.Is(err, io.ErrUnexpectedEOF):
		reason = "eof mid-request"
	default:
		reason = err.Error()
	}
	c.srv.log.Info("nbd: connection closed", "conn", c.id, "remote", c.remote, "export", c.exp.Name,
		"reason", reason, "requests", t.requests, "bytes_in", t.bytesIn, "bytes_out", t.bytesOut, "writer_wakeups", t.wakeups,
		"duration", time.Since(c.start))
}

// readLoop decodes requests and submits each without waiting for earlier
// ones. It returns why it stopped; only a framing violation, the end of
// the stream, NBD_CMD_DISC or shutdown stop it. A bad request is answered
// with an error and the loop goes on.
func (c *conn) readLoop() error {
	t := c.tx
	for {
		if c.br.Buffered() < wire.RequestHeaderLen {
			c.idle()
		}
		if _, err := io.ReadFull(c.br, t.hdr[:]); err != nil {
			return err
		}
		h := &t.hdr
		if m := h.Magic(); m != wire.MagicRequest {
			return fmt.Errorf("%w: bad request magic %#x", errFraming, m)
		}
		cmd, length := h.Type(), h.Length()
		if cmd == wire.CmdDisc {
			// The spec: handle outstanding requests, then close. The
			// caller waits for them.
			return errDisconnect
		}
		if cmd == wire.CmdWrite && length > MaxPayload {
			// The payload follows the header and must be read to find the
			// next one. Up to MaxPayload is always legal (and read even
			// when the request is rejected); more is treated as a denial
			// of service, which the spec allows to end the connection.
			return fmt.Errorf("%w: WRITE payload of %d bytes", errFraming, length)
		}

		r := c.allocRequest()
		r.cookie = h.Cookie()
		r.off = h.Offset()
		r.length = length
		r.cmd, r.flags = cmd, h.Flags()
		if c.srv.obs != nil {
			r.start = time.Now()
		}
		t.requests++

		errno, msg := c.check(r)
		if errno == 0 && t.draining.Load() {
			errno, msg = syscall.ESHUTDOWN, "server shutting down"
		}
		if cmd == wire.CmdWrite && length > 0 {
			if errno != 0 {
				// Keep framing: a rejected WRITE's payload is read and
				// thrown away.
				if c.br.Buffered() < int(length) {
					c.idle()
				}
				if _, err := c.br.Discard(int(length)); err != nil {
					c.release(r)
					return err
				}
			} else if t.direct != nil {
				if err := c.writeDirect(r); err != nil {
					c.release(r)
					return err
				}
				continue
			} else {
				if err := c.takePayload(r); err != nil {
					c.release(r)
					return err
				}
				// Straight into the payload buffer: bufio hands a large
				// read to the socket without copying.
				if c.br.Buffered() < int(length) {
					c.idle()
				}
				if _, err := io.ReadFull(c.br, r.buf); err != nil {
					c.release(r)
					return err
				}
				t.bytesIn += uint64(length)
			}
		}
		if errno != 0 {
			r.bad, r.errno, r.msg = true, errno, msg
			if c.srv.obs != nil {
				c.srv.obs.BadRequest(c.exp.Name, errno)
			}
			t.readerActive.Store(true) // idle answers it
			c.enqueue(r)
			continue
		}
		r.counted = true
		t.submitted.Add(1)
		if err := c.submit(r); err != nil {
			return err
		}
	}
}

// endDrain ends a shutdown's drain once the last request submitted before
// it has been answered: it wakes the reader, which stops reading.
func (c *conn) endDrain() {
	c.sock.SetReadDeadline(aLongTimeAgo)
}

// allocRequest takes a top bio and a request for a new request, waiting
// while MaxInFlight are in flight: that wait is the per-connection bound.
func (c *conn) allocRequest() *request {
	t := c.tx
	b := t.bs.TryAlloc()
	if b == nil {
		// MaxInFlight requests are in flight: some may only await the
		// reply the reader holds back, so send those before waiting.
		c.idle()
		// nil Submitter: the reader is never inside a Submit here (see
		// the comment on the pool in transmit).
		b = t.bs.Alloc(nil)
	}
	t.mu.Lock()
	n := len(t.free)
	if n == 0 {
		t.mu.Unlock()
		// release returns the request before the bio, so a free bio
		// implies a free request.
		panic("nbd: a free top bio but no free request")
	}
	r := t.free[n-1]
	t.free = t.free[:n-1]
	t.inflight++
	t.mu.Unlock()
	*r = request{bio: b}
	b.Private = r
	b.SetEndIO(t.endIO)
	return r
}

// check validates a decoded request against the negotiated export, in the
// order the spec's error rules suggest, and sets r.op. It returns the error
// to answer with, or 0.
func (c *conn) check(r *request) (syscall.Errno, string) {
	var allowed uint16
	if c.caps&bioset.CapFUA != 0 {
		allowed |= wire.CmdFlagFUA // valid on every command once advertised
	}
	var need bioset.Caps
	writes := false
	switch r.cmd {
	case wire.CmdRead:
		r.op = bioset.OpRead
		if c.structured {
			allowed |= wire.CmdFlagDF // a READ reply is one chunk anyway
		}
	case wire.CmdWrite:
		r.op, writes = bioset.OpWrite, true
	case wire.CmdFlush:
		r.op, need = bioset.OpFlush, bioset.CapFlush
	case wire.CmdTrim:
		r.op, need, writes = bioset.OpTrim, bioset.CapTrim, true
	case wire.CmdWriteZeroes:
		r.op, need, writes = bioset.OpWriteZeroes, bioset.CapWriteZeroes, true
		allowed |= wire.CmdFlagNoHole
		if c.caps&bioset.CapFastZero != 0 {
			allowed |= wire.CmdFlagFastZero
		}
	case wire.CmdCache:
		r.op, need = bioset.OpCache, bioset.CapCache
	case wire.CmdBlockStatus:
		r.op = bioset.OpBlockStatus
		allowed |= wire.CmdFlagReqOne
		if c.metaID == 0 {
			return syscall.EINVAL, "no metadata context negotiated"
		}
	default:
		return syscall.EINVAL, "unknown command"
	}
	switch {
	case c.caps&need != need:
		return syscall.EINVAL, "command not supported by this export"
	case r.flags&^allowed != 0:
		return syscall.EINVAL, "unsupported command flag"
	case writes && c.exp.ReadOnly:
		return syscall.EPERM, "export is read-only"
	case r.op == bioset.OpRead && r.length > MaxPayload:
		return syscall.EINVAL, "read longer than the maximum payload"
	case r.op.HasRange() && (r.off > c.size || uint64(r.length) > c.size-r.off):
		if r.op == bioset.OpWrite || r.op == bioset.OpWriteZeroes {
			return syscall.ENOSPC, "write past the end of the export"
		}
		return syscall.EINVAL, "request past the end of the export"
	case r.op == bioset.OpBlockStatus && r.length == 0:
		return syscall.EINVAL, "empty block status request"
	}
	return 0, ""
}

// takePayload acquires budget and a buffer for r's payload. It fails only
// when the connection is closing.
//
// The charge is taken from the connection's share first and from the
// server's budget second, and each wait comes after the reader has sent the
// replies it holds back (idle). Waiting for the share cannot deadlock, for
// the reason waiting for the budget cannot (see budget): every byte of the
// share belongs to a request of this connection that a device holds or
// whose reply the writer will send, and both finish without the reader.
// Nor can the order of the two: a reader that holds share bytes while it
// waits for the budget holds nothing any other connection waits for.
//
// The share is what keeps one client from starving the rest. A client that
// never reads its replies, or reads them slowly, holds payload until
// they are sent: without the share, one such connection could hold the
// whole budget and stop every other reader until ReplyTimeout dropped it
// (and then reconnect and do it again); with it, it holds at most
// ConnectionPayload, and the others share the rest.
func (c *conn) takePayload(r *request) error {
	t := c.tx
	n := int(r.length)
	charge := classSize(bufClass(n))
	if !t.share.tryAcquire(charge) {
		// Replies the reader holds back hold share too.
		c.idle()
		c.srv.shareWaits.Add(1)
		if !t.share.acquire(t.waiter, charge, c.stop) {
			return errStopped
		}
	}
	if !c.srv.budget.tryAcquire(charge) {
		c.idle()
		if !c.srv.budget.acquire(t.waiter, charge, c.stop) {
			t.share.release(charge)
			return errStopped
		}
	}
	r.charged = charge
	r.pbuf = getBuf(n)
	r.buf = (*r.pbuf)[:n]
	return nil
}

// submit sends a valid request's top bio to the export's device.
func (c *conn) submit(r *request) error {
	b := r.bio
	b.Op, b.Offset, b.Length, b.Dev = r.op, r.off, uint64(r.length), c.exp.Device
	switch r.op {
	case bioset.OpWrite, bioset.OpTrim, bioset.OpWriteZeroes:
		// FUA matters only where something is written; the spec lets
		// the server ignore it elsewhere.
		if r.flags&wire.CmdFlagFUA != 0 {
			b.Flags |= bioset.FlagFUA
		}
	}
	if r.flags&wire.CmdFlagNoHole != 0 {
		b.Flags |= bioset.FlagNoHole
	}
	if r.flags&wire.CmdFlagFastZero != 0 {
		b.Flags |= bioset.FlagFastZero
	}
	if r.op == bioset.OpRead && r.length > 0 {
		if err := c.takePayload(r); err != nil {
			c.release(r)
			return err
		}
	}
	if c.srv.obs != nil {
		c.srv.obs.RequestStarted(c.exp.Name, r.op)
	}
	// From here until the reader next may block, it answers what
	// completes (see readerActive).
	c.tx.readerActive.Store(true)

	// The top bio is the top device's range as the client asked for it,
	// with the payload buffer of READ and WRITE (nil otherwise).
	b.Buf, b.TopOffset = r.buf, r.off
	switch r.op {
	case bioset.OpRead:
		if c.tx.raw != nil && r.length > 0 {
			// Lent memory is sent in place by writev (replies.go). Without
			// a RawConn the writer would copy it through Go code instead,
			// racing (harmlessly, but visibly to the race detector) with
			// writes to it; such sockets get copies. The payload budget
			// still charges the whole buffer, which stays held. Lent
			// memory is the target's and counted there, except a chunk a
			// TRIM frees while the reply waits: that stays alive
			// uncharged, at most one chunk per loan slot (docs/DESIGN.md,
			// "Memory bounds").
			r.loans = loanTablePool(r.length).Get().(*bioset.Loans)
			b.SetLoans(r.loans)
		}
	case bioset.OpBlockStatus:
		r.window = extentWindows.Get().(*[maxExtents]bioset.Extent)
		r.nslots = maxExtents
		if r.flags&wire.CmdFlagReqOne != 0 {
			r.nslots = 1
		}
		slots := r.window[:r.nslots:r.nslots]
		clear(slots)
		b.Extents = slots
		if c.caps&bioset.CapBlockStatus == 0 {
			// The device cannot tell; the spec lets a server always
			// report status 0 (allocated, contents unknown).
			slots[0] = bioset.Extent{Offset: r.off, Length: uint64(r.length)}
			b.End(nil)
			return nil
		}
	}
	if r.length == 0 && r.op != bioset.OpFlush {
		// An empty range: nothing for the device to do (the spec leaves
		// it unspecified, and asks only not to disconnect).
		b.End(nil)
		return nil
	}
	c.tx.sub.Submit(b)
	return nil
}

// endIO runs when a top bio and all its children have ended, on whatever
// goroutine ended the last of them (a target's worker, a rescuer, the
// reader inside Submit). docs/DESIGN.md rule 6: it neither blocks nor
// allocates; it queues the request for its reply (see replies.go).
func (c *conn) endIO(b *bioset.Bio) {
	r := b.Private.(*request)
	if err := b.Err(); err != nil {
		r.errno = bioset.Errno(err)
	}
	c.enqueue(r)
}

func (c *conn) enqueue(r *request) {
	t := c.tx
	t.mu.Lock()
	t.replies.PushBack(r, &r.link)
	t.mu.Unlock()
	if !t.readerActive.Load() {
		c.wakeWriter()
	}
}

func (c *conn) wakeWriter() {
	select {
	case c.tx.wake <- struct{}{}:
	default: // a wakeup is already pending
	}
}

// writeLoop sends the replies the reader leaves to it (see replies.go):
// those that complete while the reader is blocked, and the rest of a batch
// the reader could not send without blocking. It returns when the reader
// is done and every request has been answered and released.
func (c *conn) writeLoop() {
	t := c.tx
	for {
		t.sendMu.Lock()
		if t.out.pending {
			c.sendBatch(true)
		}
		for list := c.takeQueue(false); !list.Empty(); list = c.takeQueue(false) {
			c.sendList(list, true)
		}
		t.sendMu.Unlock()

		t.mu.Lock()
		done := t.replies.Empty() && t.readerDone && t.inflight == 0
		t.mu.Unlock()
		if done {
			return
		}
		<-t.wake
		t.wakeups++
	}
}

// replyDeadlineSlack is how stale the write deadline may get before the
// writer moves it: re-arming it at most once a second keeps the timer
// update off the per-reply path, and keeps the deadline at least
// ReplyTimeout - replyDeadlineSlack ahead of any write (MinReplyTimeout is
// twice the slack, so that is at least the slack itself).
const replyDeadlineSlack = time.Second

// armWriteDeadline pushes the socket's write deadline to ReplyTimeout from
// now, unless it was done less than replyDeadlineSlack ago.
//
// Invariant: during transmission a write deadline bounds only the write it
// was armed for. Every send that consults the deadline (the writer's
// blocking sends, sendBatch with block true) calls this first, so none
// meets a deadline armed for an earlier write that has since ended; the
// reader's non-blocking sends do not consult it at all (sendBatch); over
// TLS, where crypto/tls may write from the reader too, the socket arms it
// before every write (tlsSocket.Write). A
// deadline left over from a long-finished reply therefore never fails a
// later one, however long the connection was idle in between: a kernel
// client may sit quiet for hours.
func (c *conn) armWriteDeadline() {
	now := time.Now()
	if now.Sub(c.tx.armed) < replyDeadlineSlack {
		return
	}
	c.tx.armed = now
	// The socket's deadline, which a TLS connection's writes share.
	c.sock.SetWriteDeadline(now.Add(c.srv.opts.ReplyTimeout))
}

// writeFailed records the first write error and closes the socket: the
// client cannot get replies, so the reader stops too. The writer keeps
// draining (without writing) until every request is released.
func (c *conn) writeFailed(err error) {
	if c.tx.werr == nil {
		c.tx.werr = err
		c.closeNow()
	}
}

// release frees what r holds: its payload buffer and budget, its extent
// window, the request and the bio. Called once the reply is sent (by the
// reader or the writer, see replies.go), or by the reader for a request it
// gives up on before submitting.
func (c *conn) release(r *request) {
	t := c.tx
	if r.pbuf != nil {
		putBuf(r.pbuf)
		c.srv.budget.release(r.charged)
		t.share.release(r.charged)
	}
	if r.window != nil {
		extentWindows.Put(r.window)
	}
	if r.loans != nil {
		r.loans.Reset()
		loanTablePool(r.length).Put(r.loans)
	}
	counted := r.counted
	b := r.bio
	*r = request{}
	if counted && t.submitted.Add(-1) == 0 && t.draining.Load() {
		c.endDrain()
	}
	t.mu.Lock()
	t.free = append(t.free, r)
	t.inflight--
	t.mu.Unlock()
	// Only now the bio: allocRequest takes a bio, then a request, and
	// must find one.
	t.bs.Free(b)
}

// compactExtents turns a device's BLOCK_STATUS result slots into the
// reply's extents, in place: flags outside base:allocation are dropped
// first, so that neighbours differing only in those merge, and then the
// layers' one compaction (bioset.CompactExtents) keeps the contiguous run
// from off, clipped to [off, off+length) and merged. Empty means no usable
// answer.
func compactExtents(slots []bioset.Extent, off, length uint64) []bioset.Extent {
	for i := range slots {
		slots[i].Flags &= bioset.ExtentHole | bioset.ExtentZero
	}
	return slots[:bioset.CompactExtents(slots, off, length)]
}
