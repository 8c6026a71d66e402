package nbd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/nbd/wire"
)

// nullDev is a large device that stores nothing: every op succeeds, reads
// return zeroes, everything is a hole.
type nullDev struct{ size uint64 }

func (d nullDev) Size() uint64      { return d.size }
func (d nullDev) Caps() bioset.Caps { return allCaps }
func (d nullDev) Submit(_ *bioset.Submitter, b *bioset.Bio) {
	switch b.Op {
	case bioset.OpRead:
		clear(b.Buf)
	case bioset.OpBlockStatus:
		b.Extents[0] = bioset.Extent{Offset: b.TopOffset, Length: b.Length, Flags: bioset.ExtentHole | bioset.ExtentZero}
	}
	b.End(nil)
}

// badRequestServer serves exports for the bad-request cases: "full" with
// every cap, "bare" with none, "ro" read-only, "big" a 8 GiB null device.
func badRequestServer(t *testing.T) (*testServer, *memDev) {
	dev := newMemDev(1<<20, allCaps)
	ts := startServer(t, Options{Exports: []ExportConfig{
		{Name: "full", Device: dev, Default: true},
		{Name: "bare", Device: newMemDev(1<<20, 0)},
		{Name: "ro", Device: newMemDev(1<<20, allCaps), ReadOnly: true},
		{Name: "big", Device: nullDev{8 << 30}},
	},
		// Its tests open many connections from this one uid, and are not
		// about the per-client cap.
		MaxConnectionsPerClient: DefaultMaxConnections,
	}, "unix")
	return ts, dev
}

// TestBadRequests sends every kind of bad request on a raw connection and
// checks the error, that the connection still works and that data written
// before is intact.
func TestBadRequests(t *testing.T) {
	const size = 1 << 20
	const maxU32 = 1<<32 - 1
	ts, _ := badRequestServer(t)
	pattern := bytes.Repeat([]byte("stackd!"), 4096/7+1)[:4096]
	payload := make([]byte, 64<<10)

	cases := []struct {
		name    string
		export  string
		cmd     uint16
		flags   uint16
		off     uint64
		length  uint32
		payload []byte
		want    uint32
	}{
		{"write past end", "full", wire.CmdWrite, 0, size - 512, 1024, payload[:1024], wire.ENOSPC},
		{"write beyond end", "full", wire.CmdWrite, 0, size + 4096, 512, payload[:512], wire.ENOSPC},
		{"write offset overflow", "full", wire.CmdWrite, 0, 1<<64 - 256, 512, payload[:512], wire.ENOSPC},
		{"write zeroes past end", "full", wire.CmdWriteZeroes, 0, size - 512, 1024, nil, wire.ENOSPC},
		{"read past end", "full", wire.CmdRead, 0, size - 512, 1024, nil, wire.EINVAL},
		{"trim past end", "full", wire.CmdTrim, 0, size, 1, nil, wire.EINVAL},
		{"cache past end", "full", wire.CmdCache, 0, size - 1, 2, nil, wire.EINVAL},
		{"trim 4 GiB past end", "full", wire.CmdTrim, 0, 0, maxU32, nil, wire.EINVAL},
		{"unknown command", "full", 99, 0, 0, 512, nil, wire.EINVAL},
		{"resize (unsupported)", "full", 8, 0, 0, 0, nil, wire.EINVAL},
		{"unknown flag", "full", wire.CmdRead, 1 << 9, 0, 512, nil, wire.EINVAL},
		{"no_hole on write", "full", wire.CmdWrite, wire.CmdFlagNoHole, 0, 4096, payload[:4096], wire.EINVAL},
		{"req_one on write, 64 KiB payload", "full", wire.CmdWrite, wire.CmdFlagReqOne, 0, 64 << 10, payload, wire.EINVAL},
		{"req_one on read", "full", wire.CmdRead, wire.CmdFlagReqOne, 0, 512, nil, wire.EINVAL},
		{"df without structured replies", "full", wire.CmdRead, wire.CmdFlagDF, 0, 512, nil, wire.EINVAL},
		{"read longer than 32 MiB", "big", wire.CmdRead, 0, 0, MaxPayload + 1, nil, wire.EINVAL},
		{"block status without meta context", "full", wire.CmdBlockStatus, 0, 0, 512, nil, wire.EINVAL},
		{"flush without cap", "bare", wire.CmdFlush, 0, 0, 0, nil, wire.EINVAL},
		{"trim without cap", "bare", wire.CmdTrim, 0, 0, 512, nil, wire.EINVAL},
		{"write zeroes without cap", "bare", wire.CmdWriteZeroes, 0, 0, 512, nil, wire.EINVAL},
		{"cache without cap", "bare", wire.CmdCache, 0, 0, 512, nil, wire.EINVAL},
		{"fua not advertised", "bare", wire.CmdWrite, wire.CmdFlagFUA, 0, 512, payload[:512], wire.EINVAL},
		{"fast zero not advertised", "bare", wire.CmdWriteZeroes, wire.CmdFlagFastZero, 0, 512, nil, wire.EINVAL},
		{"write on read-only", "ro", wire.CmdWrite, 0, 0, 4096, payload[:4096], wire.EPERM},
		{"trim on read-only", "ro", wire.CmdTrim, 0, 0, 4096, nil, wire.EPERM},
		{"write zeroes on read-only", "ro", wire.CmdWriteZeroes, 0, 0, 4096, nil, wire.EPERM},
		{"write past end on read-only", "ro", wire.CmdWrite, 0, size, 512, payload[:512], wire.EPERM},
	}
	conns := map[string]*rawConn{}
	for _, name := range []string{"full", "bare", "ro", "big"} {
		r := dialRaw(t, ts)
		r.start(name, false, false)
		conns[name] = r
	}
	// Data that must survive: written on the connection that will see
	// every bad request against "full".
	full := conns["full"]
	full.request(wire.CmdWrite, 0, 1, 8192, uint32(len(pattern)), pattern)
	if code, _, _ := full.simple(0); code != 0 {
		t.Fatalf("setup write: error %d", code)
	}
	for i, tc := range cases {
		r := conns[tc.export]
		cookie := uint64(1000 + i)
		r.request(tc.cmd, tc.flags, cookie, tc.off, tc.length, tc.payload)
		code, gotCookie, _ := r.simple(0)
		if gotCookie != cookie || code != tc.want {
			t.Errorf("%s: reply error %d cookie %d, want error %d cookie %d", tc.name, code, gotCookie, tc.want, cookie)
		}
		// The connection lives on, framing intact.
		r.request(wire.CmdRead, 0, cookie+1<<32, 8192, 4096, nil)
		code, gotCookie, data := r.simple(4096)
		if code != 0 || gotCookie != cookie+1<<32 {
			t.Fatalf("%s: read after: error %d cookie %d", tc.name, code, gotCookie)
		}
		if tc.export == "full" && !bytes.Equal(data, pattern) {
			t.Fatalf("%s: data written before was changed", tc.name)
		}
	}

	// No-payload commands up to 4 GiB - 1 are legal.
	big := conns["big"]
	for i, cmd := range []uint16{wire.CmdTrim, wire.CmdWriteZeroes, wire.CmdCache} {
		big.request(cmd, 0, uint64(i), 4<<30, maxU32, nil)
		if code, _, _ := big.simple(0); code != 0 {
			t.Errorf("command %d of 4 GiB - 1: error %d", cmd, code)
		}
	}
	// A READ of exactly 32 MiB is legal.
	big.request(wire.CmdRead, 0, 7, 0, MaxPayload, nil)
	if code, _, data := big.simple(MaxPayload); code != 0 || len(data) != MaxPayload {
		t.Errorf("read of 32 MiB: error %d", code)
	}
}

// TestStructuredReplies checks the chunks the server sends on a raw
// connection with structured replies and base:allocation.
func TestStructuredReplies(t *testing.T) {
	ts, _ := badRequestServer(t)
	r := dialRaw(t, ts)
	_, flags := r.start("full", true, true)
	if flags&wire.FlagSendDF == 0 {
		t.Fatalf("flags %#x lack SEND_DF", flags)
	}
	// A success without data gets a simple reply, which the spec allows
	// for any command but READ; a READ, even of nothing, gets a chunk.
	r.request(wire.CmdWrite, wire.CmdFlagFUA, 1, 4096, 5, []byte("hello"))
	if code, cookie, _ := r.simple(0); code != 0 || cookie != 1 {
		t.Fatalf("write reply: code %d cookie %d", code, cookie)
	}
	r.request(wire.CmdRead, wire.CmdFlagDF, 2, 4096, 5, nil)
	f, typ, cookie, p := r.chunk()
	if f != wire.ReplyFlagDone || typ != wire.ReplyTypeOffsetData || cookie != 2 || be.Uint64(p) != 4096 || string(p[8:]) != "hello" {
		t.Fatalf("read reply: flags %d type %d cookie %d payload %q", f, typ, cookie, p)
	}
	r.request(wire.CmdRead, 0, 3, 0, 0, nil)
	if f, typ, _, _ := r.chunk(); f != wire.ReplyFlagDone || typ != wire.ReplyTypeNone {
		t.Fatalf("empty read reply: flags %d type %d", f, typ)
	}
	r.request(wire.CmdRead, 0, 4, 1<<20, 1, nil)
	f, typ, cookie, p = r.chunk()
	if f != wire.ReplyFlagDone || typ != wire.ReplyTypeError || cookie != 4 || be.Uint32(p) != wire.EINVAL ||
		int(be.Uint16(p[4:])) != len(p)-6 || len(p) == 6 {
		t.Fatalf("read error reply: flags %d type %#x cookie %d payload %q", f, typ, cookie, p)
	}
	r.request(wire.CmdBlockStatus, wire.CmdFlagReqOne, 5, 0, 1<<20, nil)
	f, typ, cookie, p = r.chunk()
	if f != wire.ReplyFlagDone || typ != wire.ReplyTypeBlockStatus || cookie != 5 || len(p) != 12 ||
		be.Uint32(p) != metaBaseAllocationID || be.Uint32(p[4:]) != 4096 || be.Uint32(p[8:]) != wire.StateHole|wire.StateZero {
		t.Fatalf("block status reply: flags %d type %d cookie %d payload % x", f, typ, cookie, p)
	}
	r.request(wire.CmdBlockStatus, 0, 6, 0, 0, nil)
	if _, typ, _, p := r.chunk(); typ != wire.ReplyTypeError || be.Uint32(p) != wire.EINVAL {
		t.Fatalf("empty block status: type %#x", typ)
	}
	r.request(wire.CmdBlockStatus, 0, 7, 1<<20-512, 1024, nil)
	if _, typ, _, p := r.chunk(); typ != wire.ReplyTypeError || be.Uint32(p) != wire.EINVAL {
		t.Fatalf("block status past the end: type %#x", typ)
	}

	// Meta context selected for another export does not carry over.
	r2 := dialRaw(t, ts)
	r2.greet()
	r2.clientFlags(wire.FlagCFixedNewstyle | wire.FlagCNoZeroes)
	r2.option(wire.OptStructuredReply, nil)
	r2.reply(wire.OptStructuredReply)
	r2.option(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, "ro", wire.MetaBaseAllocation))
	r2.reply(wire.OptSetMetaContext)
	r2.reply(wire.OptSetMetaContext)
	r2.option(wire.OptGo, wire.AppendInfoRequest(nil, "full"))
	for typ, _ := r2.reply(wire.OptGo); typ != wire.RepAck; typ, _ = r2.reply(wire.OptGo) {
	}
	r2.request(wire.CmdBlockStatus, 0, 1, 0, 512, nil)
	if _, typ, _, p := r2.chunk(); typ != wire.ReplyTypeError || be.Uint32(p) != wire.EINVAL {
		t.Fatalf("block status with a context for another export: type %#x", typ)
	}
}

func TestBadMagicClosesOnlyThatConnection(t *testing.T) {
	ts, _ := badRequestServer(t)
	a, b := dialRaw(t, ts), dialRaw(t, ts)
	a.start("full", false, false)
	b.start("full", false, false)
	b.request(wire.CmdWrite, 0, 1, 0, 3, []byte("abc"))
	b.simple(0)
	a.write(bytes.Repeat([]byte{0xde, 0xad}, wire.RequestHeaderLen/2))
	a.expectClosed()
	b.request(wire.CmdRead, 0, 2, 0, 3, nil)
	if code, _, data := b.simple(3); code != 0 || string(data) != "abc" {
		t.Fatalf("other connection: error %d data %q", code, data)
	}
}

func TestTruncatedRequests(t *testing.T) {
	ts, _ := badRequestServer(t)

	// A header cut short.
	r := dialRaw(t, ts)
	r.start("full", false, false)
	r.write(be.AppendUint32(nil, wire.MagicRequest))
	r.write([]byte{0, 0, 0, 1, 2, 3})
	r.nc.(*net.UnixConn).CloseWrite()
	r.expectClosed()

	// A WRITE that promises 32 MiB and brings 1000 bytes.
	r = dialRaw(t, ts)
	r.start("full", false, false)
	r.request(wire.CmdWrite, 0, 1, 0, MaxPayload, make([]byte, 1000))
	r.nc.Close()

	// A WRITE longer than the maximum payload cannot be framed.
	r = dialRaw(t, ts)
	r.start("big", false, false)
	r.request(wire.CmdWrite, 0, 1, 0, MaxPayload+1, nil)
	r.expectClosed()

	waitFor(t, "connections to end", func() bool { return ts.srv.Stats().ConnsOpen == 0 })
	if st := ts.srv.Stats(); st.PayloadInUse != 0 {
		t.Fatalf("%d bytes of payload budget still in use", st.PayloadInUse)
	}
	// And the server still serves.
	r = dialRaw(t, ts)
	r.start("full", false, false)
	r.request(wire.CmdFlush, 0, 9, 0, 0, nil)
	if code, cookie, _ := r.simple(0); code != 0 || cookie != 9 {
		t.Fatalf("flush after: error %d cookie %d", code, cookie)
	}
}

// TestDiscWaitsForInFlight: NBD_CMD_DISC with requests in flight gets
// their replies before the connection closes.
// gatedTransmission is a raw connection in transmission on a 1 MiB
// memory export whose device holds every bio until it is opened.
func gatedTransmission(t *testing.T) (*memDev, *testServer, *rawConn) {
	t.Helper()
	dev := newMemDev(1<<20, allCaps)
	ts := startServer(t, oneExport(dev), "unix")
	r := dialRaw(t, ts)
	r.start("mem", false, false)
	dev.gate()
	return dev, ts, r
}

func TestDiscWaitsForInFlight(t *testing.T) {
	dev, _, r := gatedTransmission(t)
	for i := range 5 {
		r.request(wire.CmdWrite, 0, uint64(i), uint64(i)*4096, 4096, make([]byte, 4096))
	}
	r.request(wire.CmdDisc, 0, 99, 0, 0, nil)
	if !dev.waitHeld(5, ioTimeout) {
		t.Fatal("writes did not reach the device")
	}
	dev.open()
	seen := map[uint64]bool{}
	for range 5 {
		code, cookie, _ := r.simple(0)
		if code != 0 {
			t.Fatalf("write %d: error %d", cookie, code)
		}
		seen[cookie] = true
	}
	if len(seen) != 5 {
		t.Fatalf("replies for %v", seen)
	}
	r.expectClosed()
}

// TestBudgetBackpressure runs many concurrent 1 MiB writes from several
// clients through a budget barely larger than one maximum payload.
func TestBudgetBackpressure(t *testing.T) {
	const (
		clients = 4
		perConn = 32
		budget  = MaxPayload + 4<<20
	)
	dev := newMemDev(16<<20, allCaps)
	dev.maxDelay = 2 * time.Millisecond
	o := oneExport(dev)
	o.PayloadBudget = budget
	ts := startServer(t, o, "tcp")
	ctx := tctx(t)
	data := bytes.Repeat([]byte{0x5a}, 1<<20)

	// Hold the first bios in the device so that the budget certainly runs
	// out, then let everything flow with random delays.
	dev.gate()
	var wg sync.WaitGroup
	errs := make(chan error, clients*perConn+1)
	for i := range clients {
		c := ts.dial(t, client.Options{})
		for j := range perConn {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- c.Write(ctx, uint64((i*perConn+j)%16)<<20, data, 0)
			}()
		}
		if i == 0 {
			// The largest request still runs under the smallest budget.
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, MaxPayload)
				errs <- c.Read(ctx, 0, buf[:16<<20])
			}()
		}
	}
	waitFor(t, "readers to wait for budget", func() bool {
		st := ts.srv.Stats()
		return st.PayloadWaits > 0 && st.PayloadInUse > budget-MaxPayload
	})
	if st := ts.srv.Stats(); st.PayloadInUse > budget {
		t.Fatalf("%d bytes in use, budget %d", st.PayloadInUse, budget)
	}
	dev.open()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := ts.srv.Stats()
	if st.PayloadPeak > budget || st.PayloadCapacity != budget {
		t.Fatalf("peak %d, capacity %d, budget %d", st.PayloadPeak, st.PayloadCapacity, budget)
	}
	waitFor(t, "payload budget to drain", func() bool { return ts.srv.Stats().PayloadInUse == 0 })
}

func TestShutdownCompletesInFlight(t *testing.T) {
	const n = 50
	dev := newMemDev(n*4096, allCaps)
	ts := startServer(t, oneExport(dev), "unix")
	c := ts.dial(t, client.Options{})
	dev.gate()
	ctx := tctx(t)
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- c.Write(ctx, uint64(i)*4096, bytes.Repeat([]byte{byte(i)}, 4096), 0) }()
	}
	if !dev.waitHeld(n, ioTimeout) {
		t.Fatalf("%d of %d writes reached the device", dev.heldCount(), n)
	}
	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with requests in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := net.DialTimeout(ts.network, ts.addr, ioTimeout); err == nil {
		t.Fatal("the listener still accepts after Shutdown")
	}
	dev.open()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("in-flight write: %v", err)
		}
	}
	got := dev.snapshot()
	for i := range n {
		if got[i*4096] != byte(i) {
			t.Fatalf("write %d lost", i)
		}
	}
	select {
	case err := <-ts.serve:
		ts.serve <- err // for the cleanup's check
	case <-time.After(ioTimeout):
		t.Fatal("Serve did not return")
	}
}

func TestShutdownDeadline(t *testing.T) {
	dev := newMemDev(1<<20, allCaps)
	ts := startServer(t, oneExport(dev), "unix")
	c := ts.dial(t, client.Options{})
	dev.gate()
	errc := make(chan error, 1)
	go func() { errc <- c.Write(tctx(t), 0, make([]byte, 4096), 0) }()
	if !dev.waitHeld(1, ioTimeout) {
		t.Fatal("write did not reach the device")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want deadline exceeded", err)
	}
	if err := <-errc; err == nil {
		t.Fatal("write succeeded on a connection closed at once")
	}
	// The bio is still in the device: its buffer must stay until it ends.
	if st := ts.srv.Stats(); st.ConnsOpen != 1 || st.PayloadInUse == 0 {
		t.Fatalf("connection released before its bio ended: %+v", st)
	}
	dev.open()
	waitFor(t, "connection to end", func() bool { return ts.srv.Stats().ConnsOpen == 0 })
	if st := ts.srv.Stats(); st.PayloadInUse != 0 {
		t.Fatalf("%d bytes of budget still in use", st.PayloadInUse)
	}
}

func TestMaxConnections(t *testing.T) {
	o := oneExport(newMemDev(4096, 0))
	o.MaxConnections = 2
	o.MaxConnectionsPerClient = 2 // one client here: the test is about the server's cap
	ts := startServer(t, o, "tcp")
	a, b := dialRaw(t, ts), dialRaw(t, ts)
	a.start("mem", false, false)
	b.greet()
	c := dialRaw(t, ts)
	c.expectClosed()
	if st := ts.srv.Stats(); st.ConnsRejected != 1 || st.ConnsOpen != 2 {
		t.Fatalf("stats %+v", st)
	}
	a.request(wire.CmdRead, 0, 1, 0, 4096, nil)
	if code, _, _ := a.simple(4096); code != 0 {
		t.Fatalf("read: error %d", code)
	}
}

func TestObserverAndLimits(t *testing.T) {
	obs := &countingObserver{}
	dev := newMemDev(1<<20, allCaps)
	o := oneExport(dev)
	o.Observer = obs
	o.HandshakeTimeout = 200 * time.Millisecond
	ts := startServer(t, o, "unix")

	c := ts.dial(t, client.Options{})
	ctx := tctx(t)
	if err := c.Write(ctx, 0, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Read(ctx, 0, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	if err := c.Read(ctx, 1<<20, make([]byte, 512)); !errors.Is(err, syscall.EINVAL) {
		t.Fatal(err)
	}
	c.Close()

	// A client that says nothing times out.
	r := dialRaw(t, ts)
	start := time.Now()
	r.greet()
	r.expectClosed()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("handshake timeout took %v", d)
	}
	waitFor(t, "connections to end", func() bool { return ts.srv.Stats().ConnsOpen == 0 })
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.opened != 2 || obs.closed != 2 || obs.started != 2 || obs.done != 2 || obs.bad != 1 ||
		obs.doneBytes != 4096+512 || obs.handshakeFailed[reasonTimeout] != 1 {
		t.Fatalf("observer saw %+v", obs)
	}
}

// TestHugeOptionLength: an option claiming 4 GiB of data must not make the
// server allocate it; one slightly over the limit is answered TOO_BIG.
func TestHugeOptionLength(t *testing.T) {
	ts, _ := badRequestServer(t)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r := dialRaw(t, ts)
	r.greet()
	r.clientFlags(wire.FlagCFixedNewstyle)
	r.write(append(optionHeader(wire.OptGo, 1<<32-1), make([]byte, 100)...))
	r.expectClosed()
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 64<<20 {
		t.Fatalf("the server allocated %d bytes for a 4 GiB option", d)
	}

	r = dialRaw(t, ts)
	r.greet()
	r.clientFlags(wire.FlagCFixedNewstyle | wire.FlagCNoZeroes)
	r.option(1234, make([]byte, maxOptionLen+1))
	if typ, _ := r.reply(1234); typ != wire.RepErrTooBig {
		t.Fatalf("oversized option: reply %#x", typ)
	}
	r.option(wire.OptGo, wire.AppendInfoRequest(nil, ""))
	for typ, _ := r.reply(wire.OptGo); typ != wire.RepAck; typ, _ = r.reply(wire.OptGo) {
		if typ != wire.RepInfo {
			t.Fatalf("GO: reply %#x", typ)
		}
	}
}

// TestDroppedHandshakes opens 200 connections and drops each at a different
// point of the handshake; the server must end all of them and still serve.
func TestDroppedHandshakes(t *testing.T) {
	ts, _ := badRequestServer(t)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc, err := net.DialTimeout(ts.network, ts.addr, ioTimeout)
			if err != nil {
				t.Error(err)
				return
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(ioTimeout))
			if i%5 == 0 {
				return
			}
			io.ReadFull(nc, make([]byte, wire.GreetingLen))
			switch i % 5 {
			case 2:
				nc.Write([]byte{0, 0})
			case 3:
				nc.Write([]byte{0, 0, 0, 3, 'I', 'H', 'A'})
			case 4:
				b := be.AppendUint32(nil, wire.FlagCFixedNewstyle)
				b = append(b, optionHeader(wire.OptGo, 100)...)
				nc.Write(append(b, "abc"...))
			}
		}()
	}
	wg.Wait()
	waitFor(t, "dropped connections to end", func() bool { return ts.srv.Stats().ConnsOpen == 0 })
	if st := ts.srv.Stats(); st.ConnsAccepted != 200 {
		t.Fatalf("accepted %d", st.ConnsAccepted)
	}
	c := ts.dial(t, client.Options{})
	if err := c.Flush(tctx(t)); err != nil {
		t.Fatal(err)
	}
}

// TestOptionHaggling covers the options the server answers during the
// handshake, on one raw connection.
func TestOptionHaggling(t *testing.T) {
	o := oneExport(newMemDev(1<<20, allCaps))
	o.Exports = append(o.Exports, ExportConfig{Name: "other", Description: "second", Device: newMemDev(8192, 0), ReadOnly: true})
	ts := startServer(t, o, "unix")
	r := dialRaw(t, ts)
	if hf := r.greet(); hf != wire.FlagFixedNewstyle|wire.FlagNoZeroes {
		t.Fatalf("handshake flags %#x", hf)
	}
	r.clientFlags(wire.FlagCFixedNewstyle | wire.FlagCNoZeroes)

	expect := func(opt uint32, want uint32) []byte {
		t.Helper()
		typ, data := r.reply(opt)
		if typ != want {
			t.Fatalf("option %d: reply %#x (%q), want %#x", opt, typ, data, want)
		}
		return data
	}

	r.option(wire.OptList, nil)
	for _, want := range []string{"mem", "other"} {
		data := expect(wire.OptList, wire.RepServer)
		if name, _, _ := wire.CutString(data); name != want {
			t.Fatalf("LIST: %q, want %q", name, want)
		}
	}
	expect(wire.OptList, wire.RepAck)
	r.option(wire.OptList, []byte("x"))
	expect(wire.OptList, wire.RepErrInvalid)

	r.option(42, []byte("whatever"))
	expect(42, wire.RepErrUnsup)
	r.option(wire.OptStartTLS, nil)
	expect(wire.OptStartTLS, wire.RepErrUnsup)

	// INFO with every information request, one unknown, one repeated.
	r.option(wire.OptInfo, wire.AppendInfoRequest(nil, "other", wire.InfoName, wire.InfoDescription, wire.InfoBlockSize, 77, wire.InfoName))
	infos := map[uint16][]byte{}
	for {
		typ, data := r.reply(wire.OptInfo)
		if typ == wire.RepAck {
			break
		}
		if typ != wire.RepInfo {
			t.Fatalf("INFO: reply %#x", typ)
		}
		it := be.Uint16(data)
		if infos[it] != nil {
			t.Fatalf("INFO: type %d sent twice", it)
		}
		infos[it] = data[2:]
	}
	if e := infos[wire.InfoExport]; len(e) != 10 || be.Uint64(e) != 8192 || be.Uint16(e[8:])&wire.FlagReadOnly == 0 {
		t.Fatalf("INFO_EXPORT % x", e)
	}
	if string(infos[wire.InfoName]) != "other" || string(infos[wire.InfoDescription]) != "second" || len(infos) != 4 {
		t.Fatalf("INFO: %v", infos)
	}
	if bs := infos[wire.InfoBlockSize]; be.Uint32(bs) != 1 || be.Uint32(bs[4:]) != 4096 || be.Uint32(bs[8:]) != MaxPayload {
		t.Fatalf("INFO_BLOCK_SIZE % x", bs)
	}
	// The canonical name of the default export.
	r.option(wire.OptInfo, wire.AppendInfoRequest(nil, "", wire.InfoName))
	expect(wire.OptInfo, wire.RepInfo)
	if name := expect(wire.OptInfo, wire.RepInfo); string(name[2:]) != "mem" {
		t.Fatalf("canonical name %q", name)
	}
	expect(wire.OptInfo, wire.RepAck)

	r.option(wire.OptInfo, wire.AppendInfoRequest(nil, "nope"))
	expect(wire.OptInfo, wire.RepErrUnknown)
	r.option(wire.OptGo, []byte{0, 0, 0, 9, 'x'})
	expect(wire.OptGo, wire.RepErrInvalid)
	r.option(wire.OptStructuredReply, []byte("x"))
	expect(wire.OptStructuredReply, wire.RepErrInvalid)
	r.option(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, "mem", wire.MetaBaseAllocation))
	expect(wire.OptSetMetaContext, wire.RepErrInvalid) // structured replies first

	r.option(wire.OptStructuredReply, nil)
	expect(wire.OptStructuredReply, wire.RepAck)
	for _, q := range [][]string{nil, {"base:"}, {wire.MetaBaseAllocation, "x-other:thing"}} {
		r.option(wire.OptListMetaContext, wire.AppendMetaContextRequest(nil, "mem", q...))
		data := expect(wire.OptListMetaContext, wire.RepMetaContext)
		if be.Uint32(data) != 0 || string(data[4:]) != wire.MetaBaseAllocation {
			t.Fatalf("LIST_META_CONTEXT %q: % x", q, data)
		}
		expect(wire.OptListMetaContext, wire.RepAck)
	}
	r.option(wire.OptListMetaContext, wire.AppendMetaContextRequest(nil, "mem", "x-other:thing"))
	expect(wire.OptListMetaContext, wire.RepAck)
	r.option(wire.OptListMetaContext, wire.AppendMetaContextRequest(nil, "mem", "base:allocation")[:10])
	expect(wire.OptListMetaContext, wire.RepErrInvalid)
	r.option(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, "nope", wire.MetaBaseAllocation))
	expect(wire.OptSetMetaContext, wire.RepErrUnknown)
	r.option(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, "mem", "base:", "qemu:dirty-bitmap:x"))
	expect(wire.OptSetMetaContext, wire.RepAck) // nothing selected
	r.option(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, "mem", wire.MetaBaseAllocation))
	if data := expect(wire.OptSetMetaContext, wire.RepMetaContext); be.Uint32(data) != metaBaseAllocationID {
		t.Fatalf("SET_META_CONTEXT id % x", data)
	}
	expect(wire.OptSetMetaContext, wire.RepAck)

	// GO with no information requests, as the kernel's nbd-client sends it.
	r.option(wire.OptGo, wire.AppendInfoRequest(nil, "mem"))
	e := expect(wire.OptGo, wire.RepInfo)
	if be.Uint16(e) != wire.InfoExport || be.Uint64(e[2:]) != 1<<20 {
		t.Fatalf("GO: % x", e)
	}
	expect(wire.OptGo, wire.RepAck)
	r.request(wire.CmdBlockStatus, 0, 1, 0, 4096, nil)
	if _, typ, _, _ := r.chunk(); typ != wire.ReplyTypeBlockStatus {
		t.Fatalf("block status after GO: type %#x", typ)
	}
}

func TestExportName(t *testing.T) {
	dev := newMemDev(1<<20, allCaps)
	ts := startServer(t, oneExport(dev), "unix")
	for _, noZeroes := range []bool{false, true} {
		r := dialRaw(t, ts)
		r.greet()
		f := uint32(wire.FlagCFixedNewstyle)
		if noZeroes {
			f |= wire.FlagCNoZeroes
		}
		r.clientFlags(f)
		r.option(wire.OptExportName, []byte("mem"))
		b := r.read(10)
		if be.Uint64(b) != 1<<20 || be.Uint16(b[8:])&wire.FlagHasFlags == 0 {
			t.Fatalf("EXPORT_NAME reply % x", b)
		}
		if !noZeroes && !bytes.Equal(r.read(wire.ExportNameZeroes), make([]byte, wire.ExportNameZeroes)) {
			t.Fatal("zeroes expected")
		}
		// The next bytes are a reply, not padding.
		r.request(wire.CmdWrite, 0, 5, 0, 2, []byte("ok"))
		if code, cookie, _ := r.simple(0); code != 0 || cookie != 5 {
			t.Fatalf("noZeroes=%v: write: error %d cookie %d", noZeroes, code, cookie)
		}
	}

	// Unknown export: no way to refuse but to hang up.
	r := dialRaw(t, ts)
	r.greet()
	r.clientFlags(wire.FlagCFixedNewstyle)
	r.option(wire.OptExportName, []byte("nope"))
	r.expectClosed()

	// Unknown client flags.
	r = dialRaw(t, ts)
	r.greet()
	r.clientFlags(1 << 7)
	r.expectClosed()

	// ABORT is acknowledged.
	r = dialRaw(t, ts)
	r.greet()
	r.clientFlags(wire.FlagCFixedNewstyle)
	r.option(wire.OptAbort, nil)
	if typ, _ := r.reply(wire.OptAbort); typ != wire.RepAck {
		t.Fatalf("ABORT: reply %#x", typ)
	}
	r.expectClosed()

	// Bad option magic.
	r = dialRaw(t, ts)
	r.greet()
	r.clientFlags(wire.FlagCFixedNewstyle)
	r.write(make([]byte, wire.OptionHeaderLen))
	r.expectClosed()
}

func TestNewServerValidation(t *testing.T) {
	dev := newMemDev(4096, 0)
	for name, o := range map[string]Options{
		"no exports":     {},
		"no name":        {Exports: []ExportConfig{{Device: dev}}},
		"no device":      {Exports: []ExportConfig{{Name: "a"}}},
		"duplicate":      {Exports: []ExportConfig{{Name: "a", Device: dev}, {Name: "a", Device: dev}}},
		"two defaults":   {Exports: []ExportConfig{{Name: "a", Device: dev, Default: true}, {Name: "b", Device: dev, Default: true}}},
		"few in flight":  {Exports: []ExportConfig{{Name: "a", Device: dev}}, MaxInFlight: 64},
		"small budget":   {Exports: []ExportConfig{{Name: "a", Device: dev}}, PayloadBudget: 1 << 20},
		"negative conns": {Exports: []ExportConfig{{Name: "a", Device: dev}}, MaxConnections: -1},
		"long name":      {Exports: []ExportConfig{{Name: string(make([]byte, 5000)), Device: dev}}},
	} {
		if _, err := NewServer(o); err == nil {
			t.Errorf("%s: NewServer accepted it", name)
		}
	}
}

type syncBuffer = stackdtest.SyncBuffer

// TestLogging: one line per connection opened and closed, one per failed
// handshake, none per request.
func TestLogging(t *testing.T) {
	var buf syncBuffer
	o := oneExport(newMemDev(1<<20, allCaps))
	o.Logger = slog.New(slog.NewTextHandler(&buf, nil))
	ts := startServer(t, o, "unix")
	c := ts.dial(t, client.Options{})
	ctx := tctx(t)
	for range 10 {
		if err := c.Write(ctx, 0, make([]byte, 1000), 0); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	r := dialRaw(t, ts)
	r.greet()
	r.clientFlags(wire.FlagCFixedNewstyle)
	r.option(wire.OptExportName, []byte("nope"))
	r.expectClosed()
	waitFor(t, "connections to end", func() bool { return ts.srv.Stats().ConnsOpen == 0 })

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d log lines:\n%s", len(lines), buf.String())
	}
	for i, want := range []string{
		"connection opened",
		"connection closed.*reason=disconnect requests=10 bytes_in=10000 bytes_out=0",
		"handshake failed.*reason=unknown_export",
	} {
		if !regexp.MustCompile(want).MatchString(lines[i]) {
			t.Errorf("line %d: %s\nwant match for %q", i, lines[i], want)
		}
	}
}

// TestTinySegments writes a whole handshake and a request a byte at a
// time, as the kernel's client writes options in small segments.
func TestTinySegments(t *testing.T) {
	dev := newMemDev(1<<20, allCaps)
	ts := startServer(t, oneExport(dev), "tcp")
	r := dialRaw(t, ts)
	r.greet()
	for _, b := range cat(handshakeBytes(), requestBytes(wire.CmdWrite, 0, 7, 0, 3, []byte("xyz"))) {
		r.write([]byte{b})
	}
	for typ, _ := r.reply(wire.OptGo); typ != wire.RepAck; typ, _ = r.reply(wire.OptGo) {
	}
	if code, cookie, _ := r.simple(0); code != 0 || cookie != 7 {
		t.Fatalf("write: error %d cookie %d", code, cookie)
	}
}

// TestOptionFlood: a client that never stops haggling is cut off.
func TestOptionFlood(t *testing.T) {
	ts := startServer(t, oneExport(newMemDev(4096, 0)), "unix")
	r := dialRaw(t, ts)
	r.greet()
	var b []byte
	b = be.AppendUint32(b, wire.FlagCFixedNewstyle)
	for range maxHandshakeOptions + 1 {
		b = append(b, optionBytes(1000, nil)...)
	}
	go r.nc.Write(b)
	for range maxHandshakeOptions {
		if typ, _ := r.reply(1000); typ != wire.RepErrUnsup {
			t.Fatalf("reply %#x", typ)
		}
	}
	r.expectClosed()
}

// TestShutdownDrainAnswersESHUTDOWN: requests that arrive while a
// shutdown drains the ones already submitted are answered with
// NBD_ESHUTDOWN, as doc/proto.md describes, a WRITE's payload read past
// to keep the framing; the submitted ones complete; then the server hangs
// up.
func TestShutdownDrainAnswersESHUTDOWN(t *testing.T) {
	dev, ts, r := gatedTransmission(t)
	r.request(wire.CmdWrite, 0, 1, 0, 4096, bytes.Repeat([]byte{7}, 4096))
	if !dev.waitHeld(1, ioTimeout) {
		t.Fatal("the write did not reach the device")
	}
	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(tctx(t)) }()
	waitFor(t, "the connection to drain", func() bool {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		for c := range ts.srv.conns {
			c.mu.Lock()
			draining := c.tx != nil && c.tx.draining.Load()
			c.mu.Unlock()
			return draining
		}
		return false
	})

	r.request(wire.CmdWrite, 0, 2, 4096, 4096, bytes.Repeat([]byte{8}, 4096))
	r.request(wire.CmdRead, 0, 3, 0, 4096, nil)
	for _, want := range []uint64{2, 3} {
		code, cookie, _ := r.simple(0)
		if cookie != want || code != wire.ESHUTDOWN {
			t.Fatalf("reply to cookie %d with error %d, want cookie %d with ESHUTDOWN (%d)", cookie, code, want, wire.ESHUTDOWN)
		}
	}
	dev.open()
	if code, cookie, _ := r.simple(0); cookie != 1 || code != 0 {
		t.Fatalf("the write submitted before the shutdown: cookie %d error %d", cookie, code)
	}
	r.expectClosed()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := dev.snapshot(); got[0] != 7 || got[4096] != 0 {
		t.Fatalf("device holds %d at 0 (want 7: submitted before) and %d at 4096 (want 0: refused)", got[0], got[4096])
	}
}
