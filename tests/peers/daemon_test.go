package peers

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/nbd/wire"
)

const (
	// readyTimeout bounds how long a starting daemon may take to answer.
	readyTimeout = 10 * time.Second
	// stopTimeout bounds a clean shutdown after SIGTERM.
	stopTimeout = 30 * time.Second
	// startAttempts bounds retries when the free TCP port picked was
	// taken by someone else before the daemon bound it.
	startAttempts = 5
	// stderrShown bounds the daemon log copied into a failing test's log.
	stderrShown = 64 << 10
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

// daemon is a running stackd.
type daemon struct {
	t       *testing.T
	Dir     string // the test's directory: config, socket, files
	Socket  string // unix socket path
	TCPAddr string // 127.0.0.1:port, if configured
	// MetricsAddr is 127.0.0.1:port of the metrics endpoint, if
	// configured (see scrape).
	MetricsAddr string

	cmd      *exec.Cmd
	log      *logBuffer
	exited   chan struct{} // closed when the process has exited
	waitErr  error         // valid after exited is closed
	stopped  bool          // Stop was called
	stopTook time.Duration // from SIGTERM to exit
}

// startDaemon starts stackd with cfg and waits until it answers. The
// daemon is stopped with SIGTERM when the test ends and must exit 0.
func startDaemon(t *testing.T, cfg daemonConfig) *daemon {
	t.Helper()
	dir := socketDir(t)
	for attempt := 1; ; attempt++ {
		d := &daemon{t: t, Dir: dir, Socket: filepath.Join(dir, "nbd.sock")}
		if cfg.TCP {
			d.TCPAddr = freePort(t)
		}
		if cfg.Metrics {
			d.MetricsAddr = freePort(t)
		}
		conf := filepath.Join(dir, "stackd.yaml")
		if err := os.WriteFile(conf, []byte(d.config(cfg)), 0o644); err != nil {
			t.Fatal(err)
		}
		d.log = &logBuffer{}
		d.cmd = exec.Command(stackdBin, "serve", "-config", conf)
		d.cmd.Stdout = d.log
		d.cmd.Stderr = d.log
		if err := d.cmd.Start(); err != nil {
			t.Fatalf("start stackd: %v", err)
		}
		d.exited = make(chan struct{})
		go func() {
			d.waitErr = d.cmd.Wait()
			close(d.exited)
		}()
		err := d.waitReady()
		if err == nil {
			t.Cleanup(d.stop)
			return d
		}
		select {
		case <-d.exited:
		default:
			d.cmd.Process.Kill()
			<-d.exited
		}
		if (cfg.TCP || cfg.Metrics) && attempt < startAttempts && strings.Contains(d.log.String(), "address already in use") {
			t.Logf("port %s or %s was taken; retrying", d.TCPAddr, d.MetricsAddr)
			continue
		}
		t.Fatalf("stackd did not start: %v\nconfig:\n%s\nstackd output:\n%s", err, d.config(cfg), d.log.tail())
	}
}

func (d *daemon) config(cfg daemonConfig) string {
	var b strings.Builder
	b.WriteString("listen:\n")
	fmt.Fprintf(&b, "  - unix: %s\n", strconv.Quote(d.Socket))
	if d.TCPAddr != "" {
		fmt.Fprintf(&b, "  - tcp: %s\n", strconv.Quote(d.TCPAddr))
		if cfg.TCPAllow != "" {
			fmt.Fprintf(&b, "    allow: %s\n", cfg.TCPAllow)
		}
	}
	if cfg.TLS != "" {
		fmt.Fprintf(&b, "tls: %s\n", cfg.TLS)
	}
	if d.MetricsAddr != "" {
		fmt.Fprintf(&b, "metrics: {address: %s}\n", strconv.Quote(d.MetricsAddr))
	} else {
		b.WriteString("metrics: {address: off}\n")
	}
	if cfg.Limits != "" {
		fmt.Fprintf(&b, "limits: %s\n", cfg.Limits)
	}
	b.WriteString("exports:\n")
	for _, e := range cfg.Exports {
		fmt.Fprintf(&b, "  - name: %s\n", strconv.Quote(e.Name))
		if e.Description != "" {
			fmt.Fprintf(&b, "    description: %s\n", strconv.Quote(e.Description))
		}
		if e.ReadOnly {
			b.WriteString("    read_only: true\n")
		}
		if e.Default {
			b.WriteString("    default: true\n")
		}
		if e.TLS != "" {
			fmt.Fprintf(&b, "    tls: %s\n", e.TLS)
		}
		if e.Allow != "" {
			fmt.Fprintf(&b, "    allow: %s\n", e.Allow)
		}
		fmt.Fprintf(&b, "    stack: %s\n", e.Stack)
	}
	return b.String()
}

// waitReady polls the socket until the server sends its NBD greeting.
func (d *daemon) waitReady() error {
	deadline := time.Now().Add(readyTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			return fmt.Errorf("stackd exited: %v", d.waitErr)
		default:
		}
		last = greets("unix", d.Socket)
		if last == nil && d.TCPAddr != "" {
			last = greets("tcp", d.TCPAddr)
		}
		if last == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no NBD greeting within %v: %v", readyTimeout, last)
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

// stop is the cleanup: it stops the daemon unless the test already did,
// and shows its log if the test failed.
func (d *daemon) stop() {
	t := d.t
	if !d.stopped {
		select {
		case <-d.exited:
			t.Errorf("stackd exited before the test ended: %v", d.waitErr)
			d.stopped = true
		default:
			d.Stop(t)
		}
	}
	if t.Failed() {
		t.Logf("stackd output:\n%s", d.log.tail())
	}
}

// Stop sends SIGTERM and requires a clean exit (status 0) within
// stopTimeout; on timeout it kills the daemon.
func (d *daemon) Stop(t *testing.T) {
	t.Helper()
	if d.stopped {
		return
	}
	d.stopped = true
	start := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		if d.waitErr != nil {
			t.Errorf("stackd did not exit cleanly after SIGTERM: %v", d.waitErr)
		}
	case <-time.After(stopTimeout):
		d.cmd.Process.Kill()
		<-d.exited
		t.Errorf("stackd still running %v after SIGTERM; killed", stopTimeout)
	}
	d.stopTook = time.Since(start)
}

// alive fails the test if the daemon has exited.
func (d *daemon) alive() {
	d.t.Helper()
	select {
	case <-d.exited:
		d.t.Fatalf("stackd exited: %v\n%s", d.waitErr, d.log.tail())
	default:
	}
}

// uri is the NBD URI of an export over the unix socket.
func (d *daemon) uri(name string) string {
	return "nbd+unix:///" + name + "?socket=" + d.Socket
}

// tcpURI is the NBD URI of an export over TCP.
func (d *daemon) tcpURI(name string) string {
	return "nbd://" + d.TCPAddr + "/" + name
}

// socketDir returns a directory for the test whose socket path fits in
// sun_path (108 bytes).
func socketDir(t *testing.T) string {
	dir := t.TempDir()
	if len(dir)+len("/nbd.sock") < 100 {
		return dir
	}
	dir, err := os.MkdirTemp("", "stackd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// freePort returns a 127.0.0.1 address whose port was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// logBuffer collects the daemon's output.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// tail is the end of the log, at most stderrShown bytes.
func (l *logBuffer) tail() string {
	s := l.String()
	if len(s) > stderrShown {
		s = "[...]\n" + s[len(s)-stderrShown:]
	}
	return s
}
