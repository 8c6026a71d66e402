package nbd

import (
	"bytes"
	"io"
	"net"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// unixPair returns the two ends of a unix stream connection.
func unixPair(t *testing.T) (a, b *net.UnixConn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	d, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := <-accepted
	if c == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); c.Close() })
	return d.(*net.UnixConn), c.(*net.UnixConn)
}

func pattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + i>>13)
	}
	return p
}

func rawOf(t *testing.T, c *net.UnixConn) syscall.RawConn {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestRawReadvIsBounded: with more than maxRawCopy bytes waiting in the
// socket, one raw readv of a direct write's fill takes exactly maxRawCopy
// of them, and the next takes the rest, in order.
func TestRawReadvIsBounded(t *testing.T) {
	client, server := unixPair(t)
	// A unix socket's bytes in flight are charged to the sender's buffer.
	if err := client.SetWriteBuffer(8 << 20); err != nil {
		t.Fatal(err)
	}
	const total = maxRawCopy + 256<<10
	want := pattern(total)
	sent := make(chan error, 1)
	go func() { _, err := client.Write(want); sent <- err }()
	select {
	case err := <-sent:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(ioTimeout):
		t.Fatalf("the kernel would not hold %d bytes in flight (net.core.wmem_max too small?)", total)
	}

	got := make([]byte, total)
	f := newSocketFill(rawOf(t, server))
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
	if read := total - left; read != maxRawCopy {
		t.Fatalf("one readv took %d bytes of the %d waiting, want maxRawCopy (%d)", read, total, maxRawCopy)
	}
	if err := f.readAll(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the fill's bytes differ from those sent")
	}
}

// TestRawWritevSendsEverythingInOrder: a batch of more than maxRawCopy
// bytes, the bound falling inside a slice, arrives whole and in order, so
// the batch's bookkeeping holds across calls cut at the bound
// (TestRawIovecs checks the cut itself).
func TestRawWritevSendsEverythingInOrder(t *testing.T) {
	client, server := unixPair(t)
	want := pattern(3*maxRawCopy + 4096)
	b := newReplyBatch(4)
	cuts := []int{0, 16, maxRawCopy - 100, maxRawCopy + 50, 2*maxRawCopy + 7, len(want)}
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
	if err := rawOf(t, server).Write(b.onSocket); err != nil || b.err != nil {
		t.Fatal(err, b.err)
	}
	if len(b.iov) != 0 {
		t.Fatalf("%d slices left unsent", len(b.iov))
	}
	if p := <-got; !bytes.Equal(p, want) {
		t.Fatal("the bytes received differ from the batch's")
	}
}

// TestRawIovecs: one raw call's vectors cover at most maxRawCopy bytes and
// len(iov) slices, the front of bufs in order, without its empty slices.
func TestRawIovecs(t *testing.T) {
	big := make([]byte, maxRawCopy)
	for _, tc := range []struct {
		name string
		bufs [][]byte
		nvec int
		want []int // the vectors' lengths
	}{
		{"small", [][]byte{big[:16], nil, big[:4096]}, 8, []int{16, 4096}},
		{"bound inside a slice", [][]byte{big[:100], big, big}, 8, []int{100, maxRawCopy - 100}},
		{"bound at a slice's end", [][]byte{big, big[:1]}, 8, []int{maxRawCopy}},
		{"out of vectors", [][]byte{big[:1], big[:2], big[:3]}, 2, []int{1, 2}},
		{"nothing", [][]byte{nil, {}}, 8, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iov := make([]unix.Iovec, tc.nvec)
			n := rawIovecs(iov, tc.bufs)
			var got []int
			for _, v := range iov[:n] {
				got = append(got, int(v.Len))
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("vector lengths %v, want %v", got, tc.want)
			}
		})
	}
}
