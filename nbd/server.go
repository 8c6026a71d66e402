// Package nbd is a Network Block Device server: it serves exports
// (anything that accepts bios: a stack of layers or a bare target). The
// wire format it speaks is package nbd/wire, which the client, package
// nbd/client, shares.
//
// The server follows the shape of net/http and x/net/http2: per
// connection, a reader goroutine decodes requests and submits each to the
// export's device as a top bio without waiting for earlier ones, and the
// replies leave as the bios complete, out of order, batched into one
// writev. Replies that complete while the reader works (a device that
// completes inside Submit) are sent by the reader itself before it next
// blocks; those that complete while it waits, by a writer goroutine
// (replies.go). It knows nothing of layers: the device is a bioset.Queue.
//
// Everything a client can make the server hold is bounded: connections
// (Options.MaxConnections, and Options.MaxConnectionsPerClient of them per
// client), requests in flight per connection (a BioSet of
// Options.MaxInFlight top bios), payload bytes across the server
// (Options.PayloadBudget; when spent, readers stop reading their sockets)
// and per connection (Options.ConnectionPayload), and option data during
// the handshake (maxOptionLen). docs/DESIGN.md, "Memory bounds", lists
// each bound and where it is enforced.
package nbd

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/nbd/wire"
)

// Limits. The exported ones are defaults or protocol facts users size
// their configuration by.
const (
	// MaxPayload is the largest READ or WRITE the server accepts: 2^25,
	// the spec's default maximum payload, which any client may use without
	// negotiating block sizes, and the most the Linux client sends.
	MaxPayload = wire.DefaultMaxPayload

	// DefaultMaxConnections is Options.MaxConnections when zero: far above
	// what `nbd-client -C` or a fio job opens, low enough that the fixed
	// cost of a connection in transmission (socket buffers, MaxInFlight
	// top bios and request slots: about 130 KiB at the defaults) stays
	// bounded.
	DefaultMaxConnections = 1024
	// DefaultHandshakeTimeout is Options.HandshakeTimeout when zero: a
	// real client finishes its handshake in a few round trips.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxInFlight is Options.MaxInFlight when zero: twice what the
	// Linux client keeps in flight, as many as a deep fio iodepth.
	DefaultMaxInFlight = 256
	// MinMaxInFlight is the least MaxInFlight allowed: the Linux client
	// keeps up to 128 requests in flight on one connection.
	MinMaxInFlight = 128
	// DefaultReplyTimeout is Options.ReplyTimeout when zero. A client that
	// takes a minute to accept a reply it asked for has stopped reading:
	// the Linux client and libnbd read replies as they come.
	DefaultReplyTimeout = time.Minute
	// MinReplyTimeout is the least ReplyTimeout allowed: the writer moves
	// the write deadline at most once per replyDeadlineSlack, so a shorter
	// timeout would be mostly slack.
	MinReplyTimeout = 2 * replyDeadlineSlack
	// DefaultMaxConnectionsPerClient caps Options.MaxConnectionsPerClient
	// when zero; the default is a quarter of MaxConnections, at most this,
	// and at least minDefaultPerClient (or MaxConnections, if fewer). A
	// quarter, so that one client that fills its share (with silent
	// half-open handshakes, or idle connections after GO) leaves three
	// quarters of the slots to everyone else. 64, because a real client
	// opens far fewer: `nbd-client -C` a handful, fio one per job.
	DefaultMaxConnectionsPerClient = 64
	// minDefaultPerClient is the least default per-client cap: a kernel
	// client attached with `nbd-client -C 4` must get its four
	// connections, however small a server's MaxConnections (a server of
	// a handful of slots has no room to share anyway).
	minDefaultPerClient = 4
	// DefaultPayloadBudget is Options.PayloadBudget when zero: room for
	// eight maximum-size requests, or many small ones, at once.
	DefaultPayloadBudget = 256 << 20

	// maxOptionLen bounds the option data the server reads and parses
	// during the handshake. Strings are at most 4096 bytes by the spec, so
	// a real option (GO, or a meta-context query list) fits easily.
	maxOptionLen = 64 << 10
	// maxOptionDiscard bounds the option data the server reads and throws
	// away to answer an oversized option with NBD_REP_ERR_TOO_BIG. A
	// longer option is treated as an attack: hard disconnect.
	maxOptionDiscard = 1 << 20
	// maxHandshakeOptions bounds the options in one handshake. Real
	// clients send fewer than ten; a client that sends more is looping.
	maxHandshakeOptions = 1024
	// maxExtents is the number of BLOCK_STATUS result slots a request
	// gives its device: enough for any sane fragmentation of a 32 MiB
	// range at 128 KiB granularity, while the reply stays a few KiB. The
	// spec lets the server answer for a prefix of the range.
	maxExtents = 256

	// Block sizes advertised by NBD_INFO_BLOCK_SIZE: byte granularity (the
	// devices read-modify-write where they must), 4 KiB preferred.
	blockSizeMin       = 1
	blockSizePreferred = 4096

	// readBufSize holds a few dozen request headers; WRITE payloads larger
	// than what is buffered are read straight into their payload buffer.
	readBufSize = 16 << 10
	// unixSendBufSize is the send buffer asked for on unix socket
	// connections. Linux's default (net.core.wmem_default, about 208 KiB)
	// makes a 1 MiB READ reply leave in five or more writes, each after a
	// wait for the client to drain the socket; with a whole reply's room
	// the writer sends it at once, and 1 MiB sequential reads measured
	// about 1.2x faster (bench/ab.sh). TCP sockets are left alone: their
	// buffers grow by themselves (net.ipv4.tcp_wmem), and setting one
	// turns that off. The cost is kernel memory per connection, at most
	// this while a client is slow to read, as a TCP connection may hold.
	unixSendBufSize = 1 << 20
	// writeBufSize buffers the handshake's replies, a few small ones per
	// option; transmission replies go out as iovec batches (replies.go).
	writeBufSize = 4 << 10
	// tlsWriteBufSize is the writer's buffer over TLS: the most plaintext
	// one TLS record carries, so that small replies leave in full records.
	tlsWriteBufSize = 16 << 10
)

// Export is what a server serves: a device that accepts bios. A stack's
// top device (package stack) and a bare target both satisfy it.
type Export interface {
	bioset.Queue
	// Size in bytes, read once per connection at the end of its handshake.
	Size() uint64
	// Caps reports the optional operations the device supports; the
	// export advertises only those. Read once per connection.
	Caps() bioset.Caps
}

// ExportConfig describes one export.
type ExportConfig struct {
	// Name is what clients ask for. Non-empty, at most 4096 bytes,
	// unique within a server.
	Name string
	// Description is shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION.
	Description string
	// Device serves the export's bios.
	Device Export
	// ReadOnly makes the export advertise NBD_FLAG_READ_ONLY and reject
	// WRITE, TRIM and WRITE_ZEROES with EPERM.
	ReadOnly bool
	// Default makes this the export selected by an empty name. At most
	// one export may be the default.
	Default bool
	// TLSRequired serves the export only over TLS (SELECTIVETLS, with
	// Options.TLSMode TLSOptional): before NBD_OPT_STARTTLS, INFO and GO
	// get NBD_REP_ERR_TLS_REQD, EXPORT_NAME ends the session, and LIST
	// leaves the export out. Needs Options.TLS.
	TLSRequired bool
	// Allow lists who may open the export; a client that matches no rule
	// gets NBD_REP_ERR_POLICY for it (EXPORT_NAME: the session ends), and
	// LIST leaves it out. Empty: everyone the listener admits.
	Allow []AllowRule
}

// Options configure a Server. The zero value of each field selects its
// default.
type Options struct {
	// Exports the server offers. At least one.
	Exports []ExportConfig
	// MaxConnections caps the connections open at once (handshake and
	// transmission). Over the cap a new connection is accepted and closed
	// at once, and logged. Default DefaultMaxConnections.
	MaxConnections int
	// HandshakeTimeout bounds the whole handshake, from accept to the
	// start of transmission. Default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MaxInFlight caps the requests of one connection that have been
	// decoded but not yet answered; beyond it the connection's reader
	// waits. At least MinMaxInFlight. Default DefaultMaxInFlight.
	MaxInFlight int
	// PayloadBudget caps the bytes of payload buffers all connections
	// hold at once, counted in whole buffer size classes. When spent,
	// readers stop reading their sockets until replies free some. At
	// least MaxPayload. Default DefaultPayloadBudget.
	PayloadBudget int64
	// MaxConnectionsPerClient caps the connections open at once from one
	// client: one source IP address on TCP, one peer uid on unix sockets
	// (SO_PEERCRED). Over the cap a new connection is closed at once, so
	// that one client cannot take every slot of MaxConnections. Default:
	// a quarter of MaxConnections, at most DefaultMaxConnectionsPerClient.
	MaxConnectionsPerClient int
	// ConnectionPayload caps the bytes of payload buffers one connection
	// holds at once, within PayloadBudget: beyond it the connection's
	// reader waits for its own replies to be sent. It keeps one client
	// that stops reading its replies, or reads them slowly, from holding
	// the whole budget while every other connection waits. At least
	// MaxPayload, at most PayloadBudget. Default: a quarter of
	// PayloadBudget, and at least MaxPayload.
	ConnectionPayload int64
	// ReplyTimeout bounds how long writing a reply to a client may take.
	// A client that stops reading its replies while its requests hold
	// payload buffers would otherwise keep that share of PayloadBudget
	// from every other connection forever; past the timeout its
	// connection is closed and the buffers return once the device is
	// done with them. Default DefaultReplyTimeout.
	ReplyTimeout time.Duration
	// Logger receives one line per connection opened and closed and per
	// failed handshake, never one per request. Default: discard.
	Logger *slog.Logger
	// Observer receives events for metrics. nil: none.
	Observer Observer
	// TLS is the server's side of NBD_OPT_STARTTLS: its certificate, and
	// with ClientCAs and ClientAuth the client certificates it verifies.
	// Its GetConfigForClient may hand out a newer configuration per
	// handshake, so that certificates can be replaced while connections
	// stay. Versions below TLS 1.2 are never accepted. Needed unless
	// TLSMode is TLSOff.
	TLS *tls.Config
	// TLSMode is how TLS is offered; see TLSMode. Default TLSOff.
	TLSMode TLSMode
}

// ServerStats is a snapshot of a server's counters.
type ServerStats struct {
	// ConnsOpen is the number of connections open now, handshake
	// included; ConnsAccepted the number ever accepted under the caps, and
	// ConnsRejected the number closed at once because of one
	// (MaxConnections or MaxConnectionsPerClient) or a listener's allow
	// list.
	ConnsOpen     int
	ConnsAccepted uint64
	ConnsRejected uint64
	// PayloadInUse is the bytes of payload buffers held now, of
	// PayloadCapacity; PayloadPeak the most ever held at once.
	// PayloadWaits counts the times a reader had to wait for budget.
	PayloadInUse    int64
	PayloadCapacity int64
	PayloadPeak     int64
	PayloadWaits    uint64
	// PayloadShareWaits counts the times a reader had to wait because its
	// connection held its whole share (ConnectionPayload).
	PayloadShareWaits uint64
}

// export is an ExportConfig ready to serve.
type export struct {
	ExportConfig
	allow *allowList // nil: everyone
}

// Server serves NBD exports. Create it with NewServer.
type Server struct {
	opts      Options
	log       *slog.Logger
	obs       Observer
	tls       *tls.Config // nil: TLSOff
	exports   []*export   // in configuration order, for NBD_OPT_LIST
	byName    map[string]*export
	defExport *export
	budget    *budget

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	perClient map[clientID]int // open connections per client, guarded by mu; no zero entries
	shutdown  bool             // guarded by mu; no new connections once set
	connWG    sync.WaitGroup   // one per conn in conns; Add only under mu while !shutdown

	accepted   atomic.Uint64
	shareWaits atomic.Uint64 // readers that waited for their connection's payload share
	rejected   atomic.Uint64
	connIDs    atomic.Uint64
}

// NewServer checks o and returns a server ready to Serve.
func NewServer(o Options) (*Server, error) {
	if len(o.Exports) == 0 {
		return nil, errors.New("nbd: no exports")
	}
	o = o.WithDefaults()
	switch {
	case o.ReplyTimeout < MinReplyTimeout:
		return nil, fmt.Errorf("nbd: ReplyTimeout %v < %v", o.ReplyTimeout, MinReplyTimeout)
	case o.MaxConnections < 0:
		return nil, fmt.Errorf("nbd: MaxConnections %d < 0", o.MaxConnections)
	case o.MaxConnectionsPerClient < 0 || o.MaxConnectionsPerClient > o.MaxConnections:
		return nil, fmt.Errorf("nbd: MaxConnectionsPerClient %d not in [1, MaxConnections %d]",
			o.MaxConnectionsPerClient, o.MaxConnections)
	case o.ConnectionPayload < MaxPayload || o.ConnectionPayload > o.PayloadBudget:
		return nil, fmt.Errorf("nbd: ConnectionPayload %d not in [MaxPayload %d, PayloadBudget %d]",
			o.ConnectionPayload, MaxPayload, o.PayloadBudget)
	case o.HandshakeTimeout < 0:
		return nil, fmt.Errorf("nbd: HandshakeTimeout %v < 0", o.HandshakeTimeout)
	case o.MaxInFlight < MinMaxInFlight:
		return nil, fmt.Errorf("nbd: MaxInFlight %d < %d (the Linux client keeps %d requests in flight)",
			o.MaxInFlight, MinMaxInFlight, MinMaxInFlight)
	case o.PayloadBudget < MaxPayload:
		return nil, fmt.Errorf("nbd: PayloadBudget %d < MaxPayload %d: a maximum-size request could never run",
			o.PayloadBudget, MaxPayload)
	}
	s := &Server{
		opts:      o,
		log:       o.Logger,
		obs:       o.Observer,
		byName:    make(map[string]*export),
		budget:    newBudget(o.PayloadBudget),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
		perClient: make(map[clientID]int),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.TLSMode < TLSOff || o.TLSMode > TLSRequired:
		return nil, fmt.Errorf("nbd: %v", o.TLSMode)
	case o.TLSMode != TLSOff && o.TLS == nil:
		return nil, fmt.Errorf("nbd: TLSMode %v needs a TLS configuration", o.TLSMode)
	case o.TLSMode != TLSOff:
		// doc/proto.md, "TLS versions": TLS 1.2 MUST be supported, older
		// versions SHOULD NOT be by default; here they never are.
		s.tls = o.TLS.Clone()
		s.tls.MinVersion = max(s.tls.MinVersion, tls.VersionTLS12)
		if get := s.tls.GetConfigForClient; get != nil {
			// The configuration a handshake gets may be another one;
			// the floor holds for it too.
			s.tls.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
				c, err := get(hi)
				if c != nil && c.MinVersion < tls.VersionTLS12 {
					c = c.Clone()
					c.MinVersion = tls.VersionTLS12
				}
				return c, err
			}
		}
	}
	for i, ec := range o.Exports {
		switch {
		case ec.Name == "":
			return nil, fmt.Errorf("nbd: export %d has no name", i)
		case len(ec.Name) > wire.MaxStringLen:
			return nil, fmt.Errorf("nbd: export name %.20q... longer than %d bytes", ec.Name, wire.MaxStringLen)
		case len(ec.Description) > wire.MaxStringLen:
			return nil, fmt.Errorf("nbd: export %q: description longer than %d bytes", ec.Name, wire.MaxStringLen)
		case ec.Device == nil:
			return nil, fmt.Errorf("nbd: export %q has no device", ec.Name)
		case s.byName[ec.Name] != nil:
			return nil, fmt.Errorf("nbd: export %q configured twice", ec.Name)
		}
		if ec.TLSRequired && s.tls == nil {
			return nil, fmt.Errorf("nbd: export %q requires TLS, and TLSMode is off", ec.Name)
		}
		allow, err := newAllowList(ec.Allow)
		if err != nil {
			return nil, fmt.Errorf("nbd: export %q: %w", ec.Name, err)
		}
		e := &export{ExportConfig: ec, allow: allow}
		if ec.Default {
			if s.defExport != nil {
				return nil, fmt.Errorf("nbd: exports %q and %q are both the default", s.defExport.Name, ec.Name)
			}
			s.defExport = e
		}
		s.exports = append(s.exports, e)
		s.byName[ec.Name] = e
	}
	return s, nil
}

// WithDefaults returns o with each zero limit set to its default, the two
// shares after the limits they are shares of. NewServer applies it; a
// configuration loader shows users the limits in effect with it.
func (o Options) WithDefaults() Options {
	o.MaxConnections = cmp.Or(o.MaxConnections, DefaultMaxConnections)
	o.HandshakeTimeout = cmp.Or(o.HandshakeTimeout, DefaultHandshakeTimeout)
	o.MaxInFlight = cmp.Or(o.MaxInFlight, DefaultMaxInFlight)
	o.PayloadBudget = cmp.Or(o.PayloadBudget, DefaultPayloadBudget)
	o.ReplyTimeout = cmp.Or(o.ReplyTimeout, DefaultReplyTimeout)
	o.MaxConnectionsPerClient = cmp.Or(o.MaxConnectionsPerClient, DefaultPerClient(o.MaxConnections))
	o.ConnectionPayload = cmp.Or(o.ConnectionPayload, DefaultConnectionPayload(o.PayloadBudget))
	return o
}

// DefaultPerClient is MaxConnectionsPerClient's default for a server of
// maxConns connections (see DefaultMaxConnectionsPerClient).
func DefaultPerClient(maxConns int) int {
	return max(min(minDefaultPerClient, maxConns), min(DefaultMaxConnectionsPerClient, maxConns/4))
}

// DefaultConnectionPayload is ConnectionPayload's default for a payload
// budget of budget bytes: a quarter, so that one connection that never
// reads its replies leaves three quarters to the others, and never less
// than one maximum-size request.
func DefaultConnectionPayload(budget int64) int64 {
	return min(budget, max(MaxPayload, budget/4))
}

// lookup returns the export a client's name selects, or nil.
func (s *Server) lookup(name string) *export {
	if name == "" {
		return s.defExport
	}
	return s.byName[name]
}

// Serve accepts connections on l (TCP or unix) and serves each on its own
// goroutines until l fails or Shutdown is called. After Shutdown it
// returns nil; otherwise the listener's error. Serve closes l.
func (s *Server) Serve(l net.Listener) error {
	return s.ServeListener(l, ListenerOptions{})
}

// ServeListener is Serve with options for this listener: its allow list.
func (s *Server) ServeListener(l net.Listener, o ListenerOptions) error {
	allow, err := newListenerAllow(o.Allow)
	if err != nil {
		l.Close()
		return err
	}
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isShutdown() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// As net/http does: a transient failure (out of file
				// descriptors, say) is retried with a growing pause.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept failed; retrying", "err", err, "delay", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		s.startConn(nc, allow)
	}
}

// startConn serves nc on a goroutine of its own if admit lets it in.
func (s *Server) startConn(nc net.Conn, allow listenerAllow) {
	if c := s.admit(nc, allow); c != nil {
		go c.serve()
	}
}

// serveConn serves nc on the calling goroutine, for tests that bring
// their own connection (net.Pipe).
func (s *Server) serveConn(nc net.Conn) {
	if c := s.admit(nc, nil); c != nil {
		c.serve()
	}
}

// admit registers nc as a connection, or closes it at once when the
// listener's allow list leaves its address out, the server is shutting
// down, MaxConnections are open, or its client has MaxConnectionsPerClient
// open.
//
// The per-client cap is checked here, at accept, before the connection
// costs anything but a file descriptor: the slots are what a client takes
// with silent sockets that never finish their handshake (each holds a slot
// for HandshakeTimeout, and it can reopen each one as it is closed), or
// with idle connections after GO, which must not time out because kernel
// clients idle for hours. Either way it takes only its own share.
//
// A listener's allow list is checked first, before anything of the
// connection is counted: a refused address costs one accept and a close.
func (s *Server) admit(nc net.Conn, allow listenerAllow) *conn {
	if !allow.admits(nc) {
		s.refuse(nc, RefusedListenAllow)
		return nil
	}
	cl, gid := identify(nc)
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		nc.Close()
		return nil
	}
	refusal := ""
	switch {
	case len(s.conns) >= s.opts.MaxConnections:
		refusal = RefusedMaxConnections
	case s.perClient[cl] >= s.opts.MaxConnectionsPerClient:
		refusal = RefusedPerClient
	}
	if refusal != "" {
		s.mu.Unlock()
		s.refuse(nc, refusal)
		return nil
	}
	s.perClient[cl]++
	c := newConn(s, nc)
	c.client, c.gid = cl, gid
	s.conns[c] = struct{}{}
	// Under mu and only while !shutdown: Shutdown's Wait starts after it
	// sets shutdown, so no Add can race with it.
	s.connWG.Add(1)
	s.mu.Unlock()
	s.accepted.Add(1)
	if s.obs != nil {
		s.obs.ConnOpened()
	}
	return c
}

// refuse closes a connection admit turned away, and counts it. The
// Observer logs it, rate-limited: a client refused in a loop must not
// flood the log (without an Observer it is logged at debug level only).
func (s *Server) refuse(nc net.Conn, reason string) {
	remote := nc.RemoteAddr().String()
	nc.Close()
	s.rejected.Add(1)
	if s.obs != nil {
		s.obs.ConnRefused(reason, remote)
		return
	}
	s.log.Debug("nbd: connection refused", "reason", reason, "remote", remote)
}

// connDone forgets c once it has ended completely.
func (s *Server) connDone(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	if s.perClient[c.client]--; s.perClient[c.client] <= 0 {
		delete(s.perClient, c.client)
	}
	s.mu.Unlock()
	if s.obs != nil {
		s.obs.ConnClosed()
	}
	s.connWG.Done()
}

func (s *Server) isShutdown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

// Shutdown stops the server gracefully: it closes the listeners, ends
// handshakes in progress, stops every connection from reading new
// requests, lets the requests already submitted finish and their replies
// be sent, then closes the connections. It returns nil once every
// connection has ended.
//
// If ctx ends first, or on a second call, connections are closed at once
// (their in-flight requests still complete in the device, and their
// buffers are released only then, in the background) and Shutdown returns
// ctx.Err() without waiting for that.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	again := s.shutdown
	s.shutdown = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		if again {
			c.closeNow()
		} else {
			c.beginClose()
		}
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.closeNow()
	}
	s.mu.Unlock()
	return ctx.Err()
}

// Stats returns the server's counters.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	open := len(s.conns)
	s.mu.Unlock()
	b := s.budget.stats()
	return ServerStats{
		ConnsOpen:         open,
		ConnsAccepted:     s.accepted.Load(),
		ConnsRejected:     s.rejected.Load(),
		PayloadInUse:      b.used,
		PayloadCapacity:   b.capacity,
		PayloadPeak:       b.peak,
		PayloadWaits:      b.waits,
		PayloadShareWaits: s.shareWaits.Load(),
	}
}
