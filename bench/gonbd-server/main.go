// Command gonbd-server is the go-nbd peer in stackd's benchmarks: the
// memory backend of github.com/pojntfx/go-nbd served with its
// server.Handle, one goroutine per connection, on a unix socket. It adds
// nothing to the library but an optional delay per request, so that the
// 1 ms-leg workload can be run against it too.
//
//	gonbd-server -socket PATH [-size 1GiB] [-export default] [-delay 1ms]
//
// It runs until SIGINT or SIGTERM.
package main

import (
	"errors"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pojntfx/go-nbd/pkg/backend"
	"github.com/pojntfx/go-nbd/pkg/server"

	"github.com/stackd/stackd/settings"
)

func main() {
	socket := flag.String("socket", "", "unix socket to listen on (required)")
	sizeFlag := flag.String("size", "1GiB", "export size: bytes, or a number with a binary unit (KiB, MiB, GiB, ...)")
	name := flag.String("export", "default", "export name")
	delay := flag.Duration("delay", 0, "latency added to every read and write (0: none)")
	flag.Parse()
	if *socket == "" {
		log.Fatal("gonbd-server: -socket is required")
	}
	size, err := settings.ParseSize(*sizeFlag)
	if err != nil {
		log.Fatalf("gonbd-server: -size: %v", err)
	}
	if size == 0 {
		log.Fatal("gonbd-server: -size: an export needs at least one byte")
	}

	// The library's memory backend wants the whole device as one slice;
	// the kernel backs it lazily, so untouched pages cost nothing.
	var be backend.Backend = backend.NewMemoryBackend(make([]byte, size))
	if *delay > 0 {
		be = delayed{be, *delay}
	}
	exports := []*server.Export{{Name: *name, Description: "go-nbd memory backend", Backend: be}}
	// Multi-conn as the library's own default options advertise it: the
	// backend is one slice behind one lock, so every connection sees
	// every write.
	opts := &server.Options{SupportsMultiConn: true}

	os.Remove(*socket)
	ln, err := net.Listen("unix", *socket)
	if err != nil {
		log.Fatalf("gonbd-server: %v", err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Fatalf("gonbd-server: accept: %v", err)
		}
		go func() {
			defer c.Close()
			// A client hanging up ends Handle with an error; that is
			// the normal end of a benchmark connection.
			_ = server.Handle(c, exports, opts)
		}()
	}
}

// delayed adds a fixed latency to every read and write of its backend,
// like the delay option of stackd's leaves and nbdkit's delay filter.
// go-nbd handles one request at a time per connection, so the delay is
// paid in series.
type delayed struct {
	backend.Backend
	d time.Duration
}

func (b delayed) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(b.d)
	return b.Backend.ReadAt(p, off)
}

func (b delayed) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(b.d)
	return b.Backend.WriteAt(p, off)
}
