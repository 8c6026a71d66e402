package nbd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/nbd/wire"
)

// ioTimeout bounds every blocking step of a test.
const ioTimeout = 10 * time.Second

type testServer struct {
	srv     *Server
	network string
	addr    string
	serve   chan error
}

// startServer serves o on a fresh listener: "unix" (a socket in
// t.TempDir()) or "tcp" (127.0.0.1, random port). The server is shut down
// when the test ends.
func startServer(t testing.TB, o Options, network string) *testServer {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	srv, err := NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	switch network {
	case "unix":
		l, err = net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	case "tcp":
		l, err = net.Listen("tcp", "127.0.0.1:0")
	default:
		t.Fatalf("network %q", network)
	}
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, network: network, addr: l.Addr().String(), serve: make(chan error, 1)}
	go func() { ts.serve <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-ts.serve:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(ioTimeout):
			t.Errorf("Serve did not return after Shutdown")
		}
	})
	return ts
}

// oneExport is Options with a single default export "mem" on dev.
func oneExport(dev Export) Options {
	return Options{Exports: []ExportConfig{{Name: "mem", Description: "test memory", Device: dev, Default: true}}}
}

func (ts *testServer) dial(t testing.TB, o client.Options) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	c, err := client.Dial(ctx, ts.network, ts.addr, o)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	stackdtest.WaitFor(t, what, ioTimeout, cond)
}

func tctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	t.Cleanup(cancel)
	return ctx
}

const allCaps = bioset.CapsAll

// rawConn speaks the protocol byte by byte, for the cases the client
// refuses to produce.
type rawConn struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, ts *testServer) *rawConn {
	t.Helper()
	return dialRawFrom(t, ts, nil)
}

// dialRawFrom dials ts from the local address from (nil: any), so that a
// TCP test can be two clients: 127.0.0.1 and 127.0.0.2 are both loopback.
func dialRawFrom(t testing.TB, ts *testServer, from net.Addr) *rawConn {
	t.Helper()
	d := net.Dialer{Timeout: ioTimeout, LocalAddr: from}
	nc, err := d.Dial(ts.network, ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(ioTimeout))
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (r *rawConn) write(b []byte) {
	r.t.Helper()
	if _, err := r.nc.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *rawConn) read(n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r.br, b); err != nil {
		r.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// greet reads the server's greeting and returns its handshake flags.
func (r *rawConn) greet() uint16 {
	r.t.Helper()
	g := r.read(wire.GreetingLen)
	flags, ok := wire.DecodeGreeting(g)
	if !ok {
		r.t.Fatalf("bad greeting % x", g)
	}
	return flags
}

func (r *rawConn) clientFlags(f uint32) {
	r.t.Helper()
	r.write(be.AppendUint32(nil, f))
}

func (r *rawConn) option(opt uint32, data []byte) {
	r.t.Helper()
	r.write(wire.AppendOption(nil, opt, data))
}

// reply reads one option reply to opt.
func (r *rawConn) reply(opt uint32) (typ uint32, data []byte) {
	r.t.Helper()
	h := r.read(wire.OptionReplyHeaderLen)
	rep, ok := wire.DecodeOptionReply(h)
	if !ok {
		r.t.Fatalf("bad option reply magic % x", h)
	}
	if rep.Option != opt {
		r.t.Fatalf("reply to option %d, want %d", rep.Option, opt)
	}
	return rep.Type, r.read(int(rep.Length))
}

// start does a whole handshake with GO and returns size and flags.
func (r *rawConn) start(name string, structured, meta bool) (uint64, uint16) {
	r.t.Helper()
	r.greet()
	r.clientFlags(wire.FlagCFixedNewstyle | wire.FlagCNoZeroes)
	return r.haggle(name, structured, meta)
}

// haggle is start after the greeting and the client's flags.
func (r *rawConn) haggle(name string, structured, meta bool) (uint64, uint16) {
	r.t.Helper()
	if structured {
		r.option(wire.OptStructuredReply, nil)
		if typ, _ := r.reply(wire.OptStructuredReply); typ != wire.RepAck {
			r.t.Fatalf("STRUCTURED_REPLY: reply %#x", typ)
		}
	}
	if meta {
		r.option(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, name, wire.MetaBaseAllocation))
		typ, data := r.reply(wire.OptSetMetaContext)
		if typ != wire.RepMetaContext || string(data[4:]) != wire.MetaBaseAllocation {
			r.t.Fatalf("SET_META_CONTEXT: reply %#x %q", typ, data)
		}
		if typ, _ := r.reply(wire.OptSetMetaContext); typ != wire.RepAck {
			r.t.Fatalf("SET_META_CONTEXT: final reply %#x", typ)
		}
	}
	r.option(wire.OptGo, wire.AppendInfoRequest(nil, name))
	var size uint64
	var flags uint16
	for {
		typ, data := r.reply(wire.OptGo)
		switch typ {
		case wire.RepInfo:
			if s, f, ok := wire.DecodeInfoExport(data); ok {
				size, flags = s, f
			}
		case wire.RepAck:
			return size, flags
		default:
			r.t.Fatalf("GO: reply %#x %q", typ, data)
		}
	}
}

func (r *rawConn) request(cmd, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	r.t.Helper()
	r.write(requestBytes(cmd, flags, cookie, off, length, payload))
}

// simple reads a simple reply, with dataLen bytes of data if no error.
func (r *rawConn) simple(dataLen int) (code uint32, cookie uint64, data []byte) {
	r.t.Helper()
	h := r.read(wire.SimpleReplyLen)
	rep, ok := wire.DecodeSimpleReply(h)
	if !ok {
		r.t.Fatalf("bad simple reply magic % x", h)
	}
	if rep.Error == 0 && dataLen > 0 {
		data = r.read(dataLen)
	}
	return rep.Error, rep.Cookie, data
}

// chunk reads one structured reply chunk.
func (r *rawConn) chunk() (flags, typ uint16, cookie uint64, payload []byte) {
	r.t.Helper()
	h := r.read(wire.ChunkHeaderLen)
	c, ok := wire.DecodeChunk(h)
	if !ok {
		r.t.Fatalf("bad structured reply magic % x", h)
	}
	return c.Flags, c.Type, c.Cookie, r.read(int(c.Length))
}

// expectClosed reads until the server closes the connection.
func (r *rawConn) expectClosed() {
	r.t.Helper()
	r.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	_, err := io.Copy(io.Discard, r.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		r.t.Fatalf("server did not close the connection")
	}
}

// countingObserver counts Observer events.
type countingObserver struct {
	mu                 sync.Mutex
	opened, closed     int
	handshakeFailed    map[string]int
	refused            map[string]int
	optRefused         map[string]int
	tlsShakes          map[string]int
	started, done, bad int
	doneBytes          uint64
	doneErrs           int
}

func (o *countingObserver) ConnOpened()                       { o.mu.Lock(); o.opened++; o.mu.Unlock() }
func (o *countingObserver) ConnClosed()                       { o.mu.Lock(); o.closed++; o.mu.Unlock() }
func (o *countingObserver) ConnRefused(reason, _ string)      { o.add(&o.refused, reason) }
func (o *countingObserver) OptionRefused(reason, _, _ string) { o.add(&o.optRefused, reason) }
func (o *countingObserver) TLSHandshake(outcome string)       { o.add(&o.tlsShakes, outcome) }

// add counts key in one of o's maps, under its lock.
func (o *countingObserver) add(m *map[string]int, key string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[key]++
}

// count reads one of o's maps under its lock.
func (o *countingObserver) count(m *map[string]int, key string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return (*m)[key]
}
func (o *countingObserver) HandshakeFailed(reason string)    { o.add(&o.handshakeFailed, reason) }
func (o *countingObserver) RequestStarted(string, bioset.Op) { o.mu.Lock(); o.started++; o.mu.Unlock() }
func (o *countingObserver) RequestDone(_ string, _ bioset.Op, n uint64, err syscall.Errno, _ time.Duration) {
	o.mu.Lock()
	o.done++
	o.doneBytes += n
	if err != 0 {
		o.doneErrs++
	}
	o.mu.Unlock()
}
func (o *countingObserver) BadRequest(string, syscall.Errno) { o.mu.Lock(); o.bad++; o.mu.Unlock() }
