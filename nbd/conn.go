package nbd

import (
	"bufio"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/rawsock"
)

// conn is one client connection: the handshake on the goroutine that
// serves it, then the transmission phase on that goroutine (the reader)
// and one writer goroutine.
type conn struct {
	srv *Server
	// sock is the accepted socket; nc is what the protocol runs over: sock
	// itself, or the TLS connection over it once STARTTLS has run. Only
	// the conn's goroutine changes nc, during the handshake, before the
	// writer starts; anything another goroutine does to the connection
	// (deadlines, an abrupt close) goes to sock, whose deadlines a TLS
	// connection shares.
	sock   net.Conn
	nc     net.Conn
	id     uint64
	remote string
	client clientID // for the per-client cap; see Server.admit
	gid    int64    // unix: the peer's gid (SO_PEERCRED); -1 otherwise
	start  time.Time
	br     *bufio.Reader // reads from src
	src    rawsock.Reader
	bw     *bufio.Writer

	mu       sync.Mutex
	closing  bool          // guarded by mu: Shutdown asked the conn to end
	stop     chan struct{} // closed once the conn must stop waiting for budget
	stopOnce sync.Once

	// Negotiated during the handshake; fixed during transmission.
	exp          *export
	size         uint64
	caps         bioset.Caps
	tflags       uint16
	structured   bool
	noZeroes     bool
	metaExport   *export // the export the last SET_META_CONTEXT selected base:allocation for
	metaSelected bool
	metaID       uint32 // nonzero: BLOCK_STATUS is allowed and replies carry it
	optBuf       []byte

	// TLS, set by startTLS. peerCert is the client's verified
	// certificate, nil without one; the allow lists match it.
	fixedNewstyle bool
	tlsUp         bool
	peerCert      *x509.Certificate
	tlsSock       *tlsSocket // the socket under the TLS connection, once up

	// Transmission phase; see transmit.go. Set under mu, once, so that
	// beginClose can tell a handshake from a transmission.
	tx *transmission
}

var (
	readerPool sync.Pool // *bufio.Reader of readBufSize
	writerPool sync.Pool // *bufio.Writer of writeBufSize
)

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{
		srv:    s,
		sock:   nc,
		nc:     nc,
		id:     s.connIDs.Add(1),
		remote: nc.RemoteAddr().String(),
		start:  time.Now(),
		stop:   make(chan struct{}),
	}
}

// serve runs the connection to its end.
func (c *conn) serve() {
	defer c.srv.connDone(c)
	// nc, not sock: over TLS, Close sends close_notify first, as the spec
	// asks of a server ending a TLS session (doc/proto.md, "Terminating
	// the transmission phase").
	defer func() { c.nc.Close() }()

	c.src.NC = c.nc
	if r, ok := readerPool.Get().(*bufio.Reader); ok {
		r.Reset(&c.src)
		c.br = r
	} else {
		c.br = bufio.NewReaderSize(&c.src, readBufSize)
	}
	if w, ok := writerPool.Get().(*bufio.Writer); ok {
		w.Reset(c.nc)
		c.bw = w
	} else {
		c.bw = bufio.NewWriterSize(c.nc, writeBufSize)
	}
	defer func() {
		// Both goroutines are done with them: the writer has exited.
		c.br.Reset(nil)
		c.bw.Reset(nil)
		readerPool.Put(c.br)
		writerPool.Put(c.bw)
	}()

	if !c.handshake() {
		return
	}
	c.transmit()
}

// beginClose asks the connection to end gracefully: a handshake in
// progress fails; in transmission the requests already submitted are
// answered, and those that arrive meanwhile get NBD_ESHUTDOWN (see
// transmission.draining); then the socket closes.
func (c *conn) beginClose() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closing = true
	c.stopOnce.Do(func() { close(c.stop) })
	if t := c.tx; t != nil {
		t.draining.Store(true)
		if t.submitted.Load() > 0 {
			// The last of them to be released ends the reader (endDrain).
			// Before, the store: see transmission.submitted.
			return
		}
	}
	// Wakes a reader blocked on the socket; see setDeadline.
	c.sock.SetReadDeadline(aLongTimeAgo)
}

// closeNow closes the socket at once. In-flight requests still complete in
// the device; their buffers are released when they do.
func (c *conn) closeNow() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closing = true
	c.stopOnce.Do(func() { close(c.stop) })
	// The socket, not a TLS connection: its Close would first try to
	// send close_notify, and wait up to seconds for a client that does
	// not read.
	c.sock.Close()
}

var aLongTimeAgo = time.Unix(1, 0)

// setDeadline sets the socket deadline unless beginClose has run, whose
// deadline in the past must not be overwritten: beginClose and this take
// c.mu, so either beginClose sees the new deadline and replaces it, or
// this sees closing and reports false.
func (c *conn) setDeadline(t time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.sock.SetDeadline(t)
	return true
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// handshakeError is a handshake failure with a reason label for metrics.
type handshakeError struct {
	reason string
	msg    string
}

func (e *handshakeError) Error() string { return e.msg }

// errAbort ends a handshake the client aborted with NBD_OPT_ABORT.
var errAbort = errors.New("client sent NBD_OPT_ABORT")

// handshake runs fixed newstyle negotiation and reports whether the
// connection entered transmission.
func (c *conn) handshake() bool {
	if !c.setDeadline(time.Now().Add(c.srv.opts.HandshakeTimeout)) {
		c.handshakeFailed(&handshakeError{reasonShutdown, "server shutting down"})
		return false
	}
	err := c.negotiate()
	if err == nil && !c.setDeadline(time.Time{}) {
		err = &handshakeError{reasonShutdown, "server shutting down"}
	}
	if err != nil {
		if err == errAbort {
			c.srv.log.Debug("nbd: handshake aborted by client", "conn", c.id, "remote", c.remote)
			return false
		}
		c.handshakeFailed(err)
		return false
	}
	return true
}

func (c *conn) handshakeFailed(err error) {
	reason := reasonIO
	var he *handshakeError
	switch {
	case errors.As(err, &he):
		reason = he.reason
	case c.isClosing():
		reason = reasonShutdown
	case errors.Is(err, os.ErrDeadlineExceeded):
		reason = reasonTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE):
		reason = reasonEOF
	}
	c.srv.log.Info("nbd: handshake failed", "conn", c.id, "remote", c.remote,
		"reason", reason, "err", err.Error(), "duration", time.Since(c.start))
	if c.srv.obs != nil {
		c.srv.obs.HandshakeFailed(reason)
	}
}
