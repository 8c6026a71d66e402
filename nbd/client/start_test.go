package client

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/nbd/wire"
)

// TestStartManyInFlight: Start and StartBatch send without waiting, many requests are
// in flight at once, each Done runs once with its own result, a READ's
// data lands in its own buffer, and a BLOCK_STATUS fills its window.
func TestStartManyInFlight(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			mem := make([]byte, 1<<20)
			serve := memServe(mem)
			s := (&fakeServer{t: t, size: 1 << 20, structured: structured, serve: func(c *fakeConn, r wire.Request, p []byte) {
				if r.Type == wire.CmdBlockStatus {
					d := be.AppendUint32(nil, 7)
					for i := range 3 {
						d = be.AppendUint32(be.AppendUint32(d, 4096), uint32(i%2))
					}
					c.chunk(r.Cookie, wire.ReplyFlagDone, wire.ReplyTypeBlockStatus, d)
					return
				}
				serve(c, r, p)
			}}).start()
			c := dial(t, s, Options{StructuredReplies: structured, MetaContext: structured})
			const n = 256
			var wg sync.WaitGroup
			errs := make([]error, n)
			reqs := make([]Request, n)
			// The writes go in batches of 32, one writev each.
			var batch []*Request
			for i := range reqs {
				buf := bytes.Repeat([]byte{byte(i)}, 4096)
				reqs[i] = Request{Cmd: wire.CmdWrite, Offset: uint64(i) * 4096, Length: 4096, Buf: buf}
				wg.Add(1)
				reqs[i].Done = func(r *Request, err error) { errs[i] = err; wg.Done() }
				if batch = append(batch, &reqs[i]); len(batch) == 32 {
					if err := c.StartBatch(batch); err != nil {
						t.Fatal(err)
					}
					batch = batch[:0]
				}
			}
			wg.Wait()
			for i := range reqs {
				if errs[i] != nil {
					t.Fatalf("write %d: %v", i, errs[i])
				}
				reqs[i].Cmd, reqs[i].Buf = wire.CmdRead, make([]byte, 4096)
				wg.Add(1)
				if err := c.Start(&reqs[i]); err != nil {
					t.Fatal(err)
				}
			}
			wg.Wait()
			for i := range reqs {
				if errs[i] != nil || !bytes.Equal(reqs[i].Buf, bytes.Repeat([]byte{byte(i)}, 4096)) {
					t.Fatalf("read %d: %v, data %x…", i, errs[i], reqs[i].Buf[:4])
				}
			}
			if !structured {
				return
			}
			var done sync.WaitGroup
			done.Add(1)
			var bsErr error
			bs := Request{Cmd: wire.CmdBlockStatus, Offset: 8192, Length: 1 << 16, Extents: make([]bioset.Extent, 2),
				Done: func(r *Request, err error) { bsErr = err; done.Done() }}
			if err := c.Start(&bs); err != nil {
				t.Fatal(err)
			}
			done.Wait()
			want := []bioset.Extent{{Offset: 8192, Length: 4096, Flags: 0}, {Offset: 12288, Length: 4096, Flags: 1}}
			if bsErr != nil || bs.NExtents != 2 || bs.Extents[0] != want[0] || bs.Extents[1] != want[1] {
				t.Fatalf("block status: %v, %d extents %v; want %v", bsErr, bs.NExtents, bs.Extents, want)
			}
		})
	}
}

// TestStartBroken: requests in flight when the connection breaks each get
// Done once with the error; Broken closes; Start refuses afterwards.
func TestStartBroken(t *testing.T) {
	held := make(chan struct{})
	s := (&fakeServer{t: t, size: 1 << 20, serve: func(c *fakeConn, r wire.Request, _ []byte) {
		held <- struct{}{} // answer nothing
	}}).start()
	c := dial(t, s, Options{})
	const n = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	calls := map[*Request]int{}
	reqs := make([]Request, n)
	for i := range reqs {
		reqs[i] = Request{Cmd: wire.CmdFlush, Done: func(r *Request, err error) {
			mu.Lock()
			calls[r]++
			mu.Unlock()
			if !errors.Is(err, errAborted) {
				t.Errorf("done with %v, want the abort's error", err)
			}
			wg.Done()
		}}
		wg.Add(1)
		if err := c.Start(&reqs[i]); err != nil {
			t.Fatal(err)
		}
		<-held
	}
	c.Abort(errAborted)
	wg.Wait()
	select {
	case <-c.Broken():
	case <-time.After(ioTimeout):
		t.Fatal("Broken not closed")
	}
	for i := range reqs {
		if calls[&reqs[i]] != 1 {
			t.Fatalf("request %d: Done ran %d times", i, calls[&reqs[i]])
		}
	}
	if err := c.Start(&Request{Cmd: wire.CmdFlush, Done: func(*Request, error) { t.Error("Done after a refused Start") }}); !errors.Is(err, errAborted) {
		t.Fatalf("Start after abort: %v", err)
	}
}

var errAborted = errors.New("aborted by the test")
