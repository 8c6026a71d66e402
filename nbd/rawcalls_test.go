package nbd

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/rawsock"
	"github.com/stackd/stackd/internal/stackdtest"
)

// TestRawReadvIsBounded: with more than rawsock.MaxCopy bytes waiting in the
// socket, one raw readv of a direct write's fill takes exactly rawsock.MaxCopy
// of them, and the next takes the rest, in order.
func TestRawReadvIsBounded(t *testing.T) {
	client, server := stackdtest.UnixPair(t)
	const total = rawsock.MaxCopy + 256<<10
	want := stackdtest.Pattern(total)
	stackdtest.Preload(t, client, want)

	got := make([]byte, total)
	f := newSocketFill(stackdtest.RawConn(t, server))
	for p := got; len(p) > 0; p = p[min(len(p), 64<<10):] {
		f.pieces = append(f.pieces, p[:min(len(p), 64<<10)])
	}
	if err := f.raw.Read(f.readFd); err != nil || f.err != nil {
		t.Fatal(err, f.err)
	}
	left := 0
	for _, p := range f.pieces {
		left += len(p)
	}
	if read := total - left; read != rawsock.MaxCopy {
		t.Fatalf("one readv took %d bytes of the %d waiting, want MaxCopy (%d)", read, total, rawsock.MaxCopy)
	}
	if err := f.readAll(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the fill's bytes differ from those sent")
	}
}

// TestRawWritevSendsEverythingInOrder: a batch of more than rawsock.MaxCopy
// bytes, the bound falling inside a slice, arrives whole and in order, so
// the batch's bookkeeping holds across calls cut at the bound
// (rawsock.TestIovecs checks the cut itself).
func TestRawWritevSendsEverythingInOrder(t *testing.T) {
	client, server := stackdtest.UnixPair(t)
	want := stackdtest.Pattern(3*rawsock.MaxCopy + 4096)
	b := newReplyBatch(4)
	cuts := []int{0, 16, rawsock.MaxCopy - 100, rawsock.MaxCopy + 50, 2*rawsock.MaxCopy + 7, len(want)}
	for i := 1; i < len(cuts); i++ {
		b.payload(want[cuts[i-1]:cuts[i]])
	}
	b.onSocket = b.writeFd

	got := make(chan []byte, 1)
	go func() {
		p := make([]byte, len(want))
		_, err := io.ReadFull(client, p)
		if err != nil {
			p = nil
		}
		got <- p
	}()
	server.SetWriteDeadline(time.Now().Add(ioTimeout))
	if err := stackdtest.RawConn(t, server).Write(b.onSocket); err != nil || b.err != nil {
		t.Fatal(err, b.err)
	}
	if len(b.iov) != 0 {
		t.Fatalf("%d slices left unsent", len(b.iov))
	}
	if p := <-got; !bytes.Equal(p, want) {
		t.Fatal("the bytes received differ from the batch's")
	}
}
