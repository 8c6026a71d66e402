package nbd

import (
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stackd/stackd/nbd/wire"
)

// fuzzServe feeds input to a fresh connection of srv over net.Pipe, as the
// client's side of the stream, then hangs up. The server must end the
// connection, without panicking, within a bound.
func fuzzServe(t *testing.T, srv *Server, input []byte) {
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.serveConn(server)
	}()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(io.Discard, client) // replies
	}()
	client.SetWriteDeadline(time.Now().Add(5 * time.Second))
	client.Write(input) // fails early when the server hangs up first
	client.Close()
	wg.Wait()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("server did not end the connection for input %q", input)
	}
}

func fuzzServer(t testing.TB) *Server {
	srv, err := NewServer(Options{
		Exports: []ExportConfig{
			{Name: "mem", Description: "fuzz", Device: newMemDev(1<<20, allCaps), Default: true},
			{Name: "ro", Device: newMemDev(64<<10, 0), ReadOnly: true},
		},
		HandshakeTimeout: 2 * time.Second,
		Logger:           slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// handshakeBytes is a client's whole handshake: flags, the given options,
// then GO for "mem".
func handshakeBytes(opts ...[]byte) []byte {
	b := be.AppendUint32(nil, wire.FlagCFixedNewstyle|wire.FlagCNoZeroes)
	for _, o := range opts {
		b = append(b, o...)
	}
	return append(b, optionBytes(wire.OptGo, wire.AppendInfoRequest(nil, "mem"))...)
}

func optionBytes(opt uint32, data []byte) []byte { return wire.AppendOption(nil, opt, data) }

// optionHeader is the header of an option alone, which may claim more
// data than follows it.
func optionHeader(opt, length uint32) []byte {
	b := make([]byte, wire.OptionHeaderLen)
	wire.PutOption(b, opt, length)
	return b
}

// requestBytes is a request: its header, then payload.
func requestBytes(cmd, flags uint16, cookie, off uint64, length uint32, payload []byte) []byte {
	b := wire.AppendRequest(nil, wire.Request{Flags: flags, Type: cmd, Cookie: cookie, Offset: off, Length: length})
	return append(b, payload...)
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// FuzzOptionParser feeds arbitrary bytes as the client's side of the
// handshake.
func FuzzOptionParser(f *testing.F) {
	flags := be.AppendUint32(nil, wire.FlagCFixedNewstyle|wire.FlagCNoZeroes)
	f.Add([]byte{})
	f.Add(flags)
	f.Add(handshakeBytes())
	f.Add(cat(flags, optionBytes(wire.OptList, nil), optionBytes(wire.OptAbort, nil)))
	f.Add(cat(flags, optionBytes(wire.OptInfo, wire.AppendInfoRequest(nil, "mem", wire.InfoName, wire.InfoDescription, wire.InfoBlockSize, 9))))
	f.Add(cat(flags, optionBytes(wire.OptStructuredReply, nil),
		optionBytes(wire.OptListMetaContext, wire.AppendMetaContextRequest(nil, "mem")),
		optionBytes(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, "mem", wire.MetaBaseAllocation, "base:")),
		optionBytes(wire.OptGo, wire.AppendInfoRequest(nil, "", wire.InfoName))))
	f.Add(cat(flags, optionBytes(wire.OptExportName, []byte("ro"))))
	f.Add(cat(flags, optionBytes(wire.OptExportName, []byte("nope"))))
	f.Add(cat(flags, optionBytes(99, []byte("junk")), optionBytes(wire.OptGo, []byte{0, 0, 0, 200})))
	f.Add(cat(flags, optionHeader(wire.OptGo, 1<<32-1)))
	f.Add(cat(flags, optionBytes(wire.OptSetMetaContext, be.AppendUint32(wire.AppendString(nil, "mem"), 1<<30))))
	srv := fuzzServer(f)
	f.Fuzz(func(t *testing.T, input []byte) {
		fuzzServe(t, srv, input)
	})
}

// FuzzRequestDecoder feeds arbitrary bytes as transmission-phase requests,
// after a valid handshake. The first byte picks the handshake: simple
// replies, structured replies, or structured with base:allocation.
func FuzzRequestDecoder(f *testing.F) {
	w := requestBytes(wire.CmdWrite, wire.CmdFlagFUA, 1, 4096, 5, []byte("hello"))
	r := requestBytes(wire.CmdRead, 0, 2, 4096, 5, nil)
	f.Add([]byte{0})
	f.Add(cat([]byte{0}, w, r, requestBytes(wire.CmdDisc, 0, 3, 0, 0, nil)))
	f.Add(cat([]byte{1}, w, r, requestBytes(wire.CmdRead, wire.CmdFlagDF, 3, 0, 1<<20, nil)))
	f.Add(cat([]byte{2}, w, requestBytes(wire.CmdBlockStatus, wire.CmdFlagReqOne, 3, 0, 1<<20, nil),
		requestBytes(wire.CmdBlockStatus, 0, 4, 0, 1<<20, nil)))
	f.Add(cat([]byte{0}, requestBytes(wire.CmdWrite, 0, 1, 0, MaxPayload, []byte("short"))))
	f.Add(cat([]byte{0}, requestBytes(wire.CmdWrite, 0, 1, 0, MaxPayload+1, nil)))
	f.Add(cat([]byte{0}, requestBytes(99, 0xffff, 1, 1<<63, 1<<32-1, nil), r))
	f.Add(cat([]byte{1}, requestBytes(wire.CmdTrim, 0, 1, 0, 1<<32-1, nil), requestBytes(wire.CmdWriteZeroes, wire.CmdFlagNoHole|wire.CmdFlagFastZero, 2, 0, 4096, nil),
		requestBytes(wire.CmdFlush, 0, 3, 0, 0, nil), requestBytes(wire.CmdCache, 0, 4, 0, 4096, nil)))
	f.Add(cat([]byte{0}, w[:20]))
	f.Add(cat([]byte{0}, []byte("GET / HTTP/1.1\r\n\r\n")))

	prefixes := [][]byte{
		handshakeBytes(),
		handshakeBytes(optionBytes(wire.OptStructuredReply, nil)),
		handshakeBytes(optionBytes(wire.OptStructuredReply, nil), optionBytes(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, "mem", wire.MetaBaseAllocation))),
	}
	srv := fuzzServer(f)
	f.Fuzz(func(t *testing.T, input []byte) {
		if len(input) == 0 {
			return
		}
		prefix := prefixes[int(input[0])%len(prefixes)]
		fuzzServe(t, srv, cat(prefix, input[1:]))
	})
}
