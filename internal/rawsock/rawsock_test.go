package rawsock

import (
	"bytes"
	"errors"
	"io"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
	"golang.org/x/sys/unix"
)

const ioTimeout = 10 * time.Second

// TestReaderIsBounded: with more than MaxCopy bytes waiting, one Read into
// a larger buffer (bufio hands a READ payload straight through) takes
// exactly MaxCopy, and the next ones the rest, in order.
func TestReaderIsBounded(t *testing.T) {
	a, b := stackdtest.UnixPair(t)
	want := stackdtest.Pattern(MaxCopy + 256<<10)
	stackdtest.Preload(t, a, want)
	r := &Reader{NC: b, Raw: stackdtest.RawConn(t, b)}
	got := make([]byte, len(want)+4096)
	n, err := r.Read(got)
	if err != nil || n != MaxCopy {
		t.Fatalf("first Read: %d bytes, %v; want MaxCopy (%d)", n, err, MaxCopy)
	}
	if _, err := io.ReadFull(r, got[n:len(want)]); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(want)], want) {
		t.Fatal("the bytes read differ from those sent")
	}
	a.Close()
	if n, err := r.Read(got); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed: %d, %v; want 0, EOF", n, err)
	}
}

// TestSenderSendsEverythingInOrder: a batch of several times MaxCopy, with
// empty slices and the bound falling inside slices, arrives whole and in
// order while the peer reads slowly enough for the socket to fill.
func TestSenderSendsEverythingInOrder(t *testing.T) {
	a, b := stackdtest.UnixPair(t)
	want := stackdtest.Pattern(3*MaxCopy + 4096)
	cuts := []int{0, 16, 16, MaxCopy - 100, MaxCopy + 50, 2*MaxCopy + 7, len(want)}
	var bufs [][]byte
	for i := 1; i < len(cuts); i++ {
		bufs = append(bufs, want[cuts[i-1]:cuts[i]])
	}
	got := make(chan []byte, 1)
	go func() {
		p := make([]byte, len(want))
		for off := 0; off < len(p); {
			n, err := b.Read(p[off:min(len(p), off+64<<10)])
			if err != nil {
				got <- nil
				return
			}
			off += n
		}
		got <- p
	}()
	a.SetWriteDeadline(time.Now().Add(ioTimeout))
	if err := NewSender(stackdtest.RawConn(t, a), 4).Send(bufs); err != nil {
		t.Fatal(err)
	}
	for i, p := range bufs {
		if p != nil {
			t.Fatalf("slice %d still held after Send", i)
		}
	}
	if p := <-got; !bytes.Equal(p, want) {
		t.Fatal("the bytes received differ from those sent")
	}
}

// TestSenderDeadline: a Send to a peer that never reads ends at the
// socket's write deadline, as a blocking write would.
func TestSenderDeadline(t *testing.T) {
	a, _ := stackdtest.UnixPair(t)
	a.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	err := NewSender(stackdtest.RawConn(t, a), 4).Send([][]byte{stackdtest.Pattern(16 << 20)})
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Send to a peer that does not read: %v, want the deadline", err)
	}
}

// TestIovecs: one raw call's vectors cover at most MaxCopy bytes and
// len(iov) slices, the front of bufs in order, without its empty slices.
func TestIovecs(t *testing.T) {
	big := make([]byte, MaxCopy)
	for _, tc := range []struct {
		name string
		bufs [][]byte
		nvec int
		want []int // the vectors' lengths
	}{
		{"small", [][]byte{big[:16], nil, big[:4096]}, 8, []int{16, 4096}},
		{"bound inside a slice", [][]byte{big[:100], big, big}, 8, []int{100, MaxCopy - 100}},
		{"bound at a slice's end", [][]byte{big, big[:1]}, 8, []int{MaxCopy}},
		{"out of vectors", [][]byte{big[:1], big[:2], big[:3]}, 2, []int{1, 2}},
		{"nothing", [][]byte{nil, {}}, 8, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iov := make([]unix.Iovec, tc.nvec)
			n := Iovecs(iov, tc.bufs)
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
