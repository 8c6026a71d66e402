package stackdtest

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"
)

// SocketDir returns a directory, removed when the test ends, short enough
// for unix sockets in it: a socket's path must fit in 108 bytes, and
// t.TempDir, named after the test, can be longer.
func SocketDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if len(dir)+len("/nbd.sock") < 100 {
		return dir
	}
	dir, err := os.MkdirTemp("", "stackd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// SyncBuffer is a bytes.Buffer that a logger may write while the test
// reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// HTTPGet gets url, within 10 s, and returns the status and the body; it
// fails the test if there is no answer.
func HTTPGet(t testing.TB, url string) (status int, body string) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
