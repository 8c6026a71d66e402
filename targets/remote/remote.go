// Package remote is the nbd target: a leaf whose bytes live on another NBD
// server (stackd, nbdkit, qemu-nbd, nbd-server), reached over TCP or a
// unix socket through package nbd/client. It sees blocks only as package
// bioset describes them and speaks NBD only through nbd/client and
// nbd/wire; it does not import package nbd, the server.
//
// # In flight
//
// A Remote has one connection, or up to Options.Connections when the
// remote advertises NBD_FLAG_CAN_MULTI_CONN (without it, NBD promises no
// consistency between connections, so a second one would be unsafe).
// Submit picks a connected connection round robin and queues the bio on
// it, under a short lock: it never waits for the network or for another
// bio (docs/DESIGN.md rule 8). Each connection's sender goroutine sends
// what is queued, up to maxInFlight requests at once, and up to maxBatch
// of them in one writev (client.StartBatch), so that a burst costs one
// system call rather than one per request; the rest wait in the queue. Replies complete bios on the client's reader goroutine, in
// Done, which takes only the connection's short lock, observes the
// latency and calls End: nothing there blocks or allocates (rule 6).
// Structured replies, and base:allocation for BLOCK_STATUS, are asked for
// on every connection.
//
// A WRITE's payload is written to the socket from the bio's buffer; a
// READ's data is read straight into the bio's buffer (the client copies
// only what it had buffered with the reply header). Nothing is copied in
// between, and no payload memory is held outside what the layers above
// already hold.
//
// # Fencing
//
// A connection the leg gives up on (a request timed out on it, or the
// client found it broken) is closed with a TCP reset (client.Reset,
// SO_LINGER 0), not a FIN. What the leg sent on it and the kernel has not
// yet delivered would otherwise stay queued in this host's kernel, which
// goes on sending it after the leg has moved on: to a remote that was
// stopped (SIGSTOP) and resumes, or across a link that comes back, where
// a retransmission can arrive seconds later. By then a mirror above may
// have failed the leg, taken newer writes on its other legs, restored
// and resynced this one; a late WRITE from the old connection would
// then overwrite resynced data with older bytes, and the legs would
// differ with nothing recording it. The same goes for one remote without
// a mirror: a retried WRITE answered on the new connection, then a newer
// WRITE to the same place, then the old copy arriving. Measured on Linux
// (a helper process stopped with SIGSTOP, and a veth pair whose far end
// was taken down): a FIN close left 3.7 MB in the sender's queue, all
// delivered once the peer ran again (and 78 KB across a cut cable,
// delivered once it was mended); a reset close discarded the sender's
// queue at once, and the peer received none of it.
//
// The limit: a reset cannot recall what the remote's kernel has already
// received. A stopped remote's socket receive queue (128 KB in the same
// measurement) survives the reset: when the process resumes it reads
// those requests, and only then the reset, and performs them. Nor can
// it recall requests the remote process has read and not yet performed.
// Both happen as soon as the remote runs again, before it can greet a
// new connection, so a mirror's resync, which needs a new connection,
// comes after them in practice; but nothing in NBD orders them, and a
// remote that reads the old connection's queue late would still apply
// it late. Over a unix socket there is no reset at all: a peer's queue
// is its own, and closing ours does not touch it.
//
// # TLS
//
// An nbds:// or nbds+unix:// URI sets Options.Secure, and Options.TLS
// must then be given (and may only be given then). Every connection
// sends NBD_OPT_STARTTLS first and runs the TLS handshake before any
// other option, so that neither the export's name nor its size crosses
// in plaintext; a remote that refuses STARTTLS, or whose certificate does
// not verify, fails the dial like an unreachable one, with backoff, and
// is never used in plaintext. The reason is the connection's LastError
// and, once per change, a line in the log. Over TLS the client encrypts
// from the bio's buffer: a WRITE's payload is copied once, into TLS
// records, and that is the only copy added.
//
// # Memory
//
// Per connection, fixed: the client's 16 KiB read buffer, its iovecs for
// one batch of maxBatch requests, its buffer for non-data reply chunks
// (which grows to the longest such chunk the remote sends, at most the
// client's maxChunkLen, 8 MiB: a BLOCK_STATUS reply),
// its cookie table of up to maxInFlight entries, and two goroutines. Per
// bio in flight, one request record of about 200 bytes, from a free list
// that grows to the number of bios in flight at once; that number is
// bounded by the pools of the layers above (docs/DESIGN.md rule 7), and a
// queue holds nothing else. A BLOCK_STATUS reply is written into the
// bio's own window of extents.
//
// # Failure semantics
//
//   - A request has Options.Timeout from Submit to be answered. One not
//     answered in time fails with EIO, whether it was still queued (no
//     connection) or sent (a remote that stopped answering); in the
//     second case the connection is also aborted, because a remote that
//     let one request time out is not trusted with the others: they are
//     sent again on the next connection, if their own time allows. The
//     abort is a TCP reset (see Fencing).
//   - A connection that drops (EOF, a reset, an aborted connection) is
//     re-dialled, with a backoff from backoffMin doubling to backoffMax;
//     each dial and handshake is bounded by dialTimeout. The requests in
//     flight on it are sent again, in full, on the new connection (see
//     retry for why that is safe), until their timeout runs out.
//   - A remote that breaks the protocol (a bad magic, a reply for a
//     cookie never sent, a chunk of the wrong length: whatever the client
//     reports as ErrProtocol) is treated the same way: the client
//     disconnects, and its requests are retried on the next connection or
//     fail with EIO at their timeout. Nothing the remote sends can crash
//     the daemon: the client checks every length before using it.
//   - An error the remote answers is the bio's error (EIO, ENOSPC, ...),
//     except ESHUTDOWN, which says that the remote is going away without
//     having performed the request: that request is retried like one on
//     a dropped connection.
//   - A remote unreachable when the stack is built does not stop the
//     daemon, provided the configuration gives the size (without it,
//     `stackd check` and `serve` must reach the remote to learn it). The
//     export starts, connections are dialled in the background, and
//     requests wait for one up to their timeout. Until the first
//     connection, the remote is assumed to take FLUSH and FUA and nothing
//     else optional; see adapt for a remote that turns out to lack them.
//   - A remote whose size differs from the configured one (or, after a
//     reconnect, from the one first learnt) is not used: the dial counts
//     as failed and is retried with backoff, so that a leg never serves
//     another disk's bytes.
package remote

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/intrusive"
	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/nbd/wire"
	"github.com/stackd/stackd/targets"
)

// Limits of a remote leg.
const (
	// maxInFlight is how many requests one connection sends before it
	// waits for replies: at least the 128 the Linux client keeps in
	// flight, and what a stackd remote serves at its default
	// max_in_flight.
	maxInFlight = 256
	// maxBatch is how many requests the sender writes in one writev.
	maxBatch = 64
	// backoffMin and backoffMax bound the wait between failed dials.
	backoffMin = 50 * time.Millisecond
	backoffMax = 2 * time.Second
	// maxDialTimeout bounds one dial and handshake: a remote that takes
	// longer to greet is down, whatever the request timeout.
	maxDialTimeout = 5 * time.Second
	// DefaultTimeout is Options.Timeout when none is given.
	DefaultTimeout = 30 * time.Second
	// DefaultPort is NBD's port, for a URI that names none.
	DefaultPort = "10809"
)

// Options configure New.
type Options struct {
	// Network ("tcp" or "unix"), Address and Export name the remote;
	// ParseURI fills them from a URI.
	Network, Address, Export string
	// Connections is how many connections to open when the remote
	// advertises CAN_MULTI_CONN; 1 otherwise (0 means 1).
	Connections int
	// Timeout is how long a request may go unanswered (0:
	// DefaultTimeout).
	Timeout time.Duration
	// Size is the remote's size in bytes; 0 learns it from the first
	// connection, which must then succeed in New.
	Size uint64
	// Secure says the URI was nbds:// or nbds+unix://: every connection
	// must upgrade with STARTTLS, under TLS, before anything else, and a
	// remote that refuses is not used (no plaintext fallback). New
	// refuses Secure without TLS, and TLS without Secure, so that the
	// URI alone says whether the leg is encrypted.
	Secure bool
	// TLS verifies the remote (RootCAs, ServerName) and may present a
	// client certificate. An empty ServerName is the URI's host, or
	// "localhost" for a unix socket, whose server is on this host.
	TLS *tls.Config
	// Log receives the connections' changes (a dial that fails, and
	// with which error, a connection up or lost); nil discards them.
	Log *slog.Logger
}

// Target is the URI form of the options, for messages.
func (o Options) Target() string {
	s := "nbd"
	if o.Secure {
		s = "nbds"
	}
	if o.Network == "unix" {
		return s + "+unix:///" + o.Export + "?socket=" + o.Address
	}
	return s + "://" + o.Address + "/" + o.Export
}

// ParseURI reads an NBD URI, nbd://HOST[:PORT]/EXPORT or
// nbd+unix:///EXPORT?socket=PATH, or their TLS forms nbds:// and
// nbds+unix://, into o's Network, Address, Export and Secure.
func ParseURI(s string) (o Options, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return o, fmt.Errorf("uri %q: %v", s, err)
	}
	o.Export = strings.TrimPrefix(u.Path, "/")
	scheme := u.Scheme
	if plain, ok := strings.CutPrefix(scheme, "nbds"); ok {
		o.Secure, scheme = true, "nbd"+plain
	}
	switch scheme {
	case "nbd":
		if u.Host == "" || u.Hostname() == "" {
			return o, fmt.Errorf("uri %q names no host; want %s://HOST[:PORT]/EXPORT", s, u.Scheme)
		}
		port := u.Port()
		if port == "" {
			port = DefaultPort
		}
		o.Network, o.Address = "tcp", joinHostPort(u.Hostname(), port)
		if len(u.Query()) > 0 {
			return o, fmt.Errorf("uri %q: %s:// takes no query", s, u.Scheme)
		}
	case "nbd+unix":
		q := u.Query()
		o.Network, o.Address = "unix", q.Get("socket")
		if u.Host != "" {
			return o, fmt.Errorf("uri %q: %s:// names no host; want %s:///EXPORT?socket=PATH", s, u.Scheme, u.Scheme)
		}
		if o.Address == "" || len(q) != 1 {
			return o, fmt.Errorf("uri %q: want %s:///EXPORT?socket=PATH and no other query", s, u.Scheme)
		}
	default:
		return o, fmt.Errorf("uri %q: scheme %q is not nbd, nbd+unix, nbds or nbds+unix", s, u.Scheme)
	}
	return o, nil
}

// check refuses options whose URI and TLS disagree.
func (o Options) check() error {
	switch {
	case o.Secure && o.TLS == nil:
		return fmt.Errorf("%s needs TLS settings (a CA to verify the remote)", o.Target())
	case !o.Secure && o.TLS != nil:
		return fmt.Errorf("%s is plaintext, yet TLS settings are given; use nbds://", o.Target())
	}
	return nil
}

// clientOptions are the client's options for one connection: TLS with
// the server name filled in, at TLS 1.2 at least (doc/proto.md, "TLS
// versions").
func (o Options) clientOptions(c client.Options) client.Options {
	c.ExportName = o.Export
	if o.TLS == nil {
		return c
	}
	t := o.TLS.Clone()
	if t.ServerName == "" {
		t.ServerName = "localhost"
		if o.Network != "unix" {
			if host, _, err := net.SplitHostPort(o.Address); err == nil {
				t.ServerName = host
			}
		}
	}
	t.MinVersion = max(t.MinVersion, tls.VersionTLS12)
	c.TLS = t
	return c
}

func joinHostPort(host, port string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}

func (o Options) timeout() time.Duration {
	if o.Timeout <= 0 {
		return DefaultTimeout
	}
	return o.Timeout
}

// dialTimeout bounds one dial and handshake.
func (o Options) dialTimeout() time.Duration { return min(o.timeout(), maxDialTimeout) }

// Probe dials the remote once, within bound, and returns its size and
// transmission flags, for the host check of a configuration.
func Probe(o Options, bound time.Duration) (size uint64, flags uint16, err error) {
	if err := o.check(); err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(bound, o.dialTimeout()))
	defer cancel()
	cl, err := client.Dial(ctx, o.Network, o.Address, o.clientOptions(client.Options{}))
	if err != nil {
		return 0, 0, err
	}
	defer cl.Close()
	return cl.Size(), cl.Flags(), nil
}

// The states of a connection, as State and the metrics name them.
const (
	StateConnecting = "connecting" // dialling, the first time or after backoff
	StateConnected  = "connected"  // in transmission
	StateBackoff    = "backoff"    // the last dial failed or the connection dropped; waiting to dial again
	StateClosed     = "closed"     // Close was called
	stateUnused     = "unused"     // a connection beyond the first, while the remote does not allow many
)

// The states' numbers, kept in conn.state.
const (
	connStateConnecting int32 = iota
	connStateConnected
	connStateBackoff
	connStateClosed
	connStateUnused
)

// StateNames lists the connection states, indexed by their number, for
// the metrics' state gauge.
var StateNames = [...]string{StateConnecting, StateConnected, StateBackoff, StateClosed, stateUnused}

// Errors a Remote records as a connection's cause of failure.
var (
	errTimedOut = errors.New("remote: a request went unanswered for the timeout; connection aborted")
	errClosing  = errors.New("remote: closing")
)

// Remote is an nbd target.
type Remote struct {
	o       Options
	size    uint64
	caps    bioset.Caps
	timeout time.Duration
	conns   []*conn
	active  atomic.Int32  // how many of conns are used: 1, or all with CAN_MULTI_CONN
	next    atomic.Uint32 // round robin over the active connections
	multi   sync.Once     // starts the other connections

	freeMu sync.Mutex
	free   reqList // request records not in use

	errors, retried, timedOut, reconnects atomic.Uint64
	inFlight                              atomic.Int64 // bios submitted and not ended
	latency                               targets.Latency

	stop    chan struct{}
	closing atomic.Bool
	wg      sync.WaitGroup
}

// New starts a remote leg. With o.Size it returns at once (after one
// dial, within the dial timeout, to learn what the remote can do), even
// if the remote cannot be reached; without it the first dial must
// succeed.
func New(o Options) (*Remote, error) {
	if err := o.check(); err != nil {
		return nil, fmt.Errorf("nbd: %w", err)
	}
	if o.Connections < 1 {
		o.Connections = 1
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	r := &Remote{o: o, size: o.Size, timeout: o.timeout(), stop: make(chan struct{})}
	r.active.Store(1)
	for i := range o.Connections {
		// idle: the sender starts by waiting for its first wake-up.
		c := &conn{r: r, id: i, wake: make(chan struct{}, 1), idle: true}
		c.state.Store(connStateUnused)
		r.conns = append(r.conns, c)
	}
	// The first connection is dialled here, so that the caps, and
	// without a configured size the size, come from the remote itself.
	cl, err := r.dial()
	switch {
	case err != nil && o.Size == 0:
		return nil, fmt.Errorf("nbd %s: %w (give a size for the export to start without the remote)", o.Target(), err)
	case err != nil:
		// Unreachable: see the package comment for what is assumed.
		r.caps = bioset.CapFlush | bioset.CapFUA
		r.conns[0].failed(err)
	default:
		r.caps = capsOf(cl)
	}
	r.wg.Add(1)
	go r.watchdog()
	r.start(r.conns[0], cl)
	if cl != nil {
		r.learnMulti(cl)
	}
	return r, nil
}

// capsOf is what the remote on cl can do.
func capsOf(cl *client.Client) bioset.Caps {
	f := cl.Flags()
	var c bioset.Caps
	add := func(flag uint16, cap bioset.Caps) {
		if f&flag != 0 {
			c |= cap
		}
	}
	add(wire.FlagSendFlush, bioset.CapFlush)
	add(wire.FlagSendFUA, bioset.CapFUA)
	add(wire.FlagSendTrim, bioset.CapTrim)
	add(wire.FlagSendWriteZeroes, bioset.CapWriteZeroes)
	if f&wire.FlagSendWriteZeroes != 0 {
		add(wire.FlagSendFastZero, bioset.CapFastZero)
	}
	add(wire.FlagSendCache, bioset.CapCache)
	if cl.HasMetaContext() {
		c |= bioset.CapBlockStatus
	}
	return c
}

// learnMulti opens the other connections once a remote advertises
// CAN_MULTI_CONN.
func (r *Remote) learnMulti(cl *client.Client) {
	if len(r.conns) == 1 || cl.Flags()&wire.FlagCanMultiConn == 0 {
		return
	}
	r.multi.Do(func() {
		for _, c := range r.conns[1:] {
			r.start(c, nil)
		}
		r.active.Store(int32(len(r.conns)))
	})
}

func errString(err error) *string {
	s := err.Error()
	return &s
}

// dial opens one connection and checks that it is the remote configured.
func (r *Remote) dial() (*client.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.o.dialTimeout())
	defer cancel()
	go func() { // Close ends a dial in progress
		select {
		case <-r.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	cl, err := client.Dial(ctx, r.o.Network, r.o.Address, r.o.clientOptions(client.Options{
		StructuredReplies: true, MetaContext: true,
	}))
	if err != nil {
		return nil, err
	}
	if r.size == 0 {
		r.size = cl.Size() // New's first dial, before any goroutine reads size
	}
	if cl.Size() != r.size {
		cl.Close()
		return nil, fmt.Errorf("the remote export is %d bytes, not the %d configured", cl.Size(), r.size)
	}
	return cl, nil
}

// Size implements stack.Device.
func (r *Remote) Size() uint64 { return r.size }

// Caps implements stack.Device: what the remote advertised on the first
// connection.
func (r *Remote) Caps() bioset.Caps { return r.caps }

// Errors returns how many bios the target ended with an error.
func (r *Remote) Errors() uint64 { return r.errors.Load() }

// Submit queues b on a connection and returns: it never waits
// (docs/DESIGN.md rule 8).
func (r *Remote) Submit(_ *bioset.Submitter, b *bioset.Bio) {
	if errno := check(b, r.size); errno != 0 {
		r.errors.Add(1)
		b.End(errno)
		return
	}
	q := r.getReq()
	q.bio = b
	q.deadline = time.Now().Add(r.timeout)
	r.inFlight.Add(1)
	r.pick().enqueue(q)
}

// pick chooses the connection for a new request: the next connected one
// round robin, or, when none is connected, the next one, where the
// request waits for a connection.
func (r *Remote) pick() *conn {
	n := uint32(r.active.Load())
	start := r.next.Add(1)
	for i := range n {
		c := r.conns[(start+i)%n]
		if c.state.Load() == connStateConnected {
			return c
		}
	}
	return r.conns[start%n]
}

// check reports the errno a bio gets before it is sent, or 0: what
// targets.Check refuses, and what one NBD request cannot carry. A wrong
// range from a buggy layer above would otherwise reach the remote.
func check(b *bioset.Bio, size uint64) syscall.Errno {
	if e := targets.Check(b, size); e != 0 {
		return e
	}
	limit := uint64(1<<32 - 1) // a request's length field
	switch b.Op {
	case bioset.OpFlush:
		return 0
	case bioset.OpRead, bioset.OpWrite:
		limit = wire.DefaultMaxPayload
	}
	if b.Length > limit {
		return syscall.EINVAL
	}
	return 0
}

func (r *Remote) getReq() *req {
	r.freeMu.Lock()
	q := r.free.PopFront()
	r.freeMu.Unlock()
	if q == nil {
		q = &req{r: r}
		q.Done = q.done
	}
	return q
}

func (r *Remote) putReq(q *req) {
	q.bio, q.conn = nil, nil
	q.Request.Buf, q.Request.Extents = nil, nil
	r.freeMu.Lock()
	r.free.PushFront(q, &q.link)
	r.freeMu.Unlock()
}

// Close stops the connections (each sends NBD_CMD_DISC). The stack
// closes a device only once no bio is in flight; a bio still queued, on
// a remote that never came up, ends with EIO.
func (r *Remote) Close() error {
	if !r.closing.CompareAndSwap(false, true) {
		return nil
	}
	close(r.stop)
	r.wg.Wait()
	for _, c := range r.conns {
		c.state.Store(connStateClosed)
		c.mu.Lock()
		left := c.queue.Take()
		c.mu.Unlock()
		for q := left.PopFront(); q != nil; q = left.PopFront() {
			r.finish(q, errClosing)
		}
	}
	return nil
}

// req is one bio on its way to the remote and back.
type req struct {
	client.Request
	r        *Remote
	bio      *bioset.Bio
	conn     *conn     // the connection it is queued or in flight on
	deadline time.Time // Submit plus the timeout
	sent     time.Time // when it was last sent, for the latency
	started  bool      // handed to the client (counted in conn.started)
	// link puts it on its connection's queue or in-flight list, both
	// under the connection's lock, or on the free list.
	link intrusive.Link[req]
}

// fill prepares the NBD request for q's bio, as the remote on a
// connection whose flags are flags can take it; skip says the bio needs
// no request and ends with err (a FLUSH to a remote without a cache, an
// op the remote lacks).
func (q *req) fill(flags uint16, meta bool) (skip bool, err error) {
	b := q.bio
	q.Request.Offset, q.Request.Length = b.Offset, uint32(b.Length)
	q.Request.Buf, q.Request.Extents = nil, nil
	q.Request.Flags = 0
	if b.Flags&bioset.FlagFUA != 0 && flags&wire.FlagSendFUA != 0 {
		// A remote without FUA has no volatile cache to write through
		// (else it would offer FLUSH and FUA): dropping the flag is
		// what the spec asks of a client.
		q.Request.Flags |= wire.CmdFlagFUA
	}
	need := func(flag uint16) bool { return flags&flag != 0 }
	switch b.Op {
	case bioset.OpRead:
		q.Cmd, q.Request.Buf = wire.CmdRead, b.Buf
	case bioset.OpWrite:
		q.Cmd, q.Request.Buf = wire.CmdWrite, b.Buf
	case bioset.OpFlush:
		if !need(wire.FlagSendFlush) {
			return true, nil // nothing cached to flush, as for FUA
		}
		q.Cmd, q.Request.Offset, q.Request.Length = wire.CmdFlush, 0, 0
	case bioset.OpTrim:
		if !need(wire.FlagSendTrim) {
			return true, syscall.EOPNOTSUPP
		}
		q.Cmd = wire.CmdTrim
	case bioset.OpWriteZeroes:
		if !need(wire.FlagSendWriteZeroes) {
			return true, syscall.EOPNOTSUPP
		}
		q.Cmd = wire.CmdWriteZeroes
		if b.Flags&bioset.FlagNoHole != 0 {
			q.Request.Flags |= wire.CmdFlagNoHole
		}
		if b.Flags&bioset.FlagFastZero != 0 {
			if !need(wire.FlagSendFastZero) {
				return true, syscall.ENOTSUP // fast zeroing fails fast, as the flag asks
			}
			q.Request.Flags |= wire.CmdFlagFastZero
		}
	case bioset.OpCache:
		if !need(wire.FlagSendCache) {
			return true, nil // a hint: nothing lost by not passing it on
		}
		q.Cmd = wire.CmdCache
	case bioset.OpBlockStatus:
		if !meta {
			return true, syscall.EOPNOTSUPP
		}
		q.Cmd, q.Request.Extents = wire.CmdBlockStatus, b.Extents
		if len(b.Extents) == 1 {
			q.Request.Flags |= wire.CmdFlagReqOne
		}
	}
	return false, nil
}

// done is q's client.Request.Done: it runs on the reader goroutine of the
// connection q was sent on.
func (q *req) done(_ *client.Request, err error) {
	c, r := q.conn, q.r
	c.mu.Lock()
	c.inflight.Remove(&q.link)
	c.releaseSlot(q)
	requeued := retryable(err) && !r.closing.Load() && time.Now().Before(q.deadline)
	if requeued {
		r.retried.Add(1)
		c.queue.PushBack(q, &q.link)
	}
	wake := c.wakeLocked() // a slot is free, or q is queued again
	c.mu.Unlock()
	if wake {
		c.signal()
	}
	if requeued {
		return
	}
	if err == nil {
		r.latency.Observe(time.Since(q.sent))
	}
	r.finish(q, err)
}

// retryable says whether a request that ended with err may be sent
// again: it was lost with its connection, or the remote refused it only
// because it is shutting down.
//
// Why sending a request again is safe, even one the remote may have
// performed before the connection dropped: NBD does not order requests
// that are in flight together (only FLUSH and FUA constrain a server, and
// a FLUSH covers only what was answered before it was sent), so a client
// that needs one request to see another's effect waits for the other's
// reply first. Whoever submitted a request that is being retried has no
// reply yet, so nothing it sent later depends on this request's effect.
// A WRITE repeated writes the same bytes to the same place; a TRIM or
// WRITE_ZEROES repeated zeroes or discards again; a READ reads again, into
// the same buffer. The only writes that can land between the two sends are
// from requests in flight together with this one, which NBD leaves
// unordered against it anyway: either order is an answer the client
// must accept. That needs the first send not to land after the second
// was answered, which is why an abandoned connection is reset; see
// Fencing in the package comment for what a reset cannot recall.
func retryable(err error) bool {
	if err == nil {
		return false
	}
	var re *client.RemoteError
	if errors.As(err, &re) {
		return re.Errno == syscall.ESHUTDOWN
	}
	return true
}

// finish ends q's bio with err's errno (EIO for anything but an error
// the remote answered) and recycles q. It never blocks or allocates
// (docs/DESIGN.md rule 6): the errnos it ends bios with are small
// numbers, which Go boxes without allocating.
func (r *Remote) finish(q *req, err error) {
	b := q.bio
	if err == nil && b.Op == bioset.OpBlockStatus {
		clipExtents(b, q.NExtents)
	}
	var errno syscall.Errno
	if err != nil {
		errno = syscall.EIO
		var re *client.RemoteError
		if errors.As(err, &re) {
			errno = re.Errno
		} else if time.Now().After(q.deadline) {
			r.timedOut.Add(1)
		}
		r.errors.Add(1)
	}
	r.putReq(q)
	r.inFlight.Add(-1)
	if errno != 0 {
		b.End(errno)
	} else {
		b.End(nil)
	}
}

// clipExtents turns the remote's answer, n extents in the remote's
// offsets at the front of b's window, into b's: in TopOffset coordinates,
// cut at the end of b's range, the unused slots zero.
func clipExtents(b *bioset.Bio, n int) {
	end := b.Offset + b.Length
	pos := b.Offset
	w := b.Extents
	for i := range w {
		if i >= n || pos >= end || w[i].Offset != pos {
			clear(w[i:])
			return
		}
		e := &w[i]
		e.Length = min(e.Length, end-pos)
		pos += e.Length
		e.Offset = b.TopOffset + (e.Offset - b.Offset)
	}
}
