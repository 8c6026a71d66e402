package nbd

import (
	"syscall"
	"time"

	"github.com/stackd/stackd/bioset"
)

// Observer receives events for metrics. Its methods are called from
// connection goroutines, concurrently, on the request path: they must be
// cheap and must not block. A nil Options.Observer costs nothing; embed
// NopObserver to implement only some methods.
type Observer interface {
	// ConnOpened and ConnClosed bracket every accepted connection that is
	// under the MaxConnections cap, handshake included.
	ConnOpened()
	ConnClosed()
	// ConnRefused reports a connection closed at accept: over a cap, or
	// from an address its listener's allow list leaves out.
	// reason is one of ConnRefusalReasons; remote is the client's address,
	// for a log line only (it is no metric label: it carries the port).
	ConnRefused(reason, remote string)
	// HandshakeFailed reports a connection that ended before transmission
	// for a reason other than the client's NBD_OPT_ABORT. reason is one of
	// a fixed set of short labels, safe as a metric label: "timeout",
	// "eof", "bad_magic", "bad_client_flags", "unknown_export",
	// "option_too_big", "too_many_options", "shutdown", "io", "tls" (the
	// TLS handshake failed), and "tls_required" and "export_allow" (an
	// NBD_OPT_EXPORT_NAME refused by policy: see OptionRefused).
	HandshakeFailed(reason string)
	// RequestStarted and RequestDone bracket a valid request: one that was
	// decoded and passed the checks, whether or not it reached the device.
	// bytes is the request's length (payload bytes for READ and WRITE, the
	// affected range for TRIM, WRITE_ZEROES, CACHE and BLOCK_STATUS, 0 for
	// FLUSH); err is 0 on success; latency runs from the decoded header to
	// the reply handed to the socket.
	RequestStarted(export string, op bioset.Op)
	RequestDone(export string, op bioset.Op, bytes uint64, err syscall.Errno, latency time.Duration)
	// BadRequest reports a request rejected by the protocol engine without
	// reaching the device (unknown command or flag, out of range, read-only
	// export, ...); err is the error sent to the client.
	BadRequest(export string, err syscall.Errno)
	// OptionRefused reports an option refused by policy during the
	// handshake: before TLS when TLS is needed (RefusedTLSRequired), or
	// by an export's allow list (RefusedAllowList). reason is one of
	// OptionRefusalReasons; export is the export asked for, "" if none;
	// remote is for a log line only.
	OptionRefused(reason, export, remote string)
	// TLSHandshake reports the end of a TLS handshake after
	// NBD_OPT_STARTTLS; outcome is one of TLSHandshakeOutcomes.
	TLSHandshake(outcome string)
}

// NopObserver implements Observer with methods that do nothing.
type NopObserver struct{}

func (NopObserver) ConnOpened()                                                         {}
func (NopObserver) ConnClosed()                                                         {}
func (NopObserver) ConnRefused(string, string)                                          {}
func (NopObserver) HandshakeFailed(string)                                              {}
func (NopObserver) RequestStarted(string, bioset.Op)                                    {}
func (NopObserver) RequestDone(string, bioset.Op, uint64, syscall.Errno, time.Duration) {}
func (NopObserver) BadRequest(string, syscall.Errno)                                    {}
func (NopObserver) OptionRefused(string, string, string)                                {}
func (NopObserver) TLSHandshake(string)                                                 {}

// HandshakeFailureReasons lists every reason Observer.HandshakeFailed
// reports, so that a metric can export each from the start, at zero.
var HandshakeFailureReasons = []string{
	reasonTimeout, reasonEOF, reasonBadMagic, reasonBadFlags, reasonUnknownExport,
	reasonOptionTooBig, reasonTooManyOptions, reasonShutdown, reasonIO,
	reasonTLS, reasonTLSRequired, reasonNotAllowed,
}

// Handshake failure reasons, as Observer.HandshakeFailed and the log see
// them.
const (
	reasonTimeout        = "timeout"
	reasonEOF            = "eof"
	reasonBadMagic       = "bad_magic"
	reasonBadFlags       = "bad_client_flags"
	reasonUnknownExport  = "unknown_export"
	reasonOptionTooBig   = "option_too_big"
	reasonTooManyOptions = "too_many_options"
	reasonShutdown       = "shutdown"
	reasonIO             = "io"
	// reasonTLS: the TLS handshake after STARTTLS failed, or plaintext
	// followed the STARTTLS. reasonTLSRequired and reasonNotAllowed: an
	// EXPORT_NAME that policy refused, which can only be answered by
	// hanging up.
	reasonTLS         = "tls"
	reasonTLSRequired = RefusedTLSRequired
	reasonNotAllowed  = RefusedAllowList
)

// OptionRefusalReasons lists every reason Observer.OptionRefused reports.
var OptionRefusalReasons = []string{RefusedTLSRequired, RefusedAllowList}

// Option refusal reasons.
const (
	// RefusedTLSRequired: the option needs TLS, which is not up yet.
	RefusedTLSRequired = "tls_required"
	// RefusedAllowList: the client is not on the export's allow list.
	RefusedAllowList = "export_allow"
)

// ConnRefusalReasons lists every reason Observer.ConnRefused reports, so
// that a metric can export each from the start, at zero.
var ConnRefusalReasons = []string{RefusedMaxConnections, RefusedPerClient, RefusedListenAllow}

// Connection refusal reasons, named by the limit (configs' key) that
// refused the connection.
const (
	RefusedMaxConnections = "max_connections"
	RefusedPerClient      = "max_connections_per_client"
	// RefusedListenAllow: the address is not on the listener's allow
	// list (configs' listen: allow).
	RefusedListenAllow = "listen_allow"
)
