package peers

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/nbd/wire"
)

// rawExportSize is the size of the exports the raw tests use: room for a
// maximum-size (32 MiB) request anywhere in the first half.
const rawExportSize = 64 * MiB

// knownData is seeded data the raw tests write first and check after
// every attack: it straddles a 64 KiB stripe chunk and the 1 MiB split
// boundary at 5 MiB.
func knownData() (off uint64, data []byte) {
	data = make([]byte, MiB+3)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	return 5*MiB - 1234, data
}

// rawConnector opens a raw connection to an export of a daemon, in
// transmission: plaintext (plainConnector) or over TLS.
type rawConnector func(t *testing.T, name string) *rawConn

func plainConnector(d *daemon) rawConnector {
	return func(t *testing.T, name string) *rawConn { return connectRaw(t, d.Socket, name) }
}

// writeKnown writes knownData through a fresh raw connection.
func writeKnown(t *testing.T, d *daemon) {
	t.Helper()
	writeKnownWith(t, plainConnector(d))
}

func writeKnownWith(t *testing.T, connect rawConnector) {
	t.Helper()
	c := connect(t, "default")
	defer c.disconnect()
	off, data := knownData()
	c.mustWrite(t, off, data)
}

// checkKnown verifies, on a fresh connection, that the server still
// completes a handshake and that knownData is intact.
func checkKnown(t *testing.T, d *daemon) {
	t.Helper()
	checkKnownWith(t, d, plainConnector(d))
}

func checkKnownWith(t *testing.T, d *daemon, connect rawConnector) {
	t.Helper()
	d.alive()
	c := connect(t, "default")
	defer c.disconnect()
	off, want := knownData()
	got := c.mustRead(t, off, len(want))
	if i := mismatch(got, want); i >= 0 {
		t.Fatalf("data written before differs at offset %d: got %#x, want %#x", off+uint64(i), got[i], want[i])
	}
}

// TestRawBadRequests sends requests no well-behaved client sends, each
// followed by a valid request on the same connection: the server answers
// with the error the spec (and the README) gives, and the connection lives.
func TestRawBadRequests(t *testing.T) {
	d := startDaemon(t, daemonConfig{Exports: badRequestExports()})
	badRequests(t, d, plainConnector(d))
}

// badRequestExports are the exports badRequests needs.
func badRequestExports() []export {
	return []export{
		{Name: "default", Stack: memStack(rawExportSize / 4)},
		{Name: "ro", ReadOnly: true, Stack: memStack(4 * MiB)},
	}
}

// rawCase is one request of a table, and the errors its reply may carry
// (none: it must succeed).
type rawCase struct {
	name      string
	flags     uint16
	cmd       uint16
	off       uint64
	length    uint32
	payload   []byte
	wantErrno []uint32
}

// badRequests is TestRawBadRequests on connections connect opens: over
// the unix socket in plaintext, or over TLS (TestTLSRawBadRequests).
func badRequests(t *testing.T, d *daemon, connect rawConnector) {
	writeKnownWith(t, connect)
	c := connect(t, "default")
	defer c.disconnect()
	if c.size != rawExportSize {
		t.Fatalf("export size %d, want %d", c.size, rawExportSize)
	}
	end := c.size
	payload := bytes.Repeat([]byte{0xee}, 1024)

	for _, tc := range []rawCase{
		{"write past the end", 0, wire.CmdWrite, end - 512, 1024, payload, []uint32{wire.ENOSPC}},
		{"write offset wraps", 0, wire.CmdWrite, 1<<64 - 512, 1024, payload, []uint32{wire.ENOSPC}},
		{"write-zeroes past the end", 0, wire.CmdWriteZeroes, end - 512, 1024, nil, []uint32{wire.ENOSPC}},
		{"read past the end", 0, wire.CmdRead, end - 512, 1024, nil, []uint32{wire.EINVAL}},
		{"read offset wraps", 0, wire.CmdRead, 1<<64 - 512, 1024, nil, []uint32{wire.EINVAL}},
		{"trim past the end", 0, wire.CmdTrim, end, 1, nil, []uint32{wire.EINVAL}},
		{"cache past the end", 0, wire.CmdCache, end - 1, 2, nil, []uint32{wire.EINVAL}},
		// No meta context was negotiated on this connection.
		{"block status without a context", 0, wire.CmdBlockStatus, 0, 4096, nil, []uint32{wire.EINVAL}},
		{"unknown command 42", 0, 42, 0, 4096, nil, []uint32{wire.EINVAL}},
		{"unknown command 0xffff", 0, 0xffff, 0, 0, nil, []uint32{wire.EINVAL}},
		{"read with unknown flag 1<<10", 1 << 10, wire.CmdRead, 0, 4096, nil, []uint32{wire.EINVAL}},
		{"write with unknown flag 1<<15", 1 << 15, wire.CmdWrite, 8 * KiB, 1024, payload, []uint32{wire.EINVAL}},
		{"read longer than 32 MiB", 0, wire.CmdRead, 0, wire.DefaultMaxPayload + 1, nil, []uint32{wire.EINVAL, wire.EOVERFLOW}},
		{"read of 4 GiB - 1", 0, wire.CmdRead, 0, 1<<32 - 1, nil, []uint32{wire.EINVAL, wire.EOVERFLOW}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errno, _, err := c.do(tc.flags, tc.cmd, tc.off, tc.length, tc.payload)
			if err != nil {
				t.Fatalf("no reply: %v", err)
			}
			ok := false
			for _, w := range tc.wantErrno {
				ok = ok || errno == w
			}
			if !ok {
				t.Errorf("errno %d, want one of %v", errno, tc.wantErrno)
			}
			// The same connection still serves, and nothing was written.
			if got := c.mustRead(t, 8*KiB, 1024); !bytes.Equal(got, make([]byte, 1024)) {
				t.Errorf("a rejected request wrote data")
			}
		})
	}

	t.Run("maximum payload is legal", func(t *testing.T) {
		big := bytes.Repeat([]byte{0x3c}, wire.DefaultMaxPayload)
		c.mustWrite(t, 16*MiB, big)
		if got := c.mustRead(t, 16*MiB, wire.DefaultMaxPayload); !bytes.Equal(got, big) {
			t.Fatalf("32 MiB read back differs at %d", mismatch(got, big))
		}
		// TRIM carries no payload: far more than 32 MiB is fine.
		if errno, _, err := c.do(0, wire.CmdTrim, 16*MiB, 48*MiB, nil); err != nil || errno != 0 {
			t.Fatalf("TRIM of 48 MiB: errno %d, %v", errno, err)
		}
	})

	t.Run("legal flags and empty requests", func(t *testing.T) {
		const fua, noHole, fastZero = wire.CmdFlagFUA, wire.CmdFlagNoHole, wire.CmdFlagFastZero
		if c.flags&wire.FlagSendFUA == 0 {
			t.Fatalf("transmission flags %#x lack NBD_FLAG_SEND_FUA", c.flags)
		}
		for _, r := range []rawCase{
			// The README: FUA is accepted on every command once advertised.
			{"READ|FUA", fua, wire.CmdRead, 0, 512, nil, nil},
			{"WRITE|FUA", fua, wire.CmdWrite, 20 * MiB, 1024, payload, nil},
			{"FLUSH|FUA", fua, wire.CmdFlush, 0, 0, nil, nil},
			{"TRIM|FUA", fua, wire.CmdTrim, 20 * MiB, 1024, nil, nil},
			{"CACHE", 0, wire.CmdCache, 0, 1 << 20, nil, nil},
			{"WRITE_ZEROES|NO_HOLE", noHole, wire.CmdWriteZeroes, 20 * MiB, 4096, nil, nil},
			{"WRITE_ZEROES|FAST_ZERO", fastZero, wire.CmdWriteZeroes, 20 * MiB, 4096, nil, nil},
			{"WRITE_ZEROES|FUA|NO_HOLE", fua | noHole, wire.CmdWriteZeroes, 20 * MiB, 4096, nil, nil},
		} {
			errno, _, err := c.do(r.flags, r.cmd, r.off, r.length, r.payload)
			if r.flags&fastZero != 0 && errno == wire.ENOTSUP {
				// ENOTSUP: the spec lets a server refuse a zero it cannot
				// do fast.
				errno = 0
			}
			if err != nil || errno != 0 {
				t.Errorf("%s: errno %d, %v; want success", r.name, errno, err)
			}
		}
		// Empty requests: the spec leaves the answer to the server but
		// asks it not to disconnect.
		for _, r := range []struct {
			name string
			cmd  uint16
		}{{"READ", wire.CmdRead}, {"WRITE", wire.CmdWrite}, {"TRIM", wire.CmdTrim}, {"WRITE_ZEROES", wire.CmdWriteZeroes}, {"CACHE", wire.CmdCache}} {
			errno, _, err := c.do(0, r.cmd, 4096, 0, nil)
			if err != nil {
				t.Fatalf("empty %s: %v", r.name, err)
			}
			t.Logf("empty %s: errno %d", r.name, errno)
		}
		c.mustRead(t, 0, 512)
	})

	t.Run("read-only export", func(t *testing.T) {
		ro := connect(t, "ro")
		defer ro.disconnect()
		if ro.flags&wire.FlagReadOnly == 0 {
			t.Errorf("transmission flags %#x lack NBD_FLAG_READ_ONLY", ro.flags)
		}
		for _, r := range []struct {
			name    string
			cmd     uint16
			payload []byte
		}{{"write", wire.CmdWrite, payload}, {"trim", wire.CmdTrim, nil}, {"write-zeroes", wire.CmdWriteZeroes, nil}} {
			errno, _, err := ro.do(0, r.cmd, 0, 1024, r.payload)
			if err != nil || errno != wire.EPERM {
				t.Errorf("%s on a read-only export: errno %d, %v; want EPERM (%d)", r.name, errno, err, wire.EPERM)
			}
		}
		ro.mustRead(t, 0, 4096)
	})

	checkKnownWith(t, d, connect)
}

// TestRawFraming breaks the framing of the transmission phase: the server
// drops that connection only, and serves others with the data intact.
func TestRawFraming(t *testing.T) {
	d := startDaemon(t, daemonConfig{Exports: framingExports(), Limits: framingLimits})
	framing(t, d, plainConnector(d))
}

// framingExports and framingLimits are the daemon framing needs. The
// smallest budget: a buffer leaked by an abandoned WRITE would soon leave
// no room for a maximum-size one.
func framingExports() []export {
	return []export{{Name: "default", Stack: memStack(rawExportSize / 4)}}
}

const framingLimits = "{payload_budget: 32MiB}"

// framing is TestRawFraming on connections connect opens: plaintext, or
// over TLS (TestTLSRawFraming).
func framing(t *testing.T, d *daemon, connect rawConnector) {
	writeKnownWith(t, connect)

	t.Run("bad magic", func(t *testing.T) {
		c := connect(t, "default")
		h := requestHeader(0, wire.CmdRead, 1, 0, 512)
		be.PutUint32(h, 0xdeadbeef)
		if _, err := c.Write(h); err != nil {
			t.Fatal(err)
		}
		if err := expectClosed(c, 10*time.Second); err != nil {
			t.Errorf("after a request with bad magic: %v", err)
		}
		checkKnownWith(t, d, connect)
	})

	t.Run("truncated header", func(t *testing.T) {
		c := connect(t, "default")
		if _, err := c.Write(requestHeader(0, wire.CmdRead, 1, 0, 512)[:13]); err != nil {
			t.Fatal(err)
		}
		c.Close()
		checkKnownWith(t, d, connect)
	})

	t.Run("write payload cut short", func(t *testing.T) {
		// More abandoned 32 MiB WRITEs than the budget holds, cut after
		// the header, a byte, a few MiB, one byte short.
		for i, n := range []int{0, 1, 3*MiB + 17, wire.DefaultMaxPayload - 1} {
			c := connect(t, "default")
			h := requestHeader(0, wire.CmdWrite, 1, 32*MiB, wire.DefaultMaxPayload)
			if _, err := c.Write(append(h, bytes.Repeat([]byte{byte(i + 1)}, n)...)); err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
		checkKnownWith(t, d, connect)
		c := connect(t, "default")
		defer c.disconnect()
		big := bytes.Repeat([]byte{0x7e}, wire.DefaultMaxPayload)
		c.mustWrite(t, 32*MiB, big)
		if got := c.mustRead(t, 32*MiB, wire.DefaultMaxPayload); !bytes.Equal(got, big) {
			t.Fatalf("32 MiB read back differs at %d", mismatch(got, big))
		}
	})

	t.Run("write payload longer than 32 MiB", func(t *testing.T) {
		// A payload past the maximum: the server may end the connection
		// (it cannot be expected to buffer it) or read it and refuse it.
		// It must not write it.
		c := connect(t, "default")
		sent := make(chan error, 1)
		go func() {
			h := requestHeader(0, wire.CmdWrite, 1, 0, wire.DefaultMaxPayload+1)
			_, err := c.Write(append(h, bytes.Repeat([]byte{0xab}, wire.DefaultMaxPayload+1)...))
			sent <- err
		}()
		errno, _, err := c.reply(1, 0)
		switch {
		case err != nil:
			t.Logf("connection closed: %v", err)
		case errno == 0:
			t.Errorf("a WRITE of 32 MiB + 1 succeeded; want an error or a closed connection")
		default:
			t.Logf("refused with errno %d", errno)
		}
		c.Close()
		<-sent
		checkKnownWith(t, d, connect)
	})

	t.Run("disconnect", func(t *testing.T) {
		c := connect(t, "default")
		if _, err := c.send(0, wire.CmdDisc, 0, 0, nil); err != nil {
			t.Fatal(err)
		}
		if err := expectClosed(c, 10*time.Second); err != nil {
			t.Errorf("after NBD_CMD_DISC: %v", err)
		}
	})

	checkKnownWith(t, d, connect)
}

// TestRawHandshakeAbuse attacks the handshake: options claiming 4 GiB of
// data, and a thousand connections dropped at random points.
func TestRawHandshakeAbuse(t *testing.T) {
	d := startDaemon(t, daemonConfig{
		Exports: []export{{Name: "default", Stack: memStack(rawExportSize / 4)}},
		// A long handshake timeout, so that a server waiting for the 4 GiB
		// is caught by the test's own shorter deadline; a connection cap
		// well above the test's concurrency, so that connections the
		// server failed to release would show. All from this one client,
		// so its own cap is the server's.
		Limits:  "{handshake_timeout: 60s, max_connections: 128, max_connections_per_client: 128}",
		Metrics: true, // connections refused at the cap (dropHandshakes)
	})
	writeKnown(t, d)

	for _, opt := range []struct {
		name string
		opt  uint32
	}{{"GO", wire.OptGo}, {"EXPORT_NAME", wire.OptExportName}, {"LIST", wire.OptList}, {"unknown 0x7fff", 0x7fff}} {
		t.Run("option "+opt.name+" of 4 GiB", func(t *testing.T) {
			c := dialRaw(t, d.Socket)
			if err := greetAndFlags(c); err != nil {
				t.Fatal(err)
			}
			c.Write(optionHeader(opt.opt, 0xffffffff))
			c.Write(bytes.Repeat([]byte{'x'}, 100))
			// The server must decide without the data: an error reply or
			// a closed connection, promptly.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			r, err := readOptionReply(c)
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				t.Fatalf("no answer within 5s to an option claiming 4 GiB: the server is waiting for the data")
			case err != nil:
				t.Logf("closed: %v", err)
			case r.typ&wire.RepFlagError == 0:
				t.Errorf("option claiming 4 GiB answered with non-error reply type %#x", r.typ)
			default:
				t.Logf("error reply %#x %q", r.typ, r.data)
			}
			c.Close()
			checkKnown(t, d)
		})
	}

	t.Run("oversized option sent in full", func(t *testing.T) {
		// 100 KiB of data for an unknown option: the server may refuse it
		// with an error reply and go on, or hang up; if it goes on, the
		// handshake must still complete.
		c := dialRaw(t, d.Socket)
		if err := greetAndFlags(c); err != nil {
			t.Fatal(err)
		}
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			c.Write(append(optionHeader(0x7ffe, 100*KiB), make([]byte, 100*KiB)...))
		}()
		r, err := readOptionReply(c)
		<-sent
		if err != nil {
			t.Logf("closed: %v", err)
			checkKnown(t, d)
			return
		}
		if r.typ&wire.RepFlagError == 0 || r.opt != 0x7ffe {
			t.Fatalf("reply to an oversized unknown option: option %#x type %#x", r.opt, r.typ)
		}
		if _, err := c.Write(goOption("default")); err != nil {
			t.Fatal(err)
		}
		for {
			r, err := readOptionReply(c)
			if err != nil {
				t.Fatalf("NBD_OPT_GO after a refused option: %v", err)
			}
			if r.typ&wire.RepFlagError != 0 {
				t.Fatalf("NBD_OPT_GO after a refused option: error %#x %q", r.typ, r.data)
			}
			if r.typ == wire.RepAck {
				break
			}
		}
		rc := &rawConn{Conn: c}
		off, want := knownData()
		if got := rc.mustRead(t, off, len(want)); !bytes.Equal(got, want) {
			t.Fatalf("data differs at %d", mismatch(got, want))
		}
	})

	t.Run("1000 connections dropped mid-handshake", func(t *testing.T) {
		dropHandshakes(t, d, 1000, 50)
		checkKnown(t, d)
		// Every dropped connection's slot is free again: 100 at once fit
		// under the cap of 128. The server notices a drop promptly but not
		// instantly, so allow it a few seconds.
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := openMany(d.Socket, 100)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("100 concurrent connections after the drops: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	d.alive()
	if _, err := run(t, "nbdinfo", "--version"); err == nil {
		mustRun(t, "nbdinfo", d.uri("default"))
	}
	checkKnown(t, d)
}

// dropHandshakes opens n connections, at most par at once, and drops each
// at a random point of the handshake.
//
// A connection the server closes before its greeting is one it refused at
// a cap: par is well below the caps, but on a loaded machine the server may
// still hold some of the dropped connections it has not yet read the end
// of. Such closes are counted against the refusals the server's metrics
// report, and only closes beyond those, or any other failure, fail the
// test; connections it never released would show in the check after this
// one, which needs their slots.
func dropHandshakes(t *testing.T, d *daemon, n, par int) {
	t.Helper()
	var (
		wg          sync.WaitGroup
		sem         = make(chan struct{}, par)
		failed      atomic.Int64
		closedEarly atomic.Int64
		mu          sync.Mutex
		errs        []error
		stages      [7]atomic.Int64
	)
	refusedBefore := d.refused(t)
	fail := func(i, stage int, err error) {
		if errors.Is(err, errNoGreeting) {
			closedEarly.Add(1)
			return
		}
		failed.Add(1)
		mu.Lock()
		defer mu.Unlock()
		if len(errs) < 5 {
			errs = append(errs, fmt.Errorf("connection %d, stage %d: %w", i, stage, err))
		}
	}
	start := time.Now()
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			rng := rand.New(rand.NewPCG(42, uint64(i)))
			stage := rng.IntN(len(stages))
			stages[stage].Add(1)
			if err := dropAt(d.Socket, stage, rng); err != nil {
				fail(i, stage, err)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d connections dropped in %v; by stage: %v", n, time.Since(start).Round(time.Millisecond), loadAll(stages[:]))
	if f := failed.Load(); f > 0 {
		t.Errorf("%d of %d connections misbehaved before being dropped, e.g.: %v", f, n, errors.Join(errs...))
	}
	if c := closedEarly.Load(); c > 0 {
		refused := d.refused(t) - refusedBefore
		if c > refused {
			t.Errorf("%d of %d connections were closed before the greeting; the server refused %d at its caps", c, n, refused)
		} else {
			t.Logf("%d connections refused at the caps while the server caught up with the drops", c)
		}
	}
}

// errNoGreeting marks a connection closed before the server sent a byte
// of its greeting: what a connection refused at a cap sees.
var errNoGreeting = errors.New("closed before the greeting")

// noGreeting marks err as errNoGreeting when it is the end of the stream
// (or a reset) before any byte of the greeting.
func noGreeting(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("%w: %w", errNoGreeting, err)
	}
	return err
}

// refused is how many connections the daemon has refused at accept, for
// every reason, from its metrics.
func (d *daemon) refused(t *testing.T) int64 {
	t.Helper()
	n := int64(0)
	for k, v := range d.scrape(t) {
		if strings.HasPrefix(k, "stackd_connections_rejected_total{") {
			n += v
		}
	}
	return n
}

func loadAll(a []atomic.Int64) []int64 {
	out := make([]int64, len(a))
	for i := range a {
		out[i] = a[i].Load()
	}
	return out
}

// dropAt runs the client side of a handshake up to stage and hangs up.
// It reports an error only when the server misbehaved before that point.
func dropAt(sock string, stage int, rng *rand.Rand) error {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if stage == 0 { // right after connecting
		return nil
	}
	if stage == 1 { // part of the greeting read
		_, err := io.ReadFull(c, make([]byte, 1+rng.IntN(17)))
		return noGreeting(err)
	}
	if err := readGreeting(c); err != nil {
		return noGreeting(err)
	}
	if stage == 2 { // after the greeting
		return nil
	}
	var cf [4]byte
	be.PutUint32(cf[:], wire.FlagCFixedNewstyle|wire.FlagCNoZeroes)
	if stage == 3 { // part of the client flags
		_, err := c.Write(cf[:1+rng.IntN(3)])
		return err
	}
	if _, err := c.Write(cf[:]); err != nil {
		return err
	}
	if stage == 4 { // after the client flags
		return nil
	}
	opt := goOption("default")
	if stage == 5 { // mid-option: in the header or the data
		_, err := c.Write(opt[:1+rng.IntN(len(opt)-1)])
		return err
	}
	// stage 6: a whole LIST, then hang up while the reply is being read.
	if _, err := c.Write(optionHeader(wire.OptList, 0)); err != nil {
		return err
	}
	_, err = io.ReadFull(c, make([]byte, 1+rng.IntN(20)))
	return err
}

// openMany completes n handshakes at once, then closes them.
func openMany(sock string, n int) error {
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		c, err := net.DialTimeout("unix", sock, 5*time.Second)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := handshake(c, "default"); err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
	}
	return nil
}

// TestRawLimits checks the handshake timeout and the connection cap.
func TestRawLimits(t *testing.T) {
	d := startDaemon(t, daemonConfig{
		Exports: []export{{Name: "default", Stack: memStack(MiB)}},
		Limits:  "{handshake_timeout: 1s, max_connections: 4}",
	})

	t.Run("handshake timeout", func(t *testing.T) {
		c := dialRaw(t, d.Socket)
		if err := readGreeting(c); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := expectClosed(c, 10*time.Second); err != nil {
			t.Fatalf("an idle handshake with a 1s timeout: %v", err)
		}
		t.Logf("idle handshake closed after %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("connection cap", func(t *testing.T) {
		// Let the previous subtest's connection be forgotten.
		deadline := time.Now().Add(10 * time.Second)
		var held []*rawConn
		for len(held) < 4 {
			c, err := net.DialTimeout("unix", d.Socket, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			c.SetDeadline(time.Now().Add(rawTimeout))
			rc, err := handshake(c, "default")
			if err != nil {
				c.Close()
				if time.Now().After(deadline) {
					t.Fatalf("connection %d of 4: %v", len(held)+1, err)
				}
				time.Sleep(100 * time.Millisecond)
				continue
			}
			held = append(held, rc)
		}
		// A fifth is accepted and closed at once.
		c := dialRaw(t, d.Socket)
		if _, err := handshake(c, "default"); err == nil {
			t.Fatalf("a fifth connection completed its handshake under max_connections: 4")
		}
		// The four still work; freeing one admits a new one.
		for _, rc := range held {
			rc.mustRead(t, 0, 512)
		}
		held[0].disconnect()
		for {
			c, err := net.DialTimeout("unix", d.Socket, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(rawTimeout))
			rc, err := handshake(c, "default")
			if err == nil {
				rc.mustRead(t, 0, 512)
				rc.disconnect()
				break
			}
			c.Close()
			if time.Now().After(deadline) {
				t.Fatalf("no connection admitted after one of four closed: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, rc := range held[1:] {
			rc.disconnect()
		}
	})
}

// exportNameHandshake enters transmission with NBD_OPT_EXPORT_NAME, as
// the Linux kernel's older nbd-client does, with or without NO_ZEROES.
func exportNameHandshake(c net.Conn, name string, noZeroes bool) (*rawConn, error) {
	if err := readGreeting(c); err != nil {
		return nil, err
	}
	var cf [4]byte
	flags := uint32(wire.FlagCFixedNewstyle)
	if noZeroes {
		flags |= wire.FlagCNoZeroes
	}
	be.PutUint32(cf[:], flags)
	if _, err := c.Write(append(cf[:], append(optionHeader(wire.OptExportName, uint32(len(name))), name...)...)); err != nil {
		return nil, err
	}
	n := wire.ExportNameReplyLen + wire.ExportNameZeroes
	if noZeroes {
		n = wire.ExportNameReplyLen
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME reply: %w", err)
	}
	if !bytes.Equal(b[10:], make([]byte, n-10)) {
		return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME reply: padding not zero: %x", b[10:])
	}
	return &rawConn{Conn: c, size: be.Uint64(b), flags: be.Uint16(b[8:])}, nil
}

func TestRawExportName(t *testing.T) {
	d := startDaemon(t, daemonConfig{Exports: []export{
		{Name: "default", Default: true, Stack: memStack(MiB)},
		{Name: "other", Stack: memStack(2 * MiB)},
	}})
	writeKnownSmall := func(t *testing.T, c *rawConn) {
		t.Helper()
		data := bytes.Repeat([]byte("stackd"), 1000)
		c.mustWrite(t, 1000, data)
		if got := c.mustRead(t, 1000, len(data)); !bytes.Equal(got, data) {
			t.Fatalf("read back differs at %d", mismatch(got, data))
		}
	}
	for _, tc := range []struct {
		name     string
		export   string
		noZeroes bool
		size     uint64
	}{
		{"named, no zeroes", "other", true, 8 * MiB},
		{"named, with zeroes", "other", false, 8 * MiB},
		{"empty name selects the default", "", true, 4 * MiB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := exportNameHandshake(dialRaw(t, d.Socket), tc.export, tc.noZeroes)
			if err != nil {
				t.Fatal(err)
			}
			defer c.disconnect()
			if c.size != tc.size {
				t.Errorf("size %d, want %d", c.size, tc.size)
			}
			if c.flags&wire.FlagHasFlags == 0 || c.flags&wire.FlagCanMultiConn == 0 {
				t.Errorf("transmission flags %#x lack HAS_FLAGS or CAN_MULTI_CONN", c.flags)
			}
			writeKnownSmall(t, c)
		})
	}
	t.Run("unknown name", func(t *testing.T) {
		// NBD_OPT_EXPORT_NAME has no error reply: the server hangs up.
		c := dialRaw(t, d.Socket)
		if _, err := exportNameHandshake(c, "nope", true); err == nil {
			t.Fatal("NBD_OPT_EXPORT_NAME of a missing export entered transmission")
		}
		checkGreets(t, d)
	})
}

// checkGreets requires the daemon to still answer new connections.
func checkGreets(t *testing.T, d *daemon) {
	t.Helper()
	d.alive()
	if err := greets("unix", d.Socket); err != nil {
		t.Fatalf("the server no longer answers: %v", err)
	}
}
