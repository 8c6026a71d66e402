package nbd

import (
	"bytes"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/nbd/wire"
)

// TestRepliesLeftForTheWriter pipelines more reply bytes than the socket
// holds, mixed with error replies, while the client does not read: the
// reader's non-blocking send fills the socket and leaves the rest (bytes
// of a half-sent batch, and requests it could not encode) to the writer.
// Once the client reads, every reply must arrive exactly once, intact,
// with a synchronous device (replies sent by the reader) and an
// asynchronous one (replies sent by the writer as well). With lending, the
// device lends every other 4 KiB of a READ and copies the rest: a 1 MiB
// reply is then lent pieces and copied ones interleaved, with more pieces
// than a loan table holds, so that the last ones are copied however the
// device offered them.
func TestRepliesLeftForTheWriter(t *testing.T) {
	for _, async := range []bool{false, true} {
		for _, structured := range []bool{false, true} {
			for _, lend := range []bool{false, true} {
				t.Run(fmt.Sprintf("async=%v/structured=%v/lend=%v", async, structured, lend), func(t *testing.T) {
					testRepliesLeftForTheWriter(t, async, structured, lend)
				})
			}
		}
	}
}

func testRepliesLeftForTheWriter(t *testing.T, async, structured, lend bool) {
	const size = 16 << 20
	dev := newMemDev(size, allCaps)
	if async {
		dev.maxDelay = 200 * time.Microsecond
	}
	if lend {
		dev.lendEvery = 2
	}
	for i := range dev.data {
		dev.data[i] = byte(i*7 + i>>20)
	}
	ts := startServer(t, oneExport(dev), "unix")
	r := dialRaw(t, ts)
	r.start("mem", structured, false)

	// 64 reads of 1 MiB, 64 of 4 KiB and 64 unknown commands, interleaved.
	const n = 192
	type want struct {
		off, length uint64
		bad         bool
	}
	wants := make(map[uint64]want, n)
	var reqs []byte
	for i := range uint64(n) {
		w := want{off: i << 16}
		cmd := uint16(wire.CmdRead)
		switch i % 3 {
		case 0:
			w.length = 1 << 20
		case 1:
			w.length = 4096
		case 2:
			cmd, w.bad = 0x55, true
		}
		wants[i] = w
		reqs = append(reqs, requestBytes(cmd, 0, i, w.off, uint32(w.length), nil)...)
	}
	r.write(reqs)
	// Let the server fill the socket and hand over to its writer.
	time.Sleep(100 * time.Millisecond)

	for range n {
		var cookie uint64
		var code uint32
		var data []byte
		if structured {
			flags, typ, c, payload := r.chunk()
			cookie = c
			if flags&wire.ReplyFlagDone == 0 {
				t.Fatalf("cookie %d: chunk without DONE", c)
			}
			switch typ {
			case wire.ReplyTypeOffsetData:
				if got := be.Uint64(payload); got != wants[c].off {
					t.Fatalf("cookie %d: offset %d, want %d", c, got, wants[c].off)
				}
				data = payload[8:]
			case wire.ReplyTypeError:
				code = be.Uint32(payload)
			default:
				t.Fatalf("cookie %d: chunk type %d", c, typ)
			}
		} else {
			h := r.read(wire.SimpleReplyLen)
			code, cookie = be.Uint32(h[4:]), be.Uint64(h[8:])
			if w, ok := wants[cookie]; ok && code == 0 {
				data = r.read(int(w.length))
			}
		}
		w, ok := wants[cookie]
		if !ok {
			t.Fatalf("reply for unknown or already answered cookie %d", cookie)
		}
		delete(wants, cookie)
		if w.bad {
			if code != wire.EINVAL {
				t.Fatalf("cookie %d: error %d, want EINVAL", cookie, code)
			}
			continue
		}
		if code != 0 {
			t.Fatalf("cookie %d: error %d", cookie, code)
		}
		if !bytes.Equal(data, dev.data[w.off:w.off+w.length]) {
			t.Fatalf("cookie %d: wrong data", cookie)
		}
	}
	// 64 1 MiB reads lend maxLoans pieces each (a full table), and the
	// 4 KiB ones at even chunks one each.
	if lent := dev.lent.Load(); lend && lent < 64*maxLoans {
		t.Errorf("the device lent %d pieces, want at least %d", lent, 64*maxLoans)
	}
	// And the connection carries on.
	r.request(wire.CmdFlush, 0, 1000, 0, 0, nil)
	if code, c, _ := r.simple(0); code != 0 || c != 1000 {
		t.Fatalf("flush after the burst: code %d cookie %d", code, c)
	}
}

// TestReaderAnswersSynchronousCompletions: with a device that completes
// inside Submit, the reader answers every request itself and the writer
// goroutine is not woken per request; with one that completes later, on
// its own goroutine, the writer sends (and the count shows it).
func TestReaderAnswersSynchronousCompletions(t *testing.T) {
	const n = 300
	for _, async := range []bool{false, true} {
		t.Run(fmt.Sprintf("async=%v", async), func(t *testing.T) {
			var logs syncBuffer
			dev := newMemDev(1<<20, allCaps)
			if async {
				dev.maxDelay = 100 * time.Microsecond
			}
			o := oneExport(dev)
			o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			ts := startServer(t, o, "unix")
			c := ts.dial(t, client.Options{})
			ctx := tctx(t)
			buf := make([]byte, 4096)
			for i := range n {
				off := uint64(i%200) * 4096
				if err := c.Write(ctx, off, buf, 0); err != nil {
					t.Fatal(err)
				}
				if err := c.Read(ctx, off, buf); err != nil {
					t.Fatal(err)
				}
			}
			c.Close()
			waitFor(t, "the connection to end", func() bool { return ts.srv.Stats().ConnsOpen == 0 })
			m := regexp.MustCompile(`connection closed.* requests=(\d+) .*writer_wakeups=(\d+)`).FindStringSubmatch(logs.String())
			if m == nil {
				t.Fatalf("no connection-closed line with writer_wakeups in:\n%s", logs.String())
			}
			wakeups, _ := strconv.Atoi(m[2])
			t.Logf("%s requests, %d writer wake-ups", m[1], wakeups)
			if !async && wakeups > 10 {
				t.Errorf("synchronous device: the writer was woken %d times for %d requests", wakeups, 2*n)
			}
			if async && wakeups < n {
				t.Errorf("asynchronous device: the writer was woken only %d times for %d requests", wakeups, 2*n)
			}
		})
	}
}
