package nbd

import (
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stackd/stackd/nbd/wire"
)

// TestPerClientConnections: one client that takes every connection it
// can, with silent sockets that never finish their handshake and with idle
// connections after GO, and that keeps reconnecting as it is refused,
// holds only its own share of the slots: a client from another address
// connects and is served at once. Without the per-client cap the first
// client takes all MaxConnections and the second is refused.
func TestPerClientConnections(t *testing.T) {
	obs := &countingObserver{}
	o := oneExport(newMemDev(1<<20, allCaps))
	o.MaxConnections = 64
	o.HandshakeTimeout = 10 * time.Minute // the silent sockets hold their slots for the whole test
	o.Observer = obs
	ts := startServer(t, o, "tcp")
	perClient := ts.srv.opts.MaxConnectionsPerClient
	if perClient != DefaultPerClient(64) || perClient >= 64 {
		t.Fatalf("MaxConnectionsPerClient %d, want the default %d, below MaxConnections", perClient, DefaultPerClient(64))
	}
	first := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	second := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}

	// The first client tries for every slot of the server: half silent
	// after the greeting, half idle after GO.
	var held []*rawConn
	for i := range o.MaxConnections {
		r := dialRawFrom(t, ts, first)
		held = append(held, r)
		if i >= perClient {
			continue // refused (checked below); reading would block on a live slot
		}
		if i%2 == 0 {
			r.greet()
		} else {
			r.start("mem", false, false)
		}
	}
	waitFor(t, "the first client's connections to be counted", func() bool {
		st := ts.srv.Stats()
		return st.ConnsOpen == perClient && st.ConnsRejected == uint64(o.MaxConnections-perClient)
	})
	for _, r := range held[perClient:] {
		r.expectClosed()
	}

	// It goes on reconnecting as it is refused, all through the rest.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d := net.Dialer{Timeout: ioTimeout, LocalAddr: first}
		for range 10_000 { // bounded: the test ends it long before
			select {
			case <-stop:
				return
			default:
			}
			if nc, err := d.Dial(ts.network, ts.addr); err == nil {
				nc.Close()
			}
		}
	}()
	stopCycling := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopCycling()

	// The second client is served at once.
	r := dialRawFrom(t, ts, second)
	r.start("mem", false, false)
	r.request(wire.CmdRead, 0, 1, 0, 4096, nil)
	if code, _, _ := r.simple(4096); code != 0 {
		t.Fatalf("read from the second client: error %d", code)
	}

	obs.mu.Lock()
	refused := obs.refused[RefusedPerClient]
	full := obs.refused[RefusedMaxConnections]
	obs.mu.Unlock()
	if refused < o.MaxConnections-perClient || full != 0 {
		t.Errorf("refusals: %d per client (want at least %d), %d for a full server (want 0)",
			refused, o.MaxConnections-perClient, full)
	}

	// A held connection closing gives its client the slot back.
	stopCycling()
	held[1].nc.Close()
	key := clientOf(fakeRemote{first})
	waitFor(t, "the first client's slot to be given back", func() bool {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		return ts.srv.perClient[key] == perClient-1
	})
}

// TestClientOf: TCP clients are told apart by address alone, never by
// port, IPv4-mapped IPv6 included; unix clients by the peer's uid.
func TestClientOf(t *testing.T) {
	ts := startServer(t, oneExport(newMemDev(4096, 0)), "tcp")
	a, b := dialRaw(t, ts), dialRaw(t, ts)
	if ka, kb := clientOf(fakeRemote{a.nc.LocalAddr()}), clientOf(fakeRemote{b.nc.LocalAddr()}); ka != kb {
		t.Errorf("two connections from 127.0.0.1 are two clients: %+v, %+v", ka, kb)
	}
	mapped := &net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1"), Port: 1}
	if clientOf(fakeRemote{mapped}) != clientOf(fakeRemote{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2}}) {
		t.Errorf("IPv4-mapped IPv6 is another client than IPv4")
	}
	if clientOf(fakeRemote{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}) == clientOf(fakeRemote{mapped}) {
		t.Errorf("127.0.0.2 and 127.0.0.1 are one client")
	}

	us := startServer(t, oneExport(newMemDev(4096, 0)), "unix")
	u := dialRaw(t, us)
	u.greet()
	var got clientID
	waitFor(t, "the unix connection to be admitted", func() bool {
		us.srv.mu.Lock()
		defer us.srv.mu.Unlock()
		for c := range us.srv.conns {
			got = c.client
			return true
		}
		return false
	})
	if got.uid != int64(os.Getuid()) {
		t.Errorf("unix peer uid %d, want %d", got.uid, os.Getuid())
	}
}

// fakeRemote is a net.Conn whose RemoteAddr is addr; clientOf reads
// nothing else of a TCP connection.
type fakeRemote struct{ addr net.Addr }

func (f fakeRemote) RemoteAddr() net.Addr           { return f.addr }
func (fakeRemote) Read([]byte) (int, error)         { return 0, net.ErrClosed }
func (fakeRemote) Write([]byte) (int, error)        { return 0, net.ErrClosed }
func (fakeRemote) Close() error                     { return nil }
func (fakeRemote) LocalAddr() net.Addr              { return nil }
func (fakeRemote) SetDeadline(time.Time) error      { return nil }
func (fakeRemote) SetReadDeadline(time.Time) error  { return nil }
func (fakeRemote) SetWriteDeadline(time.Time) error { return nil }
