// Command stackd serves stacks of block layers as NBD exports.
//
//	stackd [serve] [-config FILE] [-log-format text|json] [-log-level LEVEL]
//	stackd check -config FILE
//	stackd status [-json] [-control SOCKET | -config FILE]
//	stackd leg fail|restore PATH [-control SOCKET | -config FILE]
//	stackd fault PATH on|off|down-now [-control SOCKET | -config FILE]
//	stackd version
//
// With no config, serve runs the embedded default: export "default", a
// 1 GiB striped RAM disk on 127.0.0.1:10809. status, leg and fault talk
// to a running daemon's control socket (configs' control:): the live tree
// with its pools and states, and the actions of mirrors and fault layers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/configs"
	"github.com/stackd/stackd/metrics"
	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/stack"
)

// version is set at link time (-ldflags "-X main.version=v1.2.3"); without
// it the module version or VCS revision from the build info is used.
var version = ""

// shutdownGrace bounds how long in-flight requests may take to finish after
// the first signal; a second signal exits at once.
const shutdownGrace = 30 * time.Second

// flushTimeout bounds the final flush of each export at shutdown.
const flushTimeout = 30 * time.Second

// Timeouts of the metrics endpoint: a scrape is one small request and a
// reply of tens of KiB, so a client slower than this is stuck, and
// holds a goroutine and a socket for nothing.
const (
	metricsReadTimeout  = 5 * time.Second
	metricsWriteTimeout = 30 * time.Second
	metricsIdleTimeout  = 2 * time.Minute
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(args, stderr)
	case "check":
		return check(args, stdout, stderr)
	case "status":
		return status(args, stdout, stderr)
	case "leg":
		return leg(args, stdout, stderr)
	case "fault":
		return fault(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "stackd", buildVersion())
		return 0
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "stackd: unknown command %q\n", cmd)
		usage(stderr)
		return 2
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  stackd [serve] [-config FILE] [-log-format text|json] [-log-level debug|info|warn|error] [-pprof]
  stackd check -config FILE
  stackd status [-json] [-control SOCKET | -config FILE]
  stackd leg fail|restore PATH [-control SOCKET | -config FILE]
  stackd fault PATH on|off|down-now [-control SOCKET | -config FILE]
  stackd version
`)
}

func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			return bi.Main.Version + " " + s.Value
		}
	}
	return bi.Main.Version
}

// loadConfig is the one way `check` and `serve` read a configuration:
// validated, then checked against the host, so that what check accepts
// serve accepts too.
// Its warnings (cfg.Warnings) are the caller's to show.
func loadConfig(path string) (*configs.Config, error) {
	cfg := configs.Default()
	if path != "" {
		var err error
		if cfg, err = configs.Load(path); err != nil {
			return nil, err
		}
	}
	if err := cfg.CheckHost(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func check(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file to check (default: the embedded default)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	configs.FormatTree(stdout, cfg)
	return 0
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	o := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("-log-format: %q is neither text nor json", format)
}

func serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (default: the embedded default)")
	format := fs.String("log-format", "text", "log format: text or json")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	var o serveOptions
	fs.BoolVar(&o.pprof, "pprof", false, "also serve Go's profiler at /debug/pprof/ on the metrics address")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(stderr, *format, *level)
	if err != nil {
		fmt.Fprintln(stderr, "stackd:", err)
		return 2
	}
	// Leaves that log (the rbd target's librbd errors) use the default
	// logger, so that their records join the daemon's, in its format.
	slog.SetDefault(log)
	// SIGHUP is caught from here on, before the configuration is read:
	// its default action is to exit, and an operator (or a certificate
	// renewal hook) that sends it while the daemon is still starting,
	// which can take as long as a remote's dial or a Ceph cluster's
	// connect, must not kill it. One that arrives before start returns
	// waits in the channel and is acted on once the daemon is up: a
	// reload then, of files that may have changed since start read them.
	// SIGTERM and SIGINT keep their default action until then, so that a
	// start that hangs can still be stopped.
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGHUP)
	cfg, err := loadConfig(*path)
	if err != nil {
		log.Error("configuration rejected", "err", err)
		return 1
	}
	for _, w := range cfg.Warnings {
		log.Warn("configuration warning", "warning", w.Error())
	}
	d, err := start(cfg, log, o)
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}

	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	for s == syscall.SIGHUP {
		d.reloadTLS()
		s = <-sig
	}
	log.Info("shutting down: finishing in-flight requests; a second signal exits at once", "signal", s.String())
	go func() {
		s := <-sig
		log.Error("second signal: exiting at once", "signal", s.String())
		os.Exit(1)
	}()
	if err := d.stop(); err != nil {
		log.Error("shutdown incomplete", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// daemon is a running stackd: its stacks, server, listeners and metrics.
type daemon struct {
	log       *slog.Logger
	stacks    []*stack.Stack
	names     []string
	server    *nbd.Server
	tls       *configs.ServerTLS // nil without TLS; SIGHUP reloads it
	listeners []net.Listener
	served    chan error

	// metrics observes the server even when no address serves them: its
	// rate-limited lines are the log's record of failed requests.
	metrics     *metrics.Metrics
	metricsSrv  *service // nil when metrics are off
	metricsAddr net.Addr

	control *service // nil without a control socket
}

// start brings a daemon up in the order an operator watching /readyz
// expects: the metrics endpoint first (so /healthz answers while large
// stacks are built), then the stacks, the control socket over them, then
// the NBD listeners; only then is it ready. On error, whatever was started
// is stopped.
func start(cfg *configs.Config, log *slog.Logger, o serveOptions) (*daemon, error) {
	d := newDaemon(cfg, log)
	if err := d.serveMetrics(cfg.MetricsAddress, o.pprof); err != nil {
		return nil, err
	}
	if err := d.build(cfg); err != nil {
		d.stopMetrics()
		return nil, err
	}
	if err := d.serveControl(cfg); err != nil {
		d.closeStacks()
		d.stopMetrics()
		return nil, err
	}
	if err := d.listen(cfg); err != nil {
		d.stopControl()
		d.closeStacks()
		d.stopMetrics()
		return nil, err
	}
	d.metrics.SetReady(true)
	d.log.Info("ready", "exports", len(d.stacks), "listeners", len(d.listeners))
	return d, nil
}

func newDaemon(cfg *configs.Config, log *slog.Logger) *daemon {
	var names []string
	for _, e := range cfg.Exports {
		names = append(names, e.Name)
	}
	return &daemon{
		log:    log,
		served: make(chan error, len(cfg.Listeners)),
		metrics: metrics.New(metrics.Options{
			Exports: names,
			Version: buildVersion(),
			Logger:  log,
		}),
	}
}

// serveOptions are the command-line settings of serve that the
// configuration file does not hold.
type serveOptions struct {
	// pprof adds net/http/pprof's handlers to the metrics endpoint, for
	// profiling a running daemon ("Profile before tuning").
	pprof bool
}

// serveMetrics serves /metrics, /healthz and /readyz on addr, and with
// pprof /debug/pprof/; nothing when addr is empty (metrics off).
func (d *daemon) serveMetrics(addr string, pprof bool) error {
	if addr == "" {
		if pprof {
			return errors.New("-pprof needs a metrics address")
		}
		return nil
	}
	handler := d.metrics.Handler()
	if pprof {
		mux := http.NewServeMux()
		mux.Handle("/", handler)
		mux.HandleFunc("/debug/pprof/", httppprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", httppprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", httppprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", httppprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", httppprof.Trace)
		handler = mux
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen: %w", err)
	}
	d.metricsAddr = ln.Addr()
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: metricsReadTimeout,
		ReadTimeout:       metricsReadTimeout,
		WriteTimeout:      metricsWriteTimeout,
		IdleTimeout:       metricsIdleTimeout,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	d.metricsSrv = startService(d.log, "metrics server", srv, ln)
	d.log.Info("serving metrics", "address", ln.Addr().String(), "paths", "/metrics /healthz /readyz")
	return nil
}

// stopMetrics closes the metrics endpoint, letting a scrape in progress
// finish.
func (d *daemon) stopMetrics() {
	d.metricsSrv.stop(metricsWriteTimeout)
	d.metricsSrv = nil
}

// build builds every export's stack and the server over them.
func (d *daemon) build(cfg *configs.Config) error {
	var exports []nbd.ExportConfig
	for _, e := range cfg.Exports {
		st, err := e.Build(d.log)
		if err != nil {
			d.closeStacks()
			return fmt.Errorf("export %q: %w", e.Name, err)
		}
		d.stacks = append(d.stacks, st)
		d.names = append(d.names, e.Name)
		d.metrics.WatchStack(e.Name, st)
		exports = append(exports, e.ServerExport(st.Root))
		d.log.Info("export ready", "export", e.Name, "size", st.Root.Size(), "layers", len(st.Nodes), "read_only", e.ReadOnly)
	}
	opts := cfg.Limits.ServerOptions()
	opts.Exports, opts.Logger, opts.Observer = exports, d.log, d.metrics
	st, err := d.serverTLS(cfg)
	if err != nil {
		d.closeStacks()
		return err
	}
	if st != nil {
		d.tls, opts.TLS, opts.TLSMode = st, st.Config(), cfg.TLS.Mode
	}
	srv, err := nbd.NewServer(opts)
	if err != nil {
		d.closeStacks()
		return err
	}
	d.server = srv
	d.metrics.WatchServer(srv)
	return nil
}

// listen opens every NBD listener and serves each.
func (d *daemon) listen(cfg *configs.Config) error {
	for _, l := range cfg.Listeners {
		ln, err := listen(l)
		if err != nil {
			for _, ln := range d.listeners {
				ln.Close()
			}
			return err
		}
		d.listeners = append(d.listeners, ln)
		d.log.Info("listening", "network", l.Network, "address", ln.Addr().String())
	}
	for i, ln := range d.listeners {
		lo := nbd.ListenerOptions{Allow: cfg.Listeners[i].Allow}
		go func() { d.served <- d.server.ServeListener(ln, lo) }()
	}
	return nil
}

// listen opens one listener; a unix socket as listenUnix does, with the
// mode the umask leaves (the unit's UMask decides who may connect).
func listen(l configs.Listener) (net.Listener, error) {
	if l.Network == "unix" {
		return listenUnix(l.Address, 0)
	}
	ln, err := net.Listen(l.Network, l.Address)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return ln, nil
}

// stop stops accepting, lets in-flight requests finish, flushes every
// export and closes the stacks.
func (d *daemon) stop() error {
	d.metrics.SetReady(false)
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	var errs []error
	if err := d.server.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("shutdown: %w", err))
	}
	for range d.listeners {
		if err := <-d.served; err != nil {
			errs = append(errs, err)
		}
	}
	for i, st := range d.stacks {
		if st.Root.Caps()&bioset.CapFlush == 0 {
			continue
		}
		if err := flush(st.Root); err != nil {
			errs = append(errs, fmt.Errorf("export %q: final flush: %w", d.names[i], err))
		}
	}
	// The control socket answers while the connections drain, and stops
	// before the stacks it reads close.
	d.stopControl()
	d.closeStacks()
	// Last, so that the shutdown itself can be scraped.
	d.stopMetrics()
	return errors.Join(errs...)
}

func (d *daemon) closeStacks() {
	for i, st := range d.stacks {
		if err := st.Close(); err != nil {
			d.log.Error("close export", "export", d.names[i], "err", err)
		}
	}
	d.stacks = nil
}

// flush sends one FLUSH through dev and waits for it.
func flush(dev stack.Device) error {
	done := make(chan struct{})
	var b bioset.Bio
	b.Init(bioset.OpFlush, 0, 0, nil, func(*bioset.Bio) { close(done) })
	b.Dev = dev
	var s bioset.Submitter
	s.Submit(&b)
	select {
	case <-done:
		return b.Err()
	case <-time.After(flushTimeout):
		return fmt.Errorf("no answer within %v", flushTimeout)
	}
}
