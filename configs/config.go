package configs

import (
	_ "embed"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/stack"
)

// Defaults and bounds. A limit of zero in a Config means its default.
const (
	// DefaultListenAddress is the NBD port (IANA-assigned 10809) on the
	// loopback interface: exposing block devices to a network is a choice
	// an operator makes in the config, not a default.
	DefaultListenAddress = "127.0.0.1:10809"
	// DefaultMetricsAddress serves Prometheus metrics on loopback.
	DefaultMetricsAddress = "127.0.0.1:9810"

	// The limits' defaults and floors are the protocol engine's: the
	// reasons for each stand beside them in package nbd.
	DefaultMaxConnections   = nbd.DefaultMaxConnections
	DefaultMaxInFlight      = nbd.DefaultMaxInFlight
	MinMaxInFlight          = nbd.MinMaxInFlight
	DefaultPayloadBudget    = nbd.DefaultPayloadBudget
	MinPayloadBudget        = nbd.MaxPayload
	DefaultHandshakeTimeout = nbd.DefaultHandshakeTimeout
	DefaultReplyTimeout     = nbd.DefaultReplyTimeout
	MinReplyTimeout         = nbd.MinReplyTimeout
	// MinConnectionPayload is ConnectionPayload's floor: one connection
	// must be able to hold the largest request any client may send.
	MinConnectionPayload = nbd.MaxPayload

	// MaxStringLen bounds export names and descriptions: the NBD
	// protocol forbids longer strings (doc/proto.md, "Conventions").
	MaxStringLen = 4096

	// DefaultSource is the Source of the configuration Default returns.
	DefaultSource = "<embedded default>"
)

// Config is a parsed and validated stackd configuration.
type Config struct {
	// Listeners accept NBD connections. Default: one TCP listener on
	// DefaultListenAddress.
	Listeners []Listener
	// MetricsAddress is the host:port serving Prometheus metrics at
	// /metrics; empty means metrics are off. Default:
	// DefaultMetricsAddress.
	MetricsAddress string
	// Control is the path of the control socket (`stackd status`,
	// `stackd leg`, `stackd fault`); empty means none, the default.
	Control string
	Limits  Limits
	// Exports in file order; at least one.
	Exports []Export
	// Source names the file the configuration came from (DefaultSource
	// for the embedded default).
	Source string
	// TLS is the tls: section; nil without one, or with mode off.
	TLS *TLS
	// Warnings are problems CheckHost found that do not stop the
	// configuration from being served (a key others can read), each
	// "FILE:LINE: reason".
	Warnings []*Error
}

// Listener is one socket to accept NBD connections on.
type Listener struct {
	// Network is "tcp" or "unix".
	Network string
	// Address is host:port for tcp, a socket path for unix.
	Address string
	// Allow lists the addresses a tcp listener admits; others are closed
	// at accept. Empty: every address.
	Allow []netip.Prefix
}

// Limits bound the server's resources. A zero field means its default;
// Load and Parse fill the defaults in.
type Limits struct {
	// MaxConnections open at once; more are refused. Default 1024.
	MaxConnections int
	// MaxInFlight requests per connection; the connection stops reading
	// until one completes. Default 256, at least MinMaxInFlight.
	MaxInFlight int
	// PayloadBudget in bytes for write and read payloads held by all
	// connections together. Default 256 MiB, at least MinPayloadBudget.
	PayloadBudget int64
	// HandshakeTimeout bounds the NBD handshake, so an idle client cannot
	// hold a connection slot forever. Default 10s.
	HandshakeTimeout time.Duration
	// ReplyTimeout bounds how long writing one reply to a client may
	// take, so a client that stops reading its replies gives back the
	// budget its requests hold. Default 1m, at least MinReplyTimeout.
	ReplyTimeout time.Duration
	// ConnectionPayload caps the payload bytes one connection holds at
	// once, within PayloadBudget, so one client cannot hold the whole
	// budget. Default nbd.DefaultConnectionPayload(PayloadBudget): a
	// quarter of it, at least MinConnectionPayload; never more than
	// PayloadBudget.
	ConnectionPayload int64
	// MaxConnectionsPerClient caps the connections open at once from one
	// source IP address (TCP) or peer uid (unix socket), so one client
	// cannot take every slot. Default nbd.DefaultPerClient(MaxConnections):
	// a quarter of MaxConnections, at most 64 and at least 4 (what
	// `nbd-client -C 4` opens); never more than MaxConnections.
	MaxConnectionsPerClient int
}

// WithDefaults returns l with each zero field set to its default: the
// protocol engine's (nbd.Options.WithDefaults), so that the limits a
// configuration shows are the ones the server applies.
func (l Limits) WithDefaults() Limits {
	o := l.ServerOptions().WithDefaults()
	return Limits{
		MaxConnections:          o.MaxConnections,
		MaxConnectionsPerClient: o.MaxConnectionsPerClient,
		MaxInFlight:             o.MaxInFlight,
		PayloadBudget:           o.PayloadBudget,
		ConnectionPayload:       o.ConnectionPayload,
		HandshakeTimeout:        o.HandshakeTimeout,
		ReplyTimeout:            o.ReplyTimeout,
	}
}

// Export is one NBD export and the stack that serves it.
type Export struct {
	// Name clients ask for; unique, 1 to MaxStringLen bytes, no NUL.
	Name string
	// Description sent to clients that ask for it (NBD_INFO_DESCRIPTION);
	// at most MaxStringLen bytes, no NUL.
	Description string
	// ReadOnly exports refuse writes, trims and zeroes with EPERM.
	ReadOnly bool
	// Default marks the export a client gets by asking for the empty
	// name. At most one export is the default.
	Default bool
	// TLSRequired serves the export only over TLS (tls: required).
	TLSRequired bool
	// Allow lists who may open the export (allow:); empty: everyone the
	// listener admits.
	Allow []nbd.AllowRule
	// Stack describes the layers and targets that serve the export.
	Stack stack.Spec
	// line is the stack's, for problems with the export's size.
	line int
}

// Export returns the export called name; the empty name selects the
// default export, if there is one.
func (c *Config) Export(name string) (*Export, bool) {
	for i := range c.Exports {
		e := &c.Exports[i]
		if (name == "" && e.Default) || (name != "" && e.Name == name) {
			return e, true
		}
	}
	return nil, false
}

// Error is one problem in a configuration file. Its text is
// "FILE:LINE: reason", the form editors and CI logs link to.
type Error struct {
	File string
	// Line is 1-based; 0 when the problem has no line (the file as a
	// whole could not be read).
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if e.Line <= 0 {
		return e.File + ": " + e.Msg
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// Load reads and parses the configuration file at path (see Parse). Relative file
// paths inside it are taken relative to the file's directory.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse parses and validates a configuration. source names it in error
// messages and anchors relative file paths (relative to filepath.Dir of
// source; to the working directory when source is in angle brackets, as
// DefaultSource is). Parse is a pure function of its arguments: it looks
// at no file. CheckHost checks what the configuration needs of the host.
//
// The error, if any, joins one *Error per problem found (errors.Join), in
// line order.
func Parse(source string, data []byte) (*Config, error) {
	d := newDecoder(source)
	c := d.config(data)
	if err := d.err(); err != nil {
		return nil, err
	}
	c.Source = source
	c.Limits = c.Limits.WithDefaults()
	return c, nil
}

// CheckHost checks what c needs of this host: that the files its file
// targets name exist, or can be created, and can be opened as their
// exports need; that no file backs two legs; with the sizes of
// existing files learnt, that the legs of every layer fit together; and
// that the TLS certificate and key can be read, belong together and are
// valid now (a key others can read is a warning, in c.Warnings). It
// creates or changes nothing. `stackd check` and `stackd serve` both run
// it, so that they never disagree. Its error is of the form Parse's.
func (c *Config) CheckHost() error {
	d := newDecoder(c.Source)
	var h stack.Host
	var p settings.Problems
	for _, e := range c.Exports {
		h.Export, h.ReadOnly = e.Name, e.ReadOnly
		h.CheckHost(e.Stack, &p)
		d.checkSize(&p, e)
	}
	d.add(p.Err())
	if c.TLS != nil {
		c.TLS.checkHost(d, time.Now())
	}
	c.Warnings = d.warns
	return d.err()
}

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the text of the embedded default configuration, for
// `stackd` to print as a starting point.
func DefaultYAML() []byte {
	return append([]byte(nil), defaultYAML...)
}

// Default returns the embedded default configuration: one 1 GiB RAM disk
// export named "default". It panics if the embedded file does not parse,
// which a test rules out.
func Default() *Config {
	c, err := Parse(DefaultSource, defaultYAML)
	if err != nil {
		panic("configs: embedded default configuration is invalid: " + err.Error())
	}
	return c
}

// ServerOptions returns the nbd server options the limits set. The caller
// adds the exports, and its logger and observer if any.
func (l Limits) ServerOptions() nbd.Options {
	return nbd.Options{
		MaxConnections:          l.MaxConnections,
		MaxConnectionsPerClient: l.MaxConnectionsPerClient,
		HandshakeTimeout:        l.HandshakeTimeout,
		MaxInFlight:             l.MaxInFlight,
		PayloadBudget:           l.PayloadBudget,
		ConnectionPayload:       l.ConnectionPayload,
		ReplyTimeout:            l.ReplyTimeout,
	}
}

// Build builds e's stack, its leaves read-only if e is. The nodes log
// to log (nil: slog.Default()), such as a mirror leg's state changes.
func (e Export) Build(log *slog.Logger) (*stack.Stack, error) {
	return stack.Build(e.Name, e.Stack, stack.BuildOptions{ReadOnly: e.ReadOnly, Logger: log})
}

// ServerExport returns the nbd export e describes, served by dev (the root
// of the stack built from e.Stack).
func (e Export) ServerExport(dev nbd.Export) nbd.ExportConfig {
	return nbd.ExportConfig{
		Name: e.Name, Description: e.Description, Device: dev,
		ReadOnly: e.ReadOnly, Default: e.Default,
		TLSRequired: e.TLSRequired, Allow: e.Allow,
	}
}
