package peers

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/nbd/wire"
)

// export is one export of a test daemon's configuration.
type export struct {
	Name        string
	Description string
	ReadOnly    bool
	Default     bool
	// Stack is a stack node in YAML flow style (see memStack, fileStack).
	Stack string
	// TLS is the export's tls: ("required"), or empty.
	TLS string
	// Allow is the export's allow list in YAML flow style, or empty.
	Allow string
}

// daemonConfig is what a test needs from its daemon.
type daemonConfig struct {
	Exports []export
	// TCP adds a listener on 127.0.0.1 at a free port.
	TCP bool
	// Limits is the limits mapping in YAML flow style, or empty.
	Limits string
	// Metrics serves the daemon's metrics on 127.0.0.1 at a free port
	// (daemon.MetricsAddr); without it they are off.
	Metrics bool
	// Control is the path of the control socket (daemon.ControlSocket),
	// or empty for none.
	Control string
	// TLS is the tls: section in YAML flow style, or empty.
	TLS string
	// TCPAllow is the TCP listener's allow list in YAML flow style, or
	// empty.
	TCPAllow string
}

// memStack is the default configuration's stack shape (split at 1 MiB
// over a 4-way stripe of 64 KiB chunks) over four RAM legs of legSize
// bytes each.
func memStack(legSize int64) string {
	legs := make([]string, 4)
	for i := range legs {
		legs[i] = fmt.Sprintf("{memory: {size: %d}}", legSize)
	}
	return "{split: {max_bytes: 1MiB, leg: {stripe: {chunk: 64KiB, legs: [" + strings.Join(legs, ", ") + "]}}}}"
}

// fileStack is the same shape over four files in dir, which stackd
// creates at legSize bytes each.
func fileStack(dir string, legSize int64) string {
	legs := make([]string, 4)
	for i := range legs {
		p := filepath.Join(dir, fmt.Sprintf("leg%d.img", i))
		legs[i] = fmt.Sprintf("{file: {path: %s, size: %d}}", strconv.Quote(p), legSize)
	}
	return "{split: {max_bytes: 1MiB, leg: {stripe: {chunk: 64KiB, legs: [" + strings.Join(legs, ", ") + "]}}}}"
}

// daemon is a running stackd (stackdtest.Daemon) and what the tests
// address it by.
type daemon struct {
	*stackdtest.Daemon
	t       *testing.T
	Dir     string // the test's directory: config, socket, files
	Socket  string // unix socket path
	TCPAddr string // 127.0.0.1:port, if configured
	// MetricsAddr is 127.0.0.1:port of the metrics endpoint, if
	// configured (see scrape).
	MetricsAddr string
	// ControlSocket is the control socket's path, if configured.
	ControlSocket string
}

// startDaemon starts stackd with cfg and waits until it is ready. The
// daemon is stopped with SIGTERM when the test ends and must exit 0. TCP
// and metrics listen on port 0: the daemon's log says where.
func startDaemon(t *testing.T, cfg daemonConfig) *daemon {
	t.Helper()
	dir := socketDir(t)
	d := &daemon{t: t, Dir: dir, Socket: filepath.Join(dir, "nbd.sock"), ControlSocket: cfg.Control}
	d.Daemon = stackdtest.Start(t, stackdBin, dir, d.config(cfg))
	if cfg.TCP {
		d.TCPAddr = d.Daemon.TCP[0]
	}
	d.MetricsAddr = d.Daemon.Metrics
	return d
}

func (d *daemon) config(cfg daemonConfig) string {
	var b strings.Builder
	// set writes key (indented) only when it has a value.
	set := func(key, value string) {
		if value != "" {
			fmt.Fprintf(&b, "%s: %s\n", key, value)
		}
	}
	on := func(key string, v bool) {
		if v {
			set(key, "true")
		}
	}
	quoted := func(s string) string {
		if s == "" {
			return ""
		}
		return strconv.Quote(s)
	}
	b.WriteString("listen:\n")
	fmt.Fprintf(&b, "  - unix: %s\n", strconv.Quote(d.Socket))
	if cfg.TCP {
		b.WriteString("  - tcp: 127.0.0.1:0\n")
		set("    allow", cfg.TCPAllow)
	}
	set("tls", cfg.TLS)
	if cfg.Metrics {
		b.WriteString("metrics: {address: 127.0.0.1:0}\n")
	} else {
		b.WriteString("metrics: {address: off}\n")
	}
	set("control", quoted(cfg.Control))
	set("limits", cfg.Limits)
	b.WriteString("exports:\n")
	for _, e := range cfg.Exports {
		fmt.Fprintf(&b, "  - name: %s\n", strconv.Quote(e.Name))
		set("    description", quoted(e.Description))
		on("    read_only", e.ReadOnly)
		on("    default", e.Default)
		set("    tls", e.TLS)
		set("    allow", e.Allow)
		fmt.Fprintf(&b, "    stack: %s\n", e.Stack)
	}
	return b.String()
}

// greets reports whether an NBD server answers at addr.
func greets(network, addr string) error {
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	var g [wire.GreetingLen]byte
	if _, err := io.ReadFull(c, g[:]); err != nil {
		return err
	}
	if _, ok := wire.DecodeGreeting(g[:]); !ok {
		return fmt.Errorf("not an NBD greeting: %x", g)
	}
	return nil
}

// alive fails the test if the daemon has exited.
func (d *daemon) alive() {
	d.t.Helper()
	d.Alive(d.t)
}

// uri is the NBD URI of an export over the unix socket.
func (d *daemon) uri(name string) string {
	return "nbd+unix:///" + name + "?socket=" + d.Socket
}

// dial opens a client connection to export over the unix socket, within
// ctx; the test ends it.
func (d *daemon) dial(t *testing.T, ctx context.Context, export string) *client.Client {
	t.Helper()
	c, err := client.Dial(ctx, "unix", d.Socket, client.Options{ExportName: export})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// tcpURI is the NBD URI of an export over TCP.
func (d *daemon) tcpURI(name string) string {
	return "nbd://" + d.TCPAddr + "/" + name
}

// socketDir is a directory for the daemon's sockets (see
// stackdtest.SocketDir).
var socketDir = stackdtest.SocketDir
