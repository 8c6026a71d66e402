package nbd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/stackd/stackd/nbd/wire"
)

// TLSMode is how a server offers TLS, one of the three modes of
// doc/proto.md, "TLS support", "Server-side requirements". A server holds
// one mode for its whole life, so every connection sees the same one (the
// spec asks that a connection's mode never change while it lasts).
type TLSMode int

const (
	// TLSOff is NOTLS: NBD_OPT_STARTTLS is answered NBD_REP_ERR_UNSUP
	// (the server has no certificate: it does not support the option),
	// and NBD_REP_ERR_TLS_REQD is never sent.
	TLSOff TLSMode = iota
	// TLSOptional is SELECTIVETLS: a client may upgrade whenever it
	// likes; the exports with ExportConfig.TLSRequired refuse it until it
	// has.
	TLSOptional
	// TLSRequired is FORCEDTLS: every option but NBD_OPT_STARTTLS and
	// NBD_OPT_ABORT is answered NBD_REP_ERR_TLS_REQD until TLS is up.
	TLSRequired
)

func (m TLSMode) String() string {
	switch m {
	case TLSOff:
		return "off"
	case TLSOptional:
		return "optional"
	case TLSRequired:
		return "required"
	}
	return fmt.Sprintf("TLSMode(%d)", int(m))
}

// TLS handshake outcomes, as Observer.TLSHandshake reports them.
const (
	TLSHandshakeOK      = "ok"
	TLSHandshakeBadCert = "bad_certificate" // the client's certificate did not verify
	TLSHandshakeTimeout = "timeout"         // HandshakeTimeout ran out during it
	TLSHandshakeFailed  = "failed"          // anything else: garbage, a protocol error, EOF
)

// TLSHandshakeOutcomes lists every outcome Observer.TLSHandshake reports,
// so that a metric can export each from the start, at zero.
var TLSHandshakeOutcomes = []string{TLSHandshakeOK, TLSHandshakeBadCert, TLSHandshakeTimeout, TLSHandshakeFailed}

// tlsRequiredFor reports whether e may be chosen, or asked about, only
// over TLS on this connection.
func (c *conn) tlsRequiredFor(e *export) bool {
	return !c.tlsUp && (e.TLSRequired || c.srv.opts.TLSMode == TLSRequired)
}

// forcedTLS reports whether this connection runs FORCEDTLS: options other
// than STARTTLS and ABORT are refused until TLS is up. doc/proto.md, "TLS
// support": "The server MUST operate in NOTLS mode unless the server set
// flag NBD_FLAG_FIXED_NEWSTYLE and the client replied with
// NBD_FLAG_C_FIXED_NEWSTYLE"; a client that did not is refused with
// NBD_REP_ERR_POLICY instead (see refuseBeforeTLS), and can reach no
// export.
func (c *conn) forcedTLS() bool {
	return c.srv.opts.TLSMode == TLSRequired && !c.tlsUp
}

// refuseBeforeTLS answers an option that FORCEDTLS refuses before TLS is
// up. The spec ("FORCEDTLS mode"): any option but STARTTLS and ABORT gets
// NBD_REP_ERR_TLS_REQD; an EXPORT_NAME, which cannot be answered with an
// error, ends the session.
func (c *conn) refuseBeforeTLS(opt uint32) error {
	c.optionRefused(RefusedTLSRequired, "")
	if opt == wire.OptExportName {
		return &handshakeError{reasonTLSRequired, "NBD_OPT_EXPORT_NAME before STARTTLS, and TLS is required"}
	}
	if !c.fixedNewstyle {
		// NOTLS for this client (see forcedTLS): no TLS_REQD to it.
		return c.optReply(opt, wire.RepErrPolicy, []byte("TLS is required, and needs fixed newstyle negotiation"))
	}
	return c.optReply(opt, wire.RepErrTLSReqd, []byte("TLS is required: send NBD_OPT_STARTTLS first"))
}

// startTLS answers NBD_OPT_STARTTLS and, once it has acknowledged it,
// runs the TLS handshake on the socket. Haggling then goes on over TLS:
// c.nc, c.br and c.bw all move to the TLS connection. The handshake
// timeout armed on the socket (conn.handshake) bounds the TLS handshake
// too, since its reads and writes are the socket's: a client that starts
// one and stalls is cut off with everyone else who is slow.
func (c *conn) startTLS(data []byte) error {
	const opt = wire.OptStartTLS
	switch {
	case c.srv.tls == nil:
		// NOTLS (doc/proto.md, "NOTLS mode"): UNSUP, as the server has
		// no certificate to offer.
		return c.optReply(opt, wire.RepErrUnsup, []byte("TLS is not configured on this server"))
	case !c.fixedNewstyle:
		// NOTLS for this client (see forcedTLS).
		return c.optReply(opt, wire.RepErrPolicy, []byte("STARTTLS needs fixed newstyle negotiation"))
	case c.tlsUp:
		// "FORCEDTLS mode", "SELECTIVETLS mode": STARTTLS once TLS is up
		// MUST get NBD_REP_ERR_INVALID.
		return c.optReply(opt, wire.RepErrInvalid, []byte("TLS is already up"))
	case len(data) != 0:
		return c.optReply(opt, wire.RepErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
	}
	// "After an NBD_REP_ACK reply has been sent, the server MUST be
	// prepared for a TLS handshake, and all further data MUST be sent and
	// received over TLS."
	if err := c.optReply(opt, wire.RepAck, nil); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return err
	}
	if c.br.Buffered() > 0 {
		// The client may begin its handshake only once it has the ACK,
		// so bytes already read were sent in plaintext before it: never
		// let them count as protected. (A STARTTLS injection attack sends
		// plaintext commands behind the STARTTLS for the server to run
		// as if they came over TLS.)
		return &handshakeError{reasonTLS, "data sent behind NBD_OPT_STARTTLS before its reply"}
	}
	c.tlsSock = &tlsSocket{Conn: c.sock, replyTimeout: c.srv.opts.ReplyTimeout}
	tc := tls.Server(c.tlsSock, c.srv.tls)
	if err := tc.Handshake(); err != nil {
		// "If the handshake is unsuccessful ... the server MUST terminate
		// the session": the caller hangs up.
		outcome := TLSHandshakeFailed
		var ve *tls.CertificateVerificationError
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			outcome = TLSHandshakeTimeout
		case errors.As(err, &ve), strings.Contains(err.Error(), "didn't provide a certificate"):
			// A certificate that did not verify, or none where one is
			// required (crypto/tls has no error value for that one; the
			// configuration in effect may be GetConfigForClient's, so the
			// server's own cannot say whether one was required).
			outcome = TLSHandshakeBadCert
		}
		c.tlsHandshake(outcome)
		if outcome == TLSHandshakeTimeout {
			return fmt.Errorf("TLS handshake: %w", err) // counted as a timeout
		}
		return &handshakeError{reasonTLS, "TLS handshake: " + err.Error()}
	}
	c.tlsHandshake(TLSHandshakeOK)
	st := tc.ConnectionState()
	if len(st.VerifiedChains) > 0 {
		// Only a verified certificate is an identity: with no client CA
		// configured, a certificate the client offers proves nothing, and
		// the allow lists' certificate rules match no one.
		c.peerCert = st.VerifiedChains[0][0]
	}
	c.tlsUp = true
	c.nc = tc
	c.src.NC = tc
	c.br.Reset(&c.src) // nothing is buffered (checked above); nothing ever carries over
	c.bw.Reset(tc)
	c.srv.log.Debug("nbd: TLS up", "conn", c.id, "remote", c.remote,
		"version", tls.VersionName(st.Version), "cipher", tls.CipherSuiteName(st.CipherSuite), "client", c.peerName())
	return nil
}

func (c *conn) tlsHandshake(outcome string) {
	if c.srv.obs != nil {
		c.srv.obs.TLSHandshake(outcome)
	}
}

// peerName names the client's certificate for a log line: its subject's
// common name, or "" without one.
func (c *conn) peerName() string {
	if c.peerCert == nil {
		return ""
	}
	return c.peerCert.Subject.CommonName
}

// optionRefused counts and logs an option refused by policy (TLS, or an
// export's allow list). export is "" when the refusal is not about one.
func (c *conn) optionRefused(reason, export string) {
	if c.srv.obs != nil {
		c.srv.obs.OptionRefused(reason, export, c.remote)
		return
	}
	c.srv.log.Debug("nbd: option refused", "reason", reason, "export", export, "remote", c.remote)
}

// exportRefusal says whether this connection may use e, and if not the
// reply that says why and the refusal's reason. It is the one place both
// export checks are made, for INFO, GO, EXPORT_NAME and the meta-context
// options alike: TLS first ("SELECTIVETLS mode": a TLS-only export is
// refused until TLS is up), then the export's allow list.
func (c *conn) exportRefusal(e *export) (rep uint32, reason, msg string) {
	if c.tlsRequiredFor(e) {
		if !c.fixedNewstyle {
			return wire.RepErrPolicy, RefusedTLSRequired, "this export needs TLS, which needs fixed newstyle negotiation"
		}
		return wire.RepErrTLSReqd, RefusedTLSRequired, "this export needs TLS: send NBD_OPT_STARTTLS first"
	}
	if e.allow != nil && !e.allow.admits(c) {
		return wire.RepErrPolicy, RefusedAllowList, "not on this export's allow list"
	}
	return 0, "", ""
}

// listed reports whether NBD_OPT_LIST shows e to this connection. The
// spec ("NBD_OPT_LIST") lets a server omit TLS-only exports before TLS
// is up; so does this one, and the exports the client may not open.
func (c *conn) listed(e *export) bool {
	rep, _, _ := c.exportRefusal(e)
	return rep == 0
}

// tlsSocket is the socket under a TLS connection. In transmission it arms
// the write deadline before each write, because over TLS not only the
// writer writes: crypto/tls answers some records it reads (a TLS 1.3 key
// update, an alert) with a write of its own, on the reader's goroutine,
// possibly hours after the last reply. That write must meet a deadline
// armed for it, not one left over from a long-finished reply, which would
// fail it and so the connection (the invariant of conn.armWriteDeadline).
// Re-arming at most once per replyDeadlineSlack keeps the timer update
// off the per-record path, as armWriteDeadline does. During the handshake
// it leaves the deadlines to conn.handshake, which bounds everything.
type tlsSocket struct {
	net.Conn
	replyTimeout time.Duration
	// transmitting is set by conn.transmit before the writer starts,
	// and only read after.
	transmitting bool
	// armed is when the write deadline was last set here. crypto/tls
	// writes to its socket only under its write lock, so Writes never
	// run at once.
	armed time.Time
}

func (s *tlsSocket) Write(p []byte) (int, error) {
	if s.transmitting {
		if now := time.Now(); now.Sub(s.armed) >= replyDeadlineSlack {
			s.armed = now
			s.Conn.SetWriteDeadline(now.Add(s.replyTimeout))
		}
	}
	return s.Conn.Write(p)
}
