package nbd

import (
	"testing"
	"time"

	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/nbd/wire"
)

// TestReplyTimeout: a client that sends reads and never reads the replies
// holds payload budget only until ReplyTimeout; then its connection is
// closed, the budget comes back, and other clients are served throughout.
func TestReplyTimeout(t *testing.T) {
	dev := newMemDev(64<<20, allCaps)
	o := oneExport(dev)
	o.ReplyTimeout = 2 * time.Second
	ts := startServer(t, o, "unix")

	stuck := dialRaw(t, ts)
	stuck.start("mem", false, false)
	// 48 MiB of replies: far more than the socket buffers hold, so the
	// writer blocks once they fill.
	for i := 0; i < 48; i++ {
		stuck.request(wire.CmdRead, 0, uint64(i), uint64(i)<<20, 1<<20, nil)
	}
	waitFor(t, "the stuck client's replies to hold budget", func() bool {
		return ts.srv.Stats().PayloadInUse > 0
	})

	// Another client is served while the stuck one waits.
	c := ts.dial(t, client.Options{ExportName: "mem"})
	buf := make([]byte, 4096)
	if err := c.Read(tctx(t), 0, buf); err != nil {
		t.Fatalf("read beside a stuck client: %v", err)
	}

	waitFor(t, "the stuck connection to be closed and its budget returned", func() bool {
		st := ts.srv.Stats()
		return st.PayloadInUse == 0 && st.ConnsOpen == 1
	})
	if err := c.Read(tctx(t), 1<<20, buf); err != nil {
		t.Fatalf("read after the stuck client was dropped: %v", err)
	}
}

// TestIdleAfterWriterReply: a healthy client that goes quiet for longer
// than ReplyTimeout, after a reply large enough that the writer sent part
// of it (and so set a write deadline), is served on its next request. The
// deadline the writer set must not outlive the write it was set for: the
// reader's next reply, sent long after, would fail at once.
func TestIdleAfterWriterReply(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			dev := newMemDev(64<<20, allCaps)
			o := oneExport(dev)
			o.ReplyTimeout = MinReplyTimeout
			ts := startServer(t, o, network)
			c := ts.dial(t, client.Options{ExportName: "mem"})

			big := make([]byte, MaxPayload) // more than a socket takes at once
			if err := c.Read(tctx(t), 0, big); err != nil {
				t.Fatalf("32 MiB read: %v", err)
			}
			time.Sleep(o.ReplyTimeout + time.Second)
			small := make([]byte, 4096)
			if err := c.Read(tctx(t), 0, small); err != nil {
				t.Fatalf("4 KiB read after %v idle: %v", o.ReplyTimeout+time.Second, err)
			}
			if err := c.Write(tctx(t), 4096, small, 0); err != nil {
				t.Fatalf("4 KiB write after idle: %v", err)
			}
		})
	}
}
