// Package client is an NBD client: one connection to an NBD server, with
// any number of requests in flight on it, their replies matched by cookie
// as they arrive in any order, simple or structured. The tests drive
// stackd's server through it, and a remote leg of a stack can serve its
// bios through it.
//
// It speaks the protocol through package nbd/wire and sees blocks only as
// package bioset describes them. It does not import package nbd, the
// server: the server's own tests use this client, and an import of nbd
// from here would make that a cycle.
package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/rawsock"
	"github.com/stackd/stackd/nbd/wire"
)

var be = binary.BigEndian

// Client limits.
const (
	// maxOptionReplyLen bounds the data of one option reply the client
	// reads: names and descriptions are at most 4096 bytes each.
	maxOptionReplyLen = 64 << 10
	// maxChunkLen bounds a structured reply chunk: a READ of
	// wire.DefaultMaxPayload plus its offset, or a block status reply of
	// 2^20 extents (the most the spec lets a server send).
	maxChunkLen = max(wire.DefaultMaxPayload+8, 4+8<<20)
	// closeTimeout bounds how long Close waits for the server to answer
	// what is in flight and hang up after NBD_CMD_DISC.
	closeTimeout = 5 * time.Second
	// readBufSize holds a few hundred reply headers; READ data larger
	// than what is buffered is read straight into the caller's buffer.
	readBufSize = 16 << 10
)

// aLongTimeAgo is a deadline in the past: setting it makes a blocked
// read or write return at once.
var aLongTimeAgo = time.Unix(1, 0)

// Options configure Dial.
type Options struct {
	// ExportName selects the export; empty selects the server's default.
	ExportName string
	// StructuredReplies negotiates NBD_OPT_STRUCTURED_REPLY. If the
	// server refuses, the client uses simple replies.
	StructuredReplies bool
	// MetaContext selects the base:allocation metadata context, which
	// BlockStatus needs. It implies StructuredReplies.
	MetaContext bool
	// TLS, if set, upgrades the connection with NBD_OPT_STARTTLS before
	// any other option, as the spec advises a client that wants TLS
	// (doc/proto.md, "Client-side requirements"), and fails the dial if
	// the server refuses: no plaintext fallback.
	TLS *tls.Config
}

// Errors of the client.
var (
	// ErrClosed is returned by requests on a closed Client.
	ErrClosed = errors.New("nbd: client closed")
	// ErrUnknownExport matches (errors.Is) the OptionError Dial returns
	// when the server has no export of that name.
	ErrUnknownExport = errors.New("nbd: unknown export")
	// ErrNoMetaContext is returned by BlockStatus when no metadata
	// context was negotiated.
	ErrNoMetaContext = errors.New("nbd: no metadata context negotiated")
	// ErrProtocol wraps violations of the protocol by the server; the
	// client disconnects on them.
	ErrProtocol = errors.New("nbd: protocol violation")
)

// RemoteError is an error the server answered a request with. errors.Is
// matches its Errno.
type RemoteError struct {
	Errno   syscall.Errno
	Message string // from a structured error reply; may be empty
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		return "nbd: server: " + e.Errno.Error()
	}
	return "nbd: server: " + e.Errno.Error() + ": " + e.Message
}

func (e *RemoteError) Unwrap() error { return e.Errno }

// OptionError is an error reply to an option during the handshake.
type OptionError struct {
	Option  uint32 // the NBD_OPT_* value
	Reply   uint32 // the NBD_REP_ERR_* value
	Message string
}

func (e *OptionError) Error() string {
	s := fmt.Sprintf("nbd: option %d refused with reply %#x", e.Option, e.Reply)
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is makes errors.Is(err, ErrUnknownExport) work.
func (e *OptionError) Is(target error) bool {
	return target == ErrUnknownExport && e.Reply == wire.RepErrUnknown
}

// Client is an NBD client connection. It is safe for concurrent use: any
// number of requests may be in flight; replies are matched by cookie.
type Client struct {
	nc         net.Conn
	br         *bufio.Reader
	size       uint64
	flags      uint16
	structured bool
	metaID     uint32
	blockSize  [3]uint32 // min, preferred, max; zero if not sent

	wmu   sync.Mutex  // serialises request writes
	wbufs net.Buffers // StartBatch's iovecs, reused under wmu
	// sender writes requests over a plain socket by raw calls
	// (internal/rawsock); nil over TLS, where nc writes them.
	sender *rawsock.Sender

	mu     sync.Mutex
	calls  map[uint64]*call // in flight, by cookie
	cookie uint64
	err    error // set once the connection is unusable
	closed bool

	readerDone chan struct{}
}

// call is one request in flight.
type call struct {
	cmd       uint16
	off       uint64
	length    uint32
	buf       []byte // READ destination
	covered   uint64 // READ bytes received
	extents   []bioset.Extent
	filling   bool // guarded by Client.mu: the reader is writing into buf
	abandoned bool // guarded by Client.mu: the caller gave up; discard data
	err       error
	done      chan struct{} // closed when a synchronous call completes
	// async is the Request of a call made with Start; its Done runs
	// instead of closing done.
	async *Request
	// window, for an asynchronous BLOCK_STATUS, holds the extents in
	// place of extents: the reply fills it and stops when it is full.
	window  []bioset.Extent
	nWindow int
}

// Dial connects to an NBD server, negotiates and selects an export. ctx
// bounds the connection and handshake only.
func Dial(ctx context.Context, network, addr string, o Options) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c, err := newClient(ctx, nc, o)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// List returns the names of the server's exports (NBD_OPT_LIST).
func List(ctx context.Context, network, addr string) ([]string, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	var names []string
	err = withDeadline(ctx, nc, func() error {
		h, err := startHandshake(nc)
		if err != nil {
			return err
		}
		if err := h.sendOption(wire.OptList, nil); err != nil {
			return err
		}
		for {
			typ, data, err := h.readOptionReply(wire.OptList)
			if err != nil {
				return err
			}
			switch typ {
			case wire.RepServer:
				name, _, ok := wire.CutString(data)
				if !ok {
					return fmt.Errorf("%w: malformed NBD_REP_SERVER", ErrProtocol)
				}
				names = append(names, name)
			case wire.RepAck:
				// Soft disconnect, as the spec asks; the reply does not matter.
				if h.sendOption(wire.OptAbort, nil) == nil {
					h.readOptionReply(wire.OptAbort)
				}
				return nil
			default:
				return optionError(wire.OptList, typ, data)
			}
		}
	})
	return names, err
}

// withDeadline runs f with nc's deadline tied to ctx.
func withDeadline(ctx context.Context, nc net.Conn, f func() error) error {
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(aLongTimeAgo) })
	err := f()
	if !stop() {
		// ctx ended: its deadline may have broken f, or may break what
		// comes next.
		return errors.Join(ctx.Err(), err)
	}
	nc.SetDeadline(time.Time{})
	return err
}

// clientHandshake is the client's side of the option haggling.
type clientHandshake struct {
	nc       net.Conn
	src      *rawsock.Reader // what br reads from
	br       *bufio.Reader
	noZeroes bool
}

func startHandshake(nc net.Conn) (*clientHandshake, error) {
	h := &clientHandshake{nc: nc, src: &rawsock.Reader{NC: nc}}
	h.br = bufio.NewReaderSize(h.src, readBufSize)
	var g [wire.GreetingLen]byte
	if _, err := io.ReadFull(h.br, g[:]); err != nil {
		return nil, err
	}
	hflags, ok := wire.DecodeGreeting(g[:])
	if !ok {
		return nil, fmt.Errorf("%w: not a newstyle NBD server", ErrProtocol)
	}
	if hflags&wire.FlagFixedNewstyle == 0 {
		return nil, fmt.Errorf("%w: server does not support fixed newstyle negotiation", ErrProtocol)
	}
	cflags := uint32(wire.FlagCFixedNewstyle)
	if hflags&wire.FlagNoZeroes != 0 {
		cflags |= wire.FlagCNoZeroes
		h.noZeroes = true
	}
	var b [4]byte
	be.PutUint32(b[:], cflags)
	_, err := nc.Write(b[:])
	return h, err
}

// startTLS asks for TLS and, once the server has acknowledged it, runs
// the TLS handshake; the rest of the session goes over it.
func (h *clientHandshake) startTLS(cfg *tls.Config) error {
	if err := h.sendOption(wire.OptStartTLS, nil); err != nil {
		return err
	}
	typ, data, err := h.readOptionReply(wire.OptStartTLS)
	if err != nil {
		return err
	}
	if typ != wire.RepAck {
		return fmt.Errorf("nbd: the server refused STARTTLS, and TLS is required: %w", optionError(wire.OptStartTLS, typ, data))
	}
	tc := tls.Client(h.nc, cfg)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	h.nc = tc
	// A new reader: bytes buffered before TLS came in plaintext and must
	// not count as protected.
	h.src = &rawsock.Reader{NC: tc}
	h.br = bufio.NewReaderSize(h.src, readBufSize)
	return nil
}

func (h *clientHandshake) sendOption(opt uint32, data []byte) error {
	_, err := h.nc.Write(wire.AppendOption(make([]byte, 0, wire.OptionHeaderLen+len(data)), opt, data))
	return err
}

func (h *clientHandshake) readOptionReply(opt uint32) (typ uint32, data []byte, err error) {
	var b [wire.OptionReplyHeaderLen]byte
	if _, err := io.ReadFull(h.br, b[:]); err != nil {
		return 0, nil, err
	}
	r, ok := wire.DecodeOptionReply(b[:])
	if !ok {
		return 0, nil, fmt.Errorf("%w: bad option reply magic", ErrProtocol)
	}
	if r.Option != opt {
		return 0, nil, fmt.Errorf("%w: reply to option %d while waiting for %d", ErrProtocol, r.Option, opt)
	}
	if r.Length > maxOptionReplyLen {
		return 0, nil, fmt.Errorf("%w: option reply of %d bytes", ErrProtocol, r.Length)
	}
	typ = r.Type
	data = make([]byte, r.Length)
	_, err = io.ReadFull(h.br, data)
	return typ, data, err
}

func optionError(opt, typ uint32, data []byte) error {
	if typ&wire.RepFlagError == 0 {
		return fmt.Errorf("%w: unexpected reply %d to option %d", ErrProtocol, typ, opt)
	}
	return &OptionError{Option: opt, Reply: typ, Message: string(data)}
}

func newClient(ctx context.Context, nc net.Conn, o Options) (*Client, error) {
	c := &Client{nc: nc, calls: make(map[uint64]*call), readerDone: make(chan struct{})}
	err := withDeadline(ctx, nc, func() error { return c.negotiate(o) })
	if err != nil {
		return nil, err
	}
	go c.readLoop()
	return c, nil
}

func (c *Client) negotiate(o Options) (err error) {
	h, err := startHandshake(c.nc)
	if err != nil {
		return err
	}
	if o.TLS != nil {
		if err := h.startTLS(o.TLS); err != nil {
			return err
		}
		c.nc = h.nc
	}
	c.br = h.br
	if o.TLS == nil {
		// Over a plain socket, replies are read and requests written by
		// raw calls once the handshake is done (a tls.Conn is no
		// syscall.Conn).
		defer func() {
			if sc, ok := c.nc.(syscall.Conn); ok && err == nil {
				if raw, rerr := sc.SyscallConn(); rerr == nil {
					h.src.Raw = raw
					c.sender = rawsock.NewSender(raw, rawsock.MaxIovecs)
				}
			}
		}()
	}
	if o.StructuredReplies || o.MetaContext {
		if err := h.sendOption(wire.OptStructuredReply, nil); err != nil {
			return err
		}
		typ, data, err := h.readOptionReply(wire.OptStructuredReply)
		switch {
		case err != nil:
			return err
		case typ == wire.RepAck:
			c.structured = true
		case typ&wire.RepFlagError == 0:
			return optionError(wire.OptStructuredReply, typ, data)
		}
	}
	if o.MetaContext && c.structured {
		q := wire.AppendMetaContextRequest(nil, o.ExportName, wire.MetaBaseAllocation)
		if err := h.sendOption(wire.OptSetMetaContext, q); err != nil {
			return err
		}
	meta:
		for {
			typ, data, err := h.readOptionReply(wire.OptSetMetaContext)
			switch {
			case err != nil:
				return err
			case typ == wire.RepMetaContext && len(data) >= 4:
				if string(data[4:]) == wire.MetaBaseAllocation {
					c.metaID = be.Uint32(data)
				}
			case typ == wire.RepAck:
				break meta
			default:
				return optionError(wire.OptSetMetaContext, typ, data)
			}
		}
	}

	q := wire.AppendInfoRequest(nil, o.ExportName, wire.InfoBlockSize)
	if err := h.sendOption(wire.OptGo, q); err != nil {
		return err
	}
	gotExport := false
	for {
		typ, data, err := h.readOptionReply(wire.OptGo)
		if err != nil {
			return err
		}
		switch {
		case typ == wire.RepInfo && len(data) >= 2:
			switch be.Uint16(data) {
			case wire.InfoExport:
				size, flags, ok := wire.DecodeInfoExport(data)
				if !ok {
					return fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes", ErrProtocol, len(data))
				}
				c.size, c.flags = size, flags
				gotExport = true
			case wire.InfoBlockSize:
				if len(data) == 14 {
					c.blockSize = [3]uint32{be.Uint32(data[2:]), be.Uint32(data[6:]), be.Uint32(data[10:])}
				}
			}
		case typ == wire.RepAck:
			if !gotExport {
				return fmt.Errorf("%w: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT", ErrProtocol)
			}
			return nil
		case typ == wire.RepErrUnsup:
			// An old server: fall back to NBD_OPT_EXPORT_NAME.
			return c.exportName(h, o.ExportName)
		default:
			return optionError(wire.OptGo, typ, data)
		}
	}
}

func (c *Client) exportName(h *clientHandshake, name string) error {
	if err := h.sendOption(wire.OptExportName, []byte(name)); err != nil {
		return err
	}
	n := wire.ExportNameReplyLen
	if !h.noZeroes {
		n += wire.ExportNameZeroes
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(h.br, b); err != nil {
		return err
	}
	c.size, c.flags = be.Uint64(b), be.Uint16(b[8:])
	c.metaID = 0 // meta contexts need NBD_OPT_GO's confirmation
	return nil
}

// Size returns the export's size in bytes.
func (c *Client) Size() uint64 { return c.size }

// Flags returns the export's transmission flags (wire.Flag*).
func (c *Client) Flags() uint16 { return c.flags }

// Structured reports whether structured replies were negotiated.
func (c *Client) Structured() bool { return c.structured }

// BlockSize returns the minimum, preferred and maximum block sizes the
// server advertised, or zeroes.
func (c *Client) BlockSize() (minimum, preferred, maximum uint32) {
	return c.blockSize[0], c.blockSize[1], c.blockSize[2]
}

// Read fills buf from the export at off. len(buf) is at most
// wire.DefaultMaxPayload.
func (c *Client) Read(ctx context.Context, off uint64, buf []byte) error {
	if len(buf) > wire.DefaultMaxPayload {
		return fmt.Errorf("nbd: read of %d bytes exceeds the maximum payload", len(buf))
	}
	return c.do(ctx, &call{cmd: wire.CmdRead, off: off, length: uint32(len(buf)), buf: buf}, 0, nil)
}

// Write writes buf to the export at off. flags are command flags
// (wire.CmdFlagFUA). len(buf) is at most wire.DefaultMaxPayload.
func (c *Client) Write(ctx context.Context, off uint64, buf []byte, flags uint16) error {
	if len(buf) > wire.DefaultMaxPayload {
		return fmt.Errorf("nbd: write of %d bytes exceeds the maximum payload", len(buf))
	}
	return c.do(ctx, &call{cmd: wire.CmdWrite, off: off, length: uint32(len(buf))}, flags, buf)
}

// Flush asks the server to persist every write it has answered.
func (c *Client) Flush(ctx context.Context) error {
	return c.do(ctx, &call{cmd: wire.CmdFlush}, 0, nil)
}

// Trim discards length bytes at off. flags may hold wire.CmdFlagFUA.
func (c *Client) Trim(ctx context.Context, off uint64, length uint32, flags uint16) error {
	return c.do(ctx, &call{cmd: wire.CmdTrim, off: off, length: length}, flags, nil)
}

// WriteZeroes zeroes length bytes at off. flags may hold wire.CmdFlagFUA,
// wire.CmdFlagNoHole and wire.CmdFlagFastZero.
func (c *Client) WriteZeroes(ctx context.Context, off uint64, length uint32, flags uint16) error {
	return c.do(ctx, &call{cmd: wire.CmdWriteZeroes, off: off, length: length}, flags, nil)
}

// Cache asks the server to prefetch length bytes at off.
func (c *Client) Cache(ctx context.Context, off uint64, length uint32) error {
	return c.do(ctx, &call{cmd: wire.CmdCache, off: off, length: length}, 0, nil)
}

// BlockStatus returns the base:allocation extents from off, covering at
// most length bytes (the server may answer for a prefix). With reqOne the
// server answers with one extent. Extent offsets are absolute.
func (c *Client) BlockStatus(ctx context.Context, off uint64, length uint32, reqOne bool) ([]bioset.Extent, error) {
	if c.metaID == 0 {
		return nil, ErrNoMetaContext
	}
	var flags uint16
	if reqOne {
		flags = wire.CmdFlagReqOne
	}
	ca := &call{cmd: wire.CmdBlockStatus, off: off, length: length}
	if err := c.do(ctx, ca, flags, nil); err != nil {
		return nil, err
	}
	return ca.extents, nil
}

// do sends one request and waits for its reply. If ctx ends first, do
// returns ctx.Err() and the reply, when it comes, is discarded; a READ
// buffer is never written after do returns.
func (c *Client) do(ctx context.Context, ca *call, flags uint16, payload []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ca.done = make(chan struct{})
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.cookie++
	cookie := c.cookie
	c.calls[cookie] = ca
	c.mu.Unlock()

	if err := c.send(ca.cmd, flags, cookie, ca.off, ca.length, payload); err != nil {
		c.breakConn(err)
		<-ca.done // the reader fails it
		return ca.err
	}
	select {
	case <-ca.done:
		return ca.err
	case <-ctx.Done():
	}
	c.mu.Lock()
	if ca.filling {
		// The reader is writing into buf right now: wait for it rather
		// than hand the caller a buffer still being written.
		c.mu.Unlock()
		<-ca.done
		return ca.err
	}
	ca.abandoned = true
	c.mu.Unlock()
	return ctx.Err()
}

// send writes one request header and its payload.
func (c *Client) send(cmd, flags uint16, cookie, off uint64, length uint32, payload []byte) error {
	var h [wire.RequestHeaderLen]byte
	wire.PutRequest(h[:], wire.Request{Flags: flags, Type: cmd, Cookie: cookie, Offset: off, Length: length})
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.sender != nil {
		bufs := append(c.wbufs[:0], h[:], payload)
		err := c.sender.Send(bufs)
		c.wbufs = bufs[:0]
		return err
	}
	if len(payload) == 0 {
		_, err := c.nc.Write(h[:])
		return err
	}
	bufs := net.Buffers{h[:], payload}
	_, err := bufs.WriteTo(c.nc)
	return err
}

// Close sends NBD_CMD_DISC, lets the server answer what is in flight (for
// up to closeTimeout) and closes the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	alive := c.err == nil
	c.mu.Unlock()
	if alive {
		if c.send(wire.CmdDisc, 0, 0, 0, 0, nil) == nil {
			if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			t := time.NewTimer(closeTimeout)
			select {
			case <-c.readerDone:
			case <-t.C:
			}
			t.Stop()
		}
	}
	c.breakConn(ErrClosed)
	<-c.readerDone
	return nil
}

// breakConn makes the connection unusable: it records err and closes the
// socket. The reader then fails every request in flight: only the reader
// completes calls, so a call is never completed twice.
func (c *Client) breakConn(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.nc.Close()
}

// Reset is Abort with a TCP reset: the socket is closed with SO_LINGER
// 0, so that the kernel discards what it has not yet delivered of the
// requests sent, instead of delivering it, perhaps much later (a
// retransmission once a lost link is back), to a server that would then
// perform requests their owner has given up on. It cannot recall what
// the server's kernel has already received: see targets/remote's
// package comment. On a unix socket it is Abort. Close must still be
// called.
func (c *Client) Reset(err error) {
	resetSocket(c.nc)
	c.breakConn(err)
}

// resetSocket closes the TCP socket under nc (a *tls.Conn's too) with
// SO_LINGER 0, which sends RST and drops the send queue. The TCP socket
// is closed directly: a *tls.Conn's Close would first try to send a
// close_notify alert, which can block for seconds behind a full send
// queue.
func resetSocket(nc net.Conn) {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if tcp, ok := nc.(*net.TCPConn); ok {
		tcp.SetLinger(0)
		tcp.Close()
	}
}

func (c *Client) readLoop() {
	defer close(c.readerDone)
	err := c.readReplies()
	c.mu.Lock()
	// reset: the reader found the connection broken itself (the server
	// broke the protocol or hung up), so the requests sent on it are
	// abandoned; what is still unsent must not reach the server later.
	reset := c.err == nil && !c.closed
	switch {
	case c.err != nil:
		err = c.err
	case c.closed:
		err = ErrClosed
	case errors.Is(err, io.EOF):
		err = fmt.Errorf("nbd: server closed the connection: %w", err)
	}
	c.err = err
	calls := c.calls
	c.calls = nil // with c.err set: do registers no more calls
	c.mu.Unlock()
	if reset {
		resetSocket(c.nc)
	}
	c.nc.Close()
	for _, ca := range calls {
		if ca.err == nil {
			ca.err = err
		}
		ca.complete()
	}
}

// lookup returns the call a reply is for. Only the reader removes calls
// (or fail, after the reader is done), so the call stays valid while the
// reader handles its reply.
func (c *Client) lookup(cookie uint64) (*call, error) {
	c.mu.Lock()
	ca := c.calls[cookie]
	c.mu.Unlock()
	if ca == nil {
		return nil, fmt.Errorf("%w: reply for unknown cookie %#x", ErrProtocol, cookie)
	}
	return ca, nil
}

func (c *Client) finish(cookie uint64, ca *call) {
	c.mu.Lock()
	delete(c.calls, cookie)
	c.mu.Unlock()
	ca.complete()
}

// complete tells the caller that ca is over: a synchronous caller by
// closing done, an asynchronous one by calling its Done. Only the reader
// calls it, once per call.
func (ca *call) complete() {
	if r := ca.async; r != nil {
		r.NExtents = ca.nWindow
		r.Done(r, ca.err)
		return
	}
	close(ca.done)
}

// fill reads n bytes of READ data into ca.buf at at, or discards them if
// the caller has given up.
func (c *Client) fill(ca *call, at, n uint64) error {
	c.mu.Lock()
	if ca.abandoned {
		c.mu.Unlock()
		_, err := c.br.Discard(int(n))
		return err
	}
	ca.filling = true
	c.mu.Unlock()
	_, err := io.ReadFull(c.br, ca.buf[at:at+n])
	c.mu.Lock()
	ca.filling = false
	c.mu.Unlock()
	return err
}

func (c *Client) readReplies() error {
	var h [wire.ChunkHeaderLen]byte
	var payload []byte
	for {
		if _, err := io.ReadFull(c.br, h[:4]); err != nil {
			return err
		}
		switch m := wire.Magic(h[:4]); m {
		case wire.MagicSimpleReply:
			if _, err := io.ReadFull(c.br, h[4:wire.SimpleReplyLen]); err != nil {
				return err
			}
			r, _ := wire.DecodeSimpleReply(h[:]) // the magic was checked above
			code, cookie := r.Error, r.Cookie
			ca, err := c.lookup(cookie)
			if err != nil {
				return err
			}
			switch {
			case code != 0:
				ca.err = &RemoteError{Errno: wire.DecodeErrno(code)}
			case ca.cmd == wire.CmdRead && c.structured:
				return fmt.Errorf("%w: simple reply with data to a READ after structured replies were negotiated", ErrProtocol)
			case ca.cmd == wire.CmdRead:
				if err := c.fill(ca, 0, uint64(ca.length)); err != nil {
					return err
				}
			case ca.cmd == wire.CmdBlockStatus:
				return fmt.Errorf("%w: simple reply to BLOCK_STATUS", ErrProtocol)
			}
			c.finish(cookie, ca)

		case wire.MagicStructuredReply:
			if _, err := io.ReadFull(c.br, h[4:wire.ChunkHeaderLen]); err != nil {
				return err
			}
			if !c.structured {
				return fmt.Errorf("%w: structured reply not negotiated", ErrProtocol)
			}
			ch, _ := wire.DecodeChunk(h[:]) // the magic was checked above
			flags, typ, cookie, length := ch.Flags, ch.Type, ch.Cookie, ch.Length
			ca, err := c.lookup(cookie)
			if err != nil {
				return err
			}
			if length > maxChunkLen {
				return fmt.Errorf("%w: reply chunk of %d bytes", ErrProtocol, length)
			}
			if typ == wire.ReplyTypeOffsetData {
				if err := c.offsetData(ca, length); err != nil {
					return err
				}
			} else {
				if cap(payload) < int(length) {
					payload = make([]byte, length)
				}
				p := payload[:length]
				if _, err := io.ReadFull(c.br, p); err != nil {
					return err
				}
				if err := c.chunk(ca, typ, p); err != nil {
					return err
				}
			}
			if flags&wire.ReplyFlagDone != 0 {
				if ca.err == nil {
					switch {
					case ca.cmd == wire.CmdRead && ca.covered != uint64(ca.length):
						ca.err = fmt.Errorf("%w: READ reply covers %d of %d bytes", ErrProtocol, ca.covered, ca.length)
					case ca.cmd == wire.CmdBlockStatus && len(ca.extents) == 0 && ca.nWindow == 0:
						ca.err = fmt.Errorf("%w: BLOCK_STATUS reply without extents", ErrProtocol)
					}
				}
				c.finish(cookie, ca)
			}

		default:
			return fmt.Errorf("%w: bad reply magic %#x", ErrProtocol, m)
		}
	}
}

// offsetData handles an NBD_REPLY_TYPE_OFFSET_DATA chunk, reading its data
// straight into the caller's buffer.
func (c *Client) offsetData(ca *call, length uint32) error {
	if ca.cmd != wire.CmdRead || length < 9 {
		return fmt.Errorf("%w: bad OFFSET_DATA chunk", ErrProtocol)
	}
	var o [8]byte
	if _, err := io.ReadFull(c.br, o[:]); err != nil {
		return err
	}
	off, n := be.Uint64(o[:]), uint64(length-8)
	if off < ca.off || off-ca.off > uint64(ca.length) || n > uint64(ca.length)-(off-ca.off) {
		return fmt.Errorf("%w: OFFSET_DATA outside the request", ErrProtocol)
	}
	if err := c.fill(ca, off-ca.off, n); err != nil {
		return err
	}
	ca.covered += n
	return nil
}

// chunk handles a structured reply chunk other than OFFSET_DATA.
func (c *Client) chunk(ca *call, typ uint16, p []byte) error {
	switch typ {
	case wire.ReplyTypeNone:
		if len(p) != 0 {
			return fmt.Errorf("%w: NONE chunk with data", ErrProtocol)
		}
	case wire.ReplyTypeOffsetHole:
		if ca.cmd != wire.CmdRead || len(p) != 12 {
			return fmt.Errorf("%w: bad OFFSET_HOLE chunk", ErrProtocol)
		}
		off, n := be.Uint64(p), uint64(be.Uint32(p[8:]))
		if off < ca.off || off-ca.off > uint64(ca.length) || n > uint64(ca.length)-(off-ca.off) {
			return fmt.Errorf("%w: OFFSET_HOLE outside the request", ErrProtocol)
		}
		c.mu.Lock()
		if !ca.abandoned {
			clear(ca.buf[off-ca.off : off-ca.off+n])
		}
		c.mu.Unlock()
		ca.covered += n
	case wire.ReplyTypeBlockStatus:
		if ca.cmd != wire.CmdBlockStatus || len(p) < 12 || (len(p)-4)%8 != 0 {
			return fmt.Errorf("%w: bad BLOCK_STATUS chunk", ErrProtocol)
		}
		if be.Uint32(p) != c.metaID {
			return nil // a context we did not ask for
		}
		pos := ca.off
		for d := p[4:]; len(d) > 0; d = d[8:] {
			n := uint64(be.Uint32(d))
			if n == 0 {
				return fmt.Errorf("%w: extent of length 0", ErrProtocol)
			}
			e := bioset.Extent{Offset: pos, Length: n, Flags: bioset.ExtentFlags(be.Uint32(d[4:]))}
			pos += n
			switch {
			case ca.window == nil:
				ca.extents = append(ca.extents, e)
			case ca.nWindow < len(ca.window):
				// A full window drops the rest: an answer for a prefix
				// is still an answer.
				ca.window[ca.nWindow] = e
				ca.nWindow++
			}
		}
	default:
		if typ&wire.ReplyTypeErrorBit == 0 {
			return fmt.Errorf("%w: unknown reply chunk type %d", ErrProtocol, typ)
		}
		if len(p) < wire.ErrorChunkLen {
			return fmt.Errorf("%w: error chunk of %d bytes", ErrProtocol, len(p))
		}
		code, mlen := be.Uint32(p), int(be.Uint16(p[4:]))
		msg := p[wire.ErrorChunkLen:]
		if mlen > len(msg) {
			return fmt.Errorf("%w: error message longer than its chunk", ErrProtocol)
		}
		if ca.err == nil {
			ca.err = &RemoteError{Errno: wire.DecodeErrno(code), Message: string(msg[:mlen])}
		}
	}
	return nil
}

// Request is one asynchronous request, for Start: the way a remote leg
// keeps many requests in flight from one goroutine without waiting for
// any. The caller owns it, and may reuse it once Done has run.
type Request struct {
	// Cmd is the command (wire.CmdRead, ...), Flags its command flags.
	Cmd   uint16
	Flags uint16
	// Offset and Length are the range; Length is len(Buf) for READ and
	// WRITE.
	Offset uint64
	Length uint32
	// Buf is a WRITE's payload, written to the socket from where it is,
	// or a READ's destination, into which the reply's data is read: only
	// the bytes the client had already buffered with the reply's header
	// (at most its 16 KiB read buffer) are copied, the rest is read
	// straight in.
	Buf []byte
	// Extents is a BLOCK_STATUS's window: the reply's extents are written
	// into it in order (offsets absolute), those past its end dropped;
	// NExtents says how many were written.
	Extents  []bioset.Extent
	NExtents int
	// Done is called exactly once for a request that Start accepted,
	// with nil, a *RemoteError for an error the server answered, or the
	// error that broke the connection. It runs on the client's reader
	// goroutine, which reads no more replies until it returns: it must
	// not block.
	Done func(r *Request, err error)

	// The request's state in flight and its header, kept here so that
	// Start allocates nothing.
	ca     call
	cookie uint64
	hdr    [wire.RequestHeaderLen]byte
}

// Start sends r without waiting for its reply; Done reports it. Start
// blocks only while it writes to the socket. An error from Start means
// that the connection is closed or broken and that r was not sent: Done
// will not be called for it.
func (c *Client) Start(r *Request) error {
	one := [1]*Request{r}
	return c.StartBatch(one[:])
}

// StartBatch is Start for several requests at once, written to the socket
// in one writev (headers and WRITE payloads, each from where it is): a
// sender that finds many requests queued pays one system call for them
// all. Either every request is sent, and each gets its Done, or StartBatch
// returns an error and none is sent.
func (c *Client) StartBatch(rs []*Request) error {
	for _, r := range rs {
		if r.Cmd == wire.CmdBlockStatus && c.metaID == 0 {
			return ErrNoMetaContext
		}
		if r.Cmd == wire.CmdRead && uint32(len(r.Buf)) != r.Length {
			return fmt.Errorf("nbd: read of %d bytes into a buffer of %d", r.Length, len(r.Buf))
		}
		r.ca = call{cmd: r.Cmd, off: r.Offset, length: r.Length, async: r}
		switch r.Cmd {
		case wire.CmdRead:
			r.ca.buf = r.Buf
		case wire.CmdBlockStatus:
			r.ca.window = r.Extents
		}
		r.NExtents = 0
	}
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return ErrClosed
	case c.err != nil:
		err := c.err
		c.mu.Unlock()
		return err
	}
	for _, r := range rs {
		c.cookie++
		r.cookie = c.cookie
		c.calls[r.cookie] = &r.ca
	}
	c.mu.Unlock()

	c.wmu.Lock()
	bufs := c.wbufs[:0]
	for _, r := range rs {
		wire.PutRequest(r.hdr[:], wire.Request{Flags: r.Flags, Type: r.Cmd, Cookie: r.cookie, Offset: r.Offset, Length: r.Length})
		bufs = append(bufs, r.hdr[:])
		if r.Cmd == wire.CmdWrite && len(r.Buf) > 0 {
			bufs = append(bufs, r.Buf)
		}
	}
	var err error
	if c.sender != nil {
		err = c.sender.Send(bufs)
	} else {
		out := bufs // WriteTo consumes its receiver; bufs keeps the array for the next batch
		_, err = out.WriteTo(c.nc)
	}
	clear(bufs) // drop the references to the payloads
	c.wbufs = bufs[:0]
	c.wmu.Unlock()
	if err != nil {
		// Registered already: the reader fails them, and Done reports it.
		c.breakConn(err)
	}
	return nil
}

// Abort breaks the connection at once with err, without NBD_CMD_DISC:
// every request in flight ends with err, and so does every later one.
// For a server that stops answering: the requests' owner can then send
// them elsewhere. Close must still be called.
func (c *Client) Abort(err error) { c.breakConn(err) }

// Broken is closed once the connection is unusable and every request in
// flight on it has been completed: the time to dial again.
func (c *Client) Broken() <-chan struct{} { return c.readerDone }

// Err returns why the connection is unusable, or nil while it works.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && c.closed {
		return ErrClosed
	}
	return c.err
}

// HasMetaContext reports whether base:allocation was negotiated, so that
// BLOCK_STATUS can be sent.
func (c *Client) HasMetaContext() bool { return c.metaID != 0 }
