package remote

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/nbd/wire"
	"github.com/stackd/stackd/targets"
)

// The remote leg is tested here against package nbd's server over
// loopback (a test may import the server; the target never does), through
// a proxy the test can pause and cut, and against raw servers that send
// garbage. Every wait is bounded.

const bound = 10 * time.Second

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs an nbd server over a memory target on l until the test ends.
func serve(t *testing.T, l net.Listener, size uint64) *targets.Memory {
	t.Helper()
	mem := targets.NewMemory(size, 0)
	serveOptions(t, l, nbd.Options{Exports: []nbd.ExportConfig{{Name: "disk0", Device: mem, Default: true}}})
	return mem
}

// serveOptions runs an nbd server with o on l until the test ends.
func serveOptions(t *testing.T, l net.Listener, o nbd.Options) {
	t.Helper()
	srv, err := nbd.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func newRemote(t *testing.T, o Options) *Remote {
	t.Helper()
	r, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func tcp(addr string) Options {
	return Options{Network: "tcp", Address: addr, Export: "disk0", Timeout: bound}
}

// io runs one bio through r and returns its error.
func doBio(t *testing.T, r *Remote, op bioset.Op, off uint64, buf []byte, length uint64) error {
	t.Helper()
	var b bioset.Bio
	b.Init(op, off, length, buf, nil)
	b.Dev = r
	return stackdtest.Await(t, new(bioset.Submitter), &b, bound)
}

// submitMany submits n bios at once, without waiting for any, and
// returns a function that waits for them all and returns their errors.
func submitMany(t *testing.T, r *Remote, n int, mk func(i int, b *bioset.Bio)) func() []error {
	t.Helper()
	bios := make([]bioset.Bio, n)
	var wg sync.WaitGroup
	s := new(bioset.Submitter)
	for i := range bios {
		mk(i, &bios[i])
		bios[i].Dev = r
		wg.Add(1)
		bios[i].SetEndIO(func(*bioset.Bio) { wg.Done() })
		s.Submit(&bios[i])
	}
	return func() []error {
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * bound):
			t.Fatalf("%d bios did not all end within %v", n, 2*bound)
		}
		errs := make([]error, n)
		for i := range bios {
			errs[i] = bios[i].Err()
		}
		return errs
	}
}

func pattern(i, n int) []byte { return bytes.Repeat([]byte{byte(i*7 + 1)}, n) }

// TestRoundTrip: many requests in flight at once over several
// connections, every op passed through, caps those of the remote.
func TestRoundTrip(t *testing.T) {
	l := listen(t)
	mem := serve(t, l, 64<<20)
	o := tcp(l.Addr().String())
	o.Connections = 4
	r := newRemote(t, o)
	if r.Size() != 64<<20 || r.Caps() != mem.Caps() {
		t.Fatalf("size %d caps %b; want %d, %b", r.Size(), r.Caps(), 64<<20, mem.Caps())
	}
	const n, bs = 512, 16 << 10
	wait := submitMany(t, r, n, func(i int, b *bioset.Bio) {
		b.Init(bioset.OpWrite, uint64(i)*bs, bs, pattern(i, bs), nil)
		if i%5 == 0 {
			b.Flags = bioset.FlagFUA
		}
	})
	for i, err := range wait() {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	stackdtest.WaitFor(t, "four connections", bound, func() bool {
		for _, c := range r.State().Connections {
			if c.State != StateConnected {
				return false
			}
		}
		return true
	})
	bufs := make([][]byte, n)
	wait = submitMany(t, r, n, func(i int, b *bioset.Bio) {
		bufs[i] = make([]byte, bs)
		b.Init(bioset.OpRead, uint64(i)*bs, bs, bufs[i], nil)
	})
	for i, err := range wait() {
		if err != nil || !bytes.Equal(bufs[i], pattern(i, bs)) {
			t.Fatalf("read %d: %v, %x…", i, err, bufs[i][:4])
		}
	}
	if err := doBio(t, r, bioset.OpFlush, 0, nil, 0); err != nil {
		t.Fatal("flush:", err)
	}
	if err := doBio(t, r, bioset.OpTrim, 0, nil, 1<<20); err != nil {
		t.Fatal("trim:", err)
	}
	if err := doBio(t, r, bioset.OpWriteZeroes, 1<<20, nil, 1<<20); err != nil {
		t.Fatal("write zeroes:", err)
	}
	if err := doBio(t, r, bioset.OpCache, 0, nil, 1<<20); err != nil {
		t.Fatal("cache:", err)
	}
	buf := make([]byte, 4096)
	if err := doBio(t, r, bioset.OpRead, 1<<20, buf, 4096); err != nil || !bytes.Equal(buf, make([]byte, 4096)) {
		t.Fatal("read after zeroes:", err)
	}
	// BLOCK_STATUS: the trimmed and zeroed front, then data; the window
	// in TopOffset coordinates.
	var b bioset.Bio
	b.Init(bioset.OpBlockStatus, 0, 4<<20, nil, nil)
	b.TopOffset = 1 << 30
	b.Extents = make([]bioset.Extent, 8)
	b.Dev = r
	if err := stackdtest.Await(t, new(bioset.Submitter), &b, bound); err != nil {
		t.Fatal("block status:", err)
	}
	if e := b.Extents[0]; e.Offset != 1<<30 || e.Length < 1<<20 || e.Flags&bioset.ExtentZero == 0 {
		t.Fatalf("block status: first extent %+v", e)
	}
	var covered uint64
	for _, e := range b.Extents {
		covered += e.Length
	}
	if covered > 4<<20 {
		t.Fatalf("block status covers %d bytes of a 4 MiB request", covered)
	}
	if err := doBio(t, r, bioset.OpRead, 64<<20, make([]byte, 512), 512); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("read past the end: %v", err)
	}
	if s := r.Stats(); s.Retried != 0 || s.TimedOut != 0 || s.InFlight != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// proxy forwards connections to a server; hold stops it forwarding
// (requests then stay unanswered), cut closes every connection.
type proxy struct {
	l     net.Listener
	to    string
	mu    sync.Mutex
	conns []net.Conn
	held  atomic.Bool
	wg    sync.WaitGroup
}

func newProxy(t *testing.T, to string) *proxy {
	p := &proxy{l: listen(t), to: to}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := p.l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(c, u)
			go p.pipe(u, c)
		}
	}()
	t.Cleanup(func() {
		p.l.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) pipe(from, to net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := from.Read(buf)
		for p.held.Load() && err == nil {
			time.Sleep(time.Millisecond) // bounded by cut, which fails the write below
		}
		if n > 0 {
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			to.Close()
			return
		}
	}
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) addr() string { return p.l.Addr().String() }

// TestReconnectRetries: requests in flight when the connection drops are
// sent again on the next one and succeed; the drop counts a reconnect.
func TestReconnectRetries(t *testing.T) {
	l := listen(t)
	serve(t, l, 16<<20)
	p := newProxy(t, l.Addr().String())
	r := newRemote(t, tcp(p.addr()))
	p.held.Store(true)
	const n, bs = 200, 4096
	wait := submitMany(t, r, n, func(i int, b *bioset.Bio) {
		b.Init(bioset.OpWrite, uint64(i)*bs, bs, pattern(i, bs), nil)
	})
	stackdtest.WaitFor(t, "requests in flight", bound, func() bool { return r.State().Connections[0].Sent == n })
	p.cut()
	p.held.Store(false)
	for i, err := range wait() {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	s := r.Stats()
	if s.Reconnects < 1 || s.Retried < n {
		t.Fatalf("reconnects %d, retried %d; want ≥1 and ≥%d", s.Reconnects, s.Retried, n)
	}
	for i := range n {
		buf := make([]byte, bs)
		if err := doBio(t, r, bioset.OpRead, uint64(i)*bs, buf, bs); err != nil || !bytes.Equal(buf, pattern(i, bs)) {
			t.Fatalf("read %d after reconnect: %v", i, err)
		}
	}
}

// TestTimeout: a remote that stops answering fails its requests with EIO
// within the timeout (and the watchdog's tick), and the connection is
// aborted and dialled again; once the remote answers, requests succeed.
func TestTimeout(t *testing.T) {
	l := listen(t)
	serve(t, l, 16<<20)
	p := newProxy(t, l.Addr().String())
	o := tcp(p.addr())
	o.Timeout = 300 * time.Millisecond
	r := newRemote(t, o)
	p.held.Store(true)
	start := time.Now()
	wait := submitMany(t, r, 32, func(i int, b *bioset.Bio) {
		b.Init(bioset.OpRead, uint64(i)*4096, 4096, make([]byte, 4096), nil)
	})
	for i, err := range wait() {
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("read %d from a silent remote: %v, want EIO", i, err)
		}
	}
	if took := time.Since(start); took > o.Timeout+o.Timeout/2 {
		t.Fatalf("failed after %v, timeout %v", took, o.Timeout)
	}
	if s := r.Stats(); s.TimedOut != 32 {
		t.Fatalf("timed out %d, want 32", s.TimedOut)
	}
	p.held.Store(false)
	p.cut() // the held connection's bytes are stale
	stackdtest.WaitFor(t, "a reconnect", bound, func() bool { return r.State().Connections[0].State == StateConnected })
	o.Timeout = bound
	if err := doBio(t, r, bioset.OpRead, 0, make([]byte, 4096), 4096); err != nil {
		t.Fatal("read once the remote answers:", err)
	}
}

// TestUnreachableAtStart: with a size, a remote that cannot be reached
// does not stop New; requests wait for it up to their timeout, and once
// it listens, requests succeed.
func TestUnreachableAtStart(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	o := Options{Network: "unix", Address: sock, Export: "disk0", Timeout: 200 * time.Millisecond, Size: 8 << 20}
	if _, err := New(Options{Network: "unix", Address: sock, Timeout: time.Second}); err == nil {
		t.Fatal("New without a size reached nothing, yet succeeded")
	}
	r := newRemote(t, o)
	if r.Caps() != bioset.CapFlush|bioset.CapFUA {
		t.Fatalf("caps of an unreached remote %b", r.Caps())
	}
	if err := doBio(t, r, bioset.OpWrite, 0, pattern(1, 4096), 4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write to an unreached remote: %v, want EIO", err)
	}
	if st := r.State().Connections[0]; st.State == StateConnected || st.LastError == "" {
		t.Fatalf("state %+v", st)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, l, 8<<20)
	stackdtest.WaitFor(t, "the connection", bound, func() bool { return r.State().Connections[0].State == StateConnected })
	if err := doBio(t, r, bioset.OpWrite, 0, pattern(1, 4096), 4096); err != nil {
		t.Fatal("write once the remote listens:", err)
	}
	if err := doBio(t, r, bioset.OpFlush, 0, nil, 0); err != nil {
		t.Fatal("flush:", err)
	}
}

// TestSizeMismatch: a remote of another size is never used.
func TestSizeMismatch(t *testing.T) {
	l := listen(t)
	serve(t, l, 16<<20)
	o := tcp(l.Addr().String())
	o.Size, o.Timeout = 8<<20, 200*time.Millisecond
	r := newRemote(t, o)
	if err := doBio(t, r, bioset.OpRead, 0, make([]byte, 512), 512); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read: %v, want EIO", err)
	}
	if e := r.State().Connections[0].LastError; !bytes.Contains([]byte(e), []byte("not the 8388608 configured")) {
		t.Fatalf("last error %q", e)
	}
}

// garbageServer handshakes properly (simple replies, no meta context) and
// then answers each connection's first request with the garbage of its
// mode; from connection number good on, it answers properly (zeroes).
type garbageServer struct {
	l     net.Listener
	modes []string // per connection: "magic", "cookie", "length"
	conns atomic.Int32
	wg    sync.WaitGroup
}

func newGarbage(t *testing.T, modes ...string) *garbageServer {
	g := &garbageServer{l: listen(t), modes: modes}
	var open sync.Map
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			c, err := g.l.Accept()
			if err != nil {
				return
			}
			open.Store(c, true)
			n := int(g.conns.Add(1)) - 1
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				defer c.Close()
				mode := "good"
				if n < len(g.modes) {
					mode = g.modes[n]
				}
				g.serve(c, mode)
			}()
		}
	}()
	t.Cleanup(func() {
		g.l.Close()
		open.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		g.wg.Wait()
	})
	return g
}

var be = binary.BigEndian

func (g *garbageServer) serve(c net.Conn, mode string) {
	c.SetDeadline(time.Now().Add(bound))
	var greet [wire.GreetingLen]byte
	wire.PutGreeting(greet[:], wire.FlagFixedNewstyle|wire.FlagNoZeroes)
	c.Write(greet[:])
	var cf [4]byte
	if _, err := io.ReadFull(c, cf[:]); err != nil {
		return
	}
	reply := func(opt, typ uint32, data []byte) {
		b := make([]byte, wire.OptionReplyHeaderLen)
		wire.PutOptionReply(b, wire.OptionReply{Option: opt, Type: typ, Length: uint32(len(data))})
		c.Write(append(b, data...))
	}
	for {
		var h [wire.OptionHeaderLen]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		opt, n, ok := wire.DecodeOption(h[:])
		if !ok || n > 1<<16 {
			return
		}
		if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
			return
		}
		if opt != wire.OptGo {
			reply(opt, wire.RepErrUnsup, nil)
			continue
		}
		info := make([]byte, wire.InfoExportLen)
		wire.PutInfoExport(info, 1<<20, wire.FlagHasFlags|wire.FlagSendFlush)
		reply(opt, wire.RepInfo, info)
		reply(opt, wire.RepAck, nil)
		break
	}
	for {
		var h wire.RequestHeader
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		if h.Type() == wire.CmdWrite {
			if _, err := io.ReadFull(c, make([]byte, h.Length())); err != nil {
				return
			}
		}
		out := make([]byte, wire.SimpleReplyLen)
		wire.PutSimpleReply(out, wire.SimpleReply{Cookie: h.Cookie()})
		switch mode {
		case "magic":
			copy(out, "JUNK")
		case "cookie":
			be.PutUint64(out[8:], h.Cookie()+12345)
		case "length":
			// A structured chunk that was never negotiated, claiming
			// four gigabytes.
			out = make([]byte, wire.ChunkHeaderLen)
			wire.PutChunk(out, wire.Chunk{Flags: wire.ReplyFlagDone, Type: wire.ReplyTypeOffsetData, Cookie: h.Cookie(), Length: 1<<32 - 1})
		}
		if h.Type() == wire.CmdRead && mode == "good" {
			out = append(out, make([]byte, h.Length())...)
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// TestGarbage: a remote that answers with garbage is disconnected and
// dialled again; the request is retried, and succeeds once the remote
// answers properly, or fails with EIO at its timeout if it never does.
func TestGarbage(t *testing.T) {
	g := newGarbage(t, "magic", "cookie", "length")
	o := tcp(g.l.Addr().String())
	o.Size = 1 << 20
	r := newRemote(t, o)
	buf := pattern(3, 4096)
	if err := doBio(t, r, bioset.OpRead, 0, buf, 4096); err != nil {
		t.Fatalf("read after three garbage connections: %v", err)
	}
	if !bytes.Equal(buf, make([]byte, 4096)) {
		t.Fatal("read data is not the good server's zeroes")
	}
	if s := r.Stats(); s.Retried < 3 || s.Reconnects < 3 {
		t.Fatalf("retried %d, reconnects %d; want ≥3 each", s.Retried, s.Reconnects)
	}

	always := make([]string, 1000)
	for i := range always {
		always[i] = []string{"magic", "cookie", "length"}[i%3]
	}
	g = newGarbage(t, always...)
	o = tcp(g.l.Addr().String())
	o.Size, o.Timeout = 1<<20, 300*time.Millisecond
	r = newRemote(t, o)
	if err := doBio(t, r, bioset.OpWrite, 0, pattern(1, 4096), 4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write to a remote that only sends garbage: %v, want EIO", err)
	}
}

func TestParseURI(t *testing.T) {
	for _, c := range []struct {
		uri, network, addr, export, err string
	}{
		{uri: "nbd://127.0.0.1:10810/disk0", network: "tcp", addr: "127.0.0.1:10810", export: "disk0"},
		{uri: "nbd://storage-1/disk0", network: "tcp", addr: "storage-1:10809", export: "disk0"},
		{uri: "nbd://[::1]/", network: "tcp", addr: "[::1]:10809", export: ""},
		{uri: "nbd+unix:///disk0?socket=/run/a.sock", network: "unix", addr: "/run/a.sock", export: "disk0"},
		{uri: "nbd+unix:///disk0", err: "socket=PATH"},
		{uri: "nbds://h/x", network: "tcp", addr: "h:10809", export: "x"},
		{uri: "nbds+unix:///d?socket=/s", network: "unix", addr: "/s", export: "d"},
		{uri: "nbds+unix:///d", err: "nbds+unix:///EXPORT?socket=PATH"},
		{uri: "nbds:///x", err: "want nbds://HOST"},
		{uri: "http://h/x", err: "not nbd"},
		{uri: "nbd:///x", err: "no host"},
	} {
		o, err := ParseURI(c.uri)
		switch {
		case c.err != "":
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(c.err)) {
				t.Errorf("%s: %v, want an error with %q", c.uri, err, c.err)
			}
		case err != nil:
			t.Errorf("%s: %v", c.uri, err)
		case o.Network != c.network || o.Address != c.addr || o.Export != c.export || o.Secure != strings.HasPrefix(c.uri, "nbds"):
			t.Errorf("%s: %+v", c.uri, o)
		}
	}
}

// TestSubmitNeverBlocks: with a remote that reads nothing, so that the
// sender soon blocks writing to a full socket, Submit still returns at
// once for every bio (docs/DESIGN.md rule 8); at most maxInFlight are
// handed to the connection, and the rest wait queued. Once the remote reads
// again, every bio completes.
func TestSubmitNeverBlocks(t *testing.T) {
	l := listen(t)
	serve(t, l, 64<<20)
	p := newProxy(t, l.Addr().String())
	r := newRemote(t, tcp(p.addr()))
	p.held.Store(true)
	const n, bs = 1000, 64 << 10
	start := time.Now()
	wait := submitMany(t, r, n, func(i int, b *bioset.Bio) {
		b.Init(bioset.OpWrite, uint64(i%1000)*bs, bs, pattern(i, bs), nil)
	})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("submitting %d writes to a remote that reads nothing took %v", n, took)
	}
	// The sender is blocked in a writev by now, or soon: what it has
	// taken is at most the window, the rest is queued.
	time.Sleep(100 * time.Millisecond)
	if st := r.State().Connections[0]; st.Sent > maxInFlight || st.Sent+st.Queued != n {
		t.Errorf("sent %d, queued %d; want at most %d sent, %d in all", st.Sent, st.Queued, maxInFlight, n)
	}
	p.held.Store(false)
	for i, err := range wait() {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
}
