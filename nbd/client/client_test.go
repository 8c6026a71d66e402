package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/nbd/wire"
)

// The client is tested here against fakeServer, a scripted NBD server
// written from the spec, so that these tests can send what stackd's server
// never does (OFFSET_HOLE chunks, errors the spec has no value for,
// replies that break the protocol) and hold replies back at will. How the
// client and stackd's server work together is tested in package nbd.

// ioTimeout bounds every blocking step of a test.
const ioTimeout = 10 * time.Second

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	t.Cleanup(cancel)
	return ctx
}

// fakeServer accepts connections on a loopback TCP port (as a remote leg
// would reach its server), negotiates as its
// fields say, and hands every request after the handshake to serve.
type fakeServer struct {
	t          *testing.T
	addr       string
	size       uint64
	flags      uint16   // transmission flags sent with the size
	structured bool     // accept NBD_OPT_STRUCTURED_REPLY
	oldGo      bool     // answer NBD_OPT_GO with NBD_REP_ERR_UNSUP, as an old server
	exports    []string // for NBD_OPT_LIST
	// serve answers one request; a WRITE's payload has been read. It runs
	// on the connection's goroutine, and may answer later from another.
	serve func(c *fakeConn, r wire.Request, payload []byte)
}

// fakeConn is one connection of a fakeServer.
type fakeConn struct {
	nc         net.Conn
	structured bool
	mu         sync.Mutex // serialises replies
}

// start listens and serves until the test ends.
func (s *fakeServer) start() *fakeServer {
	s.t.Helper()
	if s.flags == 0 {
		s.flags = wire.FlagHasFlags | wire.FlagSendFlush
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.t.Fatal(err)
	}
	s.addr = l.Addr().String()
	var wg sync.WaitGroup
	s.t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(ioTimeout))
				c := &fakeConn{nc: nc}
				if s.handshake(c) {
					s.transmit(c)
				}
			}()
		}
	}()
	return s
}

// handshake reports whether transmission begins.
func (s *fakeServer) handshake(c *fakeConn) bool {
	var b [wire.GreetingLen]byte
	wire.PutGreeting(b[:], wire.FlagFixedNewstyle|wire.FlagNoZeroes)
	if _, err := c.nc.Write(b[:]); err != nil {
		return false
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.nc, cf[:]); err != nil {
		return false
	}
	noZeroes := be.Uint32(cf[:])&wire.FlagCNoZeroes != 0
	for {
		var h [wire.OptionHeaderLen]byte
		if _, err := io.ReadFull(c.nc, h[:]); err != nil {
			return false
		}
		opt, n, ok := wire.DecodeOption(h[:])
		if !ok || n > 1<<16 {
			return false
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.nc, data); err != nil {
			return false
		}
		switch {
		case opt == wire.OptStructuredReply && s.structured:
			c.structured = true
			c.optReply(opt, wire.RepAck, nil)
		case opt == wire.OptSetMetaContext && c.structured:
			c.optReply(opt, wire.RepMetaContext, append(be.AppendUint32(nil, 7), wire.MetaBaseAllocation...))
			c.optReply(opt, wire.RepAck, nil)
		case opt == wire.OptList:
			for _, name := range s.exports {
				c.optReply(opt, wire.RepServer, wire.AppendString(nil, name))
			}
			c.optReply(opt, wire.RepAck, nil)
		case opt == wire.OptAbort:
			c.optReply(opt, wire.RepAck, nil)
			return false
		case opt == wire.OptGo && !s.oldGo:
			info := make([]byte, wire.InfoExportLen)
			wire.PutInfoExport(info, s.size, s.flags)
			c.optReply(opt, wire.RepInfo, info)
			c.optReply(opt, wire.RepAck, nil)
			return true
		case opt == wire.OptExportName:
			b := be.AppendUint16(be.AppendUint64(nil, s.size), s.flags)
			if !noZeroes {
				b = append(b, make([]byte, wire.ExportNameZeroes)...)
			}
			c.nc.Write(b)
			return true
		default:
			c.optReply(opt, wire.RepErrUnsup, nil)
		}
	}
}

func (c *fakeConn) optReply(opt, typ uint32, data []byte) {
	b := make([]byte, wire.OptionReplyHeaderLen, wire.OptionReplyHeaderLen+len(data))
	wire.PutOptionReply(b, wire.OptionReply{Option: opt, Type: typ, Length: uint32(len(data))})
	c.nc.Write(append(b, data...))
}

func (s *fakeServer) transmit(c *fakeConn) {
	for {
		var h wire.RequestHeader
		if _, err := io.ReadFull(c.nc, h[:]); err != nil {
			return
		}
		r := wire.Request{Flags: h.Flags(), Type: h.Type(), Cookie: h.Cookie(), Offset: h.Offset(), Length: h.Length()}
		if h.Magic() != wire.MagicRequest || r.Type == wire.CmdDisc {
			return
		}
		var payload []byte
		if r.Type == wire.CmdWrite {
			payload = make([]byte, r.Length)
			if _, err := io.ReadFull(c.nc, payload); err != nil {
				return
			}
		}
		s.serve(c, r, payload)
	}
}

// simple sends a simple reply, then data.
func (c *fakeConn) simple(cookie uint64, code uint32, data []byte) {
	b := make([]byte, wire.SimpleReplyLen, wire.SimpleReplyLen+len(data))
	wire.PutSimpleReply(b, wire.SimpleReply{Error: code, Cookie: cookie})
	c.send(append(b, data...))
}

// chunk sends a structured reply chunk.
func (c *fakeConn) chunk(cookie uint64, flags, typ uint16, data []byte) {
	b := make([]byte, wire.ChunkHeaderLen, wire.ChunkHeaderLen+len(data))
	wire.PutChunk(b, wire.Chunk{Flags: flags, Type: typ, Cookie: cookie, Length: uint32(len(data))})
	c.send(append(b, data...))
}

// errorChunk sends a final error chunk with a message.
func (c *fakeConn) errorChunk(cookie uint64, code uint32, msg string) {
	d := be.AppendUint16(be.AppendUint32(nil, code), uint16(len(msg)))
	c.chunk(cookie, wire.ReplyFlagDone, wire.ReplyTypeError, append(d, msg...))
}

func (c *fakeConn) send(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nc.Write(b)
}

// memServe serves the requests from mem, answering a READ with OFFSET_DATA
// on a structured connection.
func memServe(mem []byte) func(c *fakeConn, r wire.Request, payload []byte) {
	var mu sync.Mutex
	return func(c *fakeConn, r wire.Request, payload []byte) {
		mu.Lock()
		defer mu.Unlock()
		switch r.Type {
		case wire.CmdWrite:
			copy(mem[r.Offset:], payload)
		case wire.CmdRead:
			data := mem[r.Offset : r.Offset+uint64(r.Length)]
			if c.structured {
				c.chunk(r.Cookie, wire.ReplyFlagDone, wire.ReplyTypeOffsetData, append(be.AppendUint64(nil, r.Offset), data...))
				return
			}
			c.simple(r.Cookie, 0, data)
			return
		}
		if c.structured {
			c.chunk(r.Cookie, wire.ReplyFlagDone, wire.ReplyTypeNone, nil)
		} else {
			c.simple(r.Cookie, 0, nil)
		}
	}
}

func dial(t *testing.T, s *fakeServer, o Options) *Client {
	t.Helper()
	c, err := Dial(tctx(t), "tcp", s.addr, o)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestContextCancel: a request whose context ends returns at once, its
// late reply is discarded and never written into the caller's buffer, and
// the connection goes on.
func TestContextCancel(t *testing.T) {
	mem := make([]byte, 1<<20)
	serve := memServe(mem)
	var gateMu sync.Mutex
	gated := false
	var held []wire.Request
	var heldOn *fakeConn
	open := func() {
		gateMu.Lock()
		gated = false
		reqs := held
		held = nil
		gateMu.Unlock()
		for _, r := range reqs {
			serve(heldOn, r, nil)
		}
	}
	s := (&fakeServer{t: t, size: uint64(len(mem)), structured: true, serve: func(c *fakeConn, r wire.Request, payload []byte) {
		gateMu.Lock()
		if gated {
			held, heldOn = append(held, r), c
			gateMu.Unlock()
			return
		}
		gateMu.Unlock()
		serve(c, r, payload)
	}}).start()

	c := dial(t, s, Options{StructuredReplies: true})
	if err := c.Write(tctx(t), 0, []byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	gateMu.Lock()
	gated = true
	gateMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	buf := make([]byte, 5)
	if err := c.Read(ctx, 0, buf); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read with expired context: %v", err)
	}
	open()
	got := make([]byte, 5)
	if err := c.Read(tctx(t), 0, got); err != nil || string(got) != "hello" {
		t.Fatalf("read after cancel: %q, %v", got, err)
	}
	if !bytes.Equal(buf, make([]byte, 5)) {
		t.Fatalf("the abandoned read's buffer was written: %q", buf)
	}
	if err := c.Read(ctx, 0, got); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read with dead context: %v", err)
	}
	c.Close()
	if err := c.Read(tctx(t), 0, got); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
}

// TestOutOfOrder: replies are matched to requests by cookie, in whatever
// order they come.
func TestOutOfOrder(t *testing.T) {
	const n = 16
	var mu sync.Mutex
	var reqs []wire.Request
	var conn *fakeConn
	s := (&fakeServer{t: t, size: n * 512, serve: func(c *fakeConn, r wire.Request, _ []byte) {
		mu.Lock()
		defer mu.Unlock()
		reqs, conn = append(reqs, r), c
		if len(reqs) < n {
			return
		}
		for i := n - 1; i >= 0; i-- { // the last request first
			conn.simple(reqs[i].Cookie, 0, bytes.Repeat([]byte{byte(reqs[i].Offset / 512)}, 512))
		}
	}}).start()
	c := dial(t, s, Options{})
	errs := make(chan error, n)
	for i := range n {
		go func() {
			b := make([]byte, 512)
			err := c.Read(tctx(t), uint64(i*512), b)
			if err == nil && !bytes.Equal(b, bytes.Repeat([]byte{byte(i)}, 512)) {
				err = fmt.Errorf("read %d got the data of another", i)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestReadChunks: a READ answered in several chunks, holes among them, is
// assembled in the caller's buffer; one whose chunks leave a gap fails.
func TestReadChunks(t *testing.T) {
	s := (&fakeServer{t: t, size: 1 << 20, structured: true, serve: func(c *fakeConn, r wire.Request, _ []byte) {
		half := r.Length / 2
		// The second half first, as data; then the first half as a hole.
		c.chunk(r.Cookie, 0, wire.ReplyTypeOffsetData, append(be.AppendUint64(nil, r.Offset+uint64(half)), bytes.Repeat([]byte{'d'}, int(r.Length-half))...))
		if r.Offset == 0 {
			hole := be.AppendUint32(be.AppendUint64(nil, r.Offset), half)
			c.chunk(r.Cookie, 0, wire.ReplyTypeOffsetHole, hole)
		}
		c.chunk(r.Cookie, wire.ReplyFlagDone, wire.ReplyTypeNone, nil)
	}}).start()
	c := dial(t, s, Options{StructuredReplies: true})
	buf := bytes.Repeat([]byte{'x'}, 8)
	if err := c.Read(tctx(t), 0, buf); err != nil || string(buf) != "\x00\x00\x00\x00dddd" {
		t.Fatalf("read: %q, %v", buf, err)
	}
	// At 4096 the server sends no hole: half the read is never covered.
	if err := c.Read(tctx(t), 4096, buf); !errors.Is(err, ErrProtocol) {
		t.Fatalf("read with a gap: %v", err)
	}
}

// TestRemoteErrors: error replies become RemoteErrors whose errno is the
// one the wire value stands for, and a value the spec has none for is
// EINVAL.
func TestRemoteErrors(t *testing.T) {
	for _, structured := range []bool{false, true} {
		s := (&fakeServer{t: t, size: 1 << 20, structured: structured, serve: func(c *fakeConn, r wire.Request, _ []byte) {
			code := uint32(wire.ENOSPC)
			if r.Type == wire.CmdFlush {
				code = 13 // EACCES: no NBD error
			}
			if c.structured {
				c.errorChunk(r.Cookie, code, "no room")
			} else {
				c.simple(r.Cookie, code, nil)
			}
		}}).start()
		c := dial(t, s, Options{StructuredReplies: structured})
		err := c.Write(tctx(t), 0, []byte("x"), wire.CmdFlagFUA)
		var re *RemoteError
		if !errors.As(err, &re) || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("structured=%v: write: %v", structured, err)
		}
		if want := map[bool]string{false: "", true: "no room"}[structured]; re.Message != want {
			t.Errorf("structured=%v: message %q, want %q", structured, re.Message, want)
		}
		if err := c.Flush(tctx(t)); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("structured=%v: flush answered with an unknown error value: %v", structured, err)
		}
	}
}

// TestProtocolViolation: a reply for a cookie the client never sent breaks
// the connection; the request in flight and every later one fail.
func TestProtocolViolation(t *testing.T) {
	s := (&fakeServer{t: t, size: 1 << 20, serve: func(c *fakeConn, r wire.Request, _ []byte) {
		c.simple(r.Cookie+1000, 0, nil)
	}}).start()
	c := dial(t, s, Options{})
	if err := c.Flush(tctx(t)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("flush answered for another cookie: %v", err)
	}
	if err := c.Flush(tctx(t)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("flush after the violation: %v", err)
	}
}

// TestOldServer: a server without NBD_OPT_GO is entered with
// NBD_OPT_EXPORT_NAME.
func TestOldServer(t *testing.T) {
	s := (&fakeServer{t: t, size: 12345, flags: wire.FlagHasFlags | wire.FlagReadOnly, oldGo: true,
		serve: memServe(make([]byte, 12345))}).start()
	c := dial(t, s, Options{ExportName: "old"})
	if c.Size() != 12345 || c.Flags() != wire.FlagHasFlags|wire.FlagReadOnly || c.Structured() {
		t.Fatalf("size %d, flags %#x, structured %v", c.Size(), c.Flags(), c.Structured())
	}
	if err := c.Write(tctx(t), 0, []byte("abc"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.BlockStatus(tctx(t), 0, 512, false); !errors.Is(err, ErrNoMetaContext) {
		t.Fatalf("BlockStatus without a meta context: %v", err)
	}
}

func TestList(t *testing.T) {
	s := (&fakeServer{t: t, exports: []string{"a", "b"}}).start()
	names, err := List(tctx(t), "tcp", s.addr)
	if err != nil || fmt.Sprint(names) != "[a b]" {
		t.Fatalf("List = %q, %v", names, err)
	}
}
