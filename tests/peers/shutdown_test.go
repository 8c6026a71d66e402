package peers

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackd/stackd/nbd/wire"
)

// slotData is the 64 KiB a shutdown test writes to slot s.
func slotData(s int) []byte {
	b := make([]byte, 64*KiB)
	rng := rand.New(rand.NewPCG(7, uint64(s)))
	for i := 0; i < len(b); i += 8 {
		be.PutUint64(b[i:], rng.Uint64())
	}
	return b
}

// slowFileStack is fileStack with a delay layer over every leg, so that requests
// are in flight for a while.
func slowFileStack(dir string, legSize int64, delay time.Duration) string {
	legs := make([]string, 4)
	for i := range legs {
		p := filepath.Join(dir, fmt.Sprintf("leg%d.img", i))
		legs[i] = fmt.Sprintf("{delay: {read: %s, write: %s, flush: %s, leg: {file: {path: %s, size: %d}}}}", delay, delay, delay, strconv.Quote(p), legSize)
	}
	return "{split: {max_bytes: 1MiB, leg: {stripe: {chunk: 64KiB, legs: [" + strings.Join(legs, ", ") + "]}}}}"
}

// TestShutdownUnderLoad sends SIGTERM while four connections keep
// pipelined writes in flight on a slow file-backed stack. The daemon must
// answer what it accepted, exit 0 promptly, and every write it
// acknowledged must be in the files when they are served again.
func TestShutdownUnderLoad(t *testing.T) {
	const (
		conns    = 4
		depth    = 16
		slots    = 1024 // 64 KiB each: the whole 64 MiB export
		perConn  = slots / conns
		legSize  = 16 * MiB
		legDelay = 50 * time.Millisecond
	)
	dir := t.TempDir()
	d := startDaemon(t, daemonConfig{Exports: []export{{Name: "default", Stack: slowFileStack(dir, legSize, legDelay)}}})

	var (
		mu    sync.Mutex
		acked []int // slots whose WRITE was answered with success
		errs  []string
	)
	ackedCh := make(chan struct{}, slots)
	var wg sync.WaitGroup
	for ci := range conns {
		c := connectRaw(t, d.Socket, "default")
		wg.Add(1)
		go func() {
			defer wg.Done()
			inflight := make(chan int, depth) // slot of each request sent, in order
			sendDone := make(chan struct{})
			go func() {
				defer close(sendDone)
				defer close(inflight)
				for k := range perConn {
					s := ci*perConn + k
					inflight <- s // waits while depth requests are unanswered
					c.SetWriteDeadline(time.Now().Add(rawTimeout))
					h := requestHeader(0, wire.CmdWrite, uint64(s)+1, uint64(s)*64*KiB, 64*KiB)
					if _, err := c.Write(append(h, slotData(s)...)); err != nil {
						return // the server closed the connection
					}
				}
			}()
			for range inflight {
				c.SetReadDeadline(time.Now().Add(rawTimeout))
				var h [wire.SimpleReplyLen]byte
				if _, err := io.ReadFull(c, h[:]); err != nil {
					if !errors.Is(err, io.EOF) && !isReset(err) {
						mu.Lock()
						errs = append(errs, fmt.Sprintf("connection %d: %v", ci, err))
						mu.Unlock()
					}
					break
				}
				rep, ok := wire.DecodeSimpleReply(h[:])
				cookie, errno := rep.Cookie, rep.Error
				mu.Lock()
				switch {
				case !ok:
					errs = append(errs, fmt.Sprintf("connection %d: bad reply magic %#x", ci, wire.Magic(h[:])))
				case errno == 0:
					acked = append(acked, int(cookie-1))
					ackedCh <- struct{}{}
				case errno != 108: // ESHUTDOWN is a fair answer during shutdown
					errs = append(errs, fmt.Sprintf("connection %d: WRITE of slot %d failed with errno %d", ci, cookie-1, errno))
				}
				mu.Unlock()
			}
			// Unblock the sender, whose writes now fail.
			c.Close()
			for range inflight {
			}
			<-sendDone
		}()
	}

	// Let the load build up, then stop the daemon in the middle of it.
	for range 64 {
		select {
		case <-ackedCh:
		case <-time.After(rawTimeout):
			t.Fatal("no progress before the shutdown")
		}
	}
	d.Stop(t)
	t.Logf("stackd stopped %v after SIGTERM", d.StopTook.Round(time.Millisecond))
	if d.StopTook > 10*time.Second {
		t.Errorf("stackd took %v to stop with requests of %v in flight", d.StopTook, legDelay)
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Errorf("during the shutdown: %s", strings.Join(errs, "; "))
	}
	t.Logf("%d of %d writes acknowledged before the shutdown", len(acked), slots)
	if len(acked) == slots {
		t.Logf("every write finished before SIGTERM took effect: the shutdown had nothing in flight")
	}

	// Serve the same files again (without the delay) and check every
	// acknowledged write.
	d = startDaemon(t, daemonConfig{Exports: []export{{Name: "default", Stack: fileStack(dir, legSize)}}})
	c := connectRaw(t, d.Socket, "default")
	defer c.disconnect()
	for _, s := range acked {
		got := c.mustRead(t, uint64(s)*64*KiB, 64*KiB)
		if want := slotData(s); !bytes.Equal(got, want) {
			t.Errorf("slot %d was acknowledged but differs after the restart at byte %d", s, mismatch(got, want))
		}
	}
}

// isReset reports a connection reset or a write to a closed socket.
func isReset(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connection reset") || strings.Contains(s, "broken pipe")
}
