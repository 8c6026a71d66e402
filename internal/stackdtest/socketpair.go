package stackdtest

import (
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// UnixPair returns the two ends of a unix stream connection, closed when
// the test ends.
func UnixPair(t testing.TB) (a, b *net.UnixConn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(SocketDir(t), "pair"))
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
		d.Close()
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); c.Close() })
	return d.(*net.UnixConn), c.(*net.UnixConn)
}

// Preload writes data into a so that all of it waits in the socket for
// the other end, which has read none of it yet: for tests of what one
// read takes when more is there. It fails the test if the kernel will not
// hold that much in flight (net.core.wmem_max caps the send buffer).
func Preload(t testing.TB, a *net.UnixConn, data []byte) {
	t.Helper()
	// A unix socket's bytes in flight are charged to the sender's buffer.
	if err := a.SetWriteBuffer(4 * len(data)); err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() { _, err := a.Write(data); sent <- err }()
	select {
	case err := <-sent:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the kernel would not hold %d bytes in flight (net.core.wmem_max too small?)", len(data))
	}
}

// RawConn returns c's syscall.RawConn.
func RawConn(t testing.TB, c *net.UnixConn) syscall.RawConn {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// Pattern returns n bytes that differ from their neighbours and repeat
// only every 2 MiB or so, so that bytes out of place or lost show.
func Pattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + i>>13)
	}
	return p
}
