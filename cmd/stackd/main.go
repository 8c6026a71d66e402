// Command stackd serves stacks of block layers as NBD exports.
//
//	stackd [serve] [-config FILE] [-log-format text|json] [-log-level LEVEL]
//	stackd check -config FILE
//	stackd version
//
// With no config, serve runs the embedded default: export "default", a
// 1 GiB striped RAM disk on 127.0.0.1:10809.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/configs"
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
  stackd [serve] [-config FILE] [-log-format text|json] [-log-level debug|info|warn|error]
  stackd check -config FILE
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

func loadConfig(path string) (*configs.Config, error) {
	if path == "" {
		return configs.Default(), nil
	}
	return configs.Load(path)
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
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(stderr, *format, *level)
	if err != nil {
		fmt.Fprintln(stderr, "stackd:", err)
		return 2
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		log.Error("configuration rejected", "err", err)
		return 1
	}
	d, err := start(cfg, log)
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}

	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
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

// daemon is a running stackd: its stacks, server and listeners.
type daemon struct {
	log       *slog.Logger
	stacks    []*stack.Stack
	names     []string
	server    *nbd.Server
	listeners []net.Listener
	served    chan error
}

func start(cfg *configs.Config, log *slog.Logger) (*daemon, error) {
	d := &daemon{log: log, served: make(chan error, len(cfg.Listeners))}
	var exports []nbd.ExportConfig
	for _, e := range cfg.Exports {
		st, err := stack.Build(e.Name, e.Stack)
		if err != nil {
			d.closeStacks()
			return nil, fmt.Errorf("export %q: %w", e.Name, err)
		}
		d.stacks = append(d.stacks, st)
		d.names = append(d.names, e.Name)
		exports = append(exports, nbd.ExportConfig{
			Name: e.Name, Description: e.Description, Device: st.Root,
			ReadOnly: e.ReadOnly, Default: e.Default,
		})
		log.Info("export ready", "export", e.Name, "size", st.Root.Size(), "layers", len(st.Nodes), "read_only", e.ReadOnly)
	}
	srv, err := nbd.NewServer(nbd.Options{
		Exports:          exports,
		MaxConnections:   cfg.Limits.MaxConnections,
		HandshakeTimeout: cfg.Limits.HandshakeTimeout,
		MaxInFlight:      cfg.Limits.MaxInFlight,
		PayloadBudget:    cfg.Limits.PayloadBudget,
		Logger:           log,
	})
	if err != nil {
		d.closeStacks()
		return nil, err
	}
	d.server = srv
	for _, l := range cfg.Listeners {
		ln, err := listen(l)
		if err != nil {
			for _, ln := range d.listeners {
				ln.Close()
			}
			d.closeStacks()
			return nil, err
		}
		d.listeners = append(d.listeners, ln)
		log.Info("listening", "network", l.Network, "address", ln.Addr().String())
		go func() { d.served <- srv.Serve(ln) }()
	}
	return d, nil
}

// listen opens one listener. A unix socket left behind by a stackd that
// died is removed first, but only if nothing answers on it.
func listen(l configs.Listener) (net.Listener, error) {
	if l.Network == "unix" {
		if fi, err := os.Lstat(l.Address); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := net.DialTimeout("unix", l.Address, time.Second); err == nil {
				c.Close()
				return nil, fmt.Errorf("listen unix %s: another server is answering there", l.Address)
			}
			os.Remove(l.Address)
		}
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
	d.closeStacks()
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
