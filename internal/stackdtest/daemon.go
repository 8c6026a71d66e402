package stackdtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// buildBound bounds building the daemon: the module cache may be cold.
	buildBound = 5 * time.Minute
	// ReadyBound bounds a starting daemon's way to its "ready" record:
	// stacks built, files opened, every listener up.
	ReadyBound = 20 * time.Second
	// StopBound bounds a clean exit after SIGTERM: the daemon's own
	// shutdown grace (30 s) and final flush, and some slack.
	StopBound = 45 * time.Second
	// logShown bounds the daemon log a failing test prints.
	logShown = 64 << 10
)

// ModuleRoot is the directory of stackd's go.mod, found from this file's
// place in the tree (internal/stackdtest), whatever directory a test runs
// in.
func ModuleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("stackdtest: cannot tell where the source is")
	}
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("stackdtest: no go.mod at %s: %w", root, err)
	}
	return root, nil
}

// Build builds cmd/stackd into dir and returns the binary's path; with
// race, under the race detector, so that a race the real load provokes in
// the daemon makes it exit 66 with the report in its log. Tests build it
// once, from TestMain: `go test` does not rebuild binaries that a test runs,
// so the daemon a test drives is the code in the tree now.
func Build(dir string, race bool) (string, error) {
	return BuildWith(dir, BuildOptions{Race: race})
}

// BuildOptions say how BuildWith builds the daemon.
type BuildOptions struct {
	// Race builds it under the race detector.
	Race bool
	// Tags are build tags, such as rbd and pacific for the rbd target.
	Tags []string
}

// BuildWith is Build with build tags.
func BuildWith(dir string, o BuildOptions) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "stackd")
	args := []string{"build", "-o", bin}
	if o.Race {
		args = append(args, "-race")
	}
	if len(o.Tags) > 0 {
		args = append(args, "-tags", strings.Join(o.Tags, ","))
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildBound)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool(), append(args, "./cmd/stackd")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s ./cmd/stackd: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin, nil
}

// goTool is the go command of the toolchain running the tests.
func goTool() string {
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return "go"
}

// Daemon is a running `stackd serve`, logging JSON records, which is how
// the harness learns where it listens (so configs can ask for port 0 and
// nothing races for a free port) and when it is ready.
type Daemon struct {
	// Config is the path of the configuration it serves.
	Config string
	// TCP and Unix are the addresses its NBD listeners bound, in the
	// order it logged them; Metrics the metrics address, if served.
	TCP, Unix []string
	Metrics   string
	// StopTook is how long the last Stop took, from SIGTERM to exit.
	StopTook time.Duration

	t       testing.TB
	cmd     *exec.Cmd
	log     *Log
	exited  chan struct{} // closed once the process has exited
	waitErr error         // valid once exited is closed
	stopped bool
}

// Start runs bin serving the configuration configYAML, written to
// dir/stackd.yaml, and returns once the daemon has logged that it is ready.
// The daemon must stay up until the test stops it or ends: the cleanup
// fails the test if it exited on its own, stops it with SIGTERM otherwise
// (requiring exit status 0), and prints the end of its log if the test
// failed.
func Start(t testing.TB, bin, dir, configYAML string, args ...string) *Daemon {
	t.Helper()
	conf := filepath.Join(dir, "stackd.yaml")
	if err := os.WriteFile(conf, []byte(configYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &Daemon{Config: conf, t: t, log: &Log{}, exited: make(chan struct{})}
	d.cmd = exec.Command(bin, append([]string{"serve", "-config", conf, "-log-format", "json"}, args...)...)
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stdout = d.cmd.Stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start stackd: %v", err)
	}
	ready := make(chan struct{})
	var readyOnce sync.Once
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			d.log.add(line)
			var r struct{ Msg, Network, Address string }
			if json.Unmarshal([]byte(line), &r) != nil {
				continue
			}
			// The address fields are written before ready is closed, and
			// read only after.
			switch r.Msg {
			case "listening":
				if r.Network == "tcp" {
					d.TCP = append(d.TCP, r.Address)
				} else {
					d.Unix = append(d.Unix, r.Address)
				}
			case "serving metrics":
				d.Metrics = r.Address
			case "ready":
				readyOnce.Do(func() { close(ready) })
			}
		}
		d.waitErr = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(d.cleanup)
	select {
	case <-ready:
		return d
	case <-d.exited:
		t.Fatalf("stackd exited at start: %v\nconfig:\n%s\nlog:\n%s", d.waitErr, configYAML, d.log.Tail())
	case <-time.After(ReadyBound):
		t.Fatalf("stackd not ready after %v\nconfig:\n%s\nlog:\n%s", ReadyBound, configYAML, d.log.Tail())
	}
	return nil
}

func (d *Daemon) cleanup() {
	t := d.t
	if !d.stopped {
		select {
		case <-d.exited:
			d.stopped = true
			t.Errorf("stackd exited before the test ended: %v", d.waitErr)
		default:
			d.Stop(t)
		}
	}
	if t.Failed() {
		t.Logf("stackd log:\n%s", d.log.Tail())
	}
}

// Stop sends SIGTERM and requires a clean exit (status 0) within
// StopBound; past it the daemon is killed and the test fails.
func (d *Daemon) Stop(t testing.TB) {
	t.Helper()
	if d.stopped {
		return
	}
	d.stopped = true
	start := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM to stackd: %v", err)
	}
	select {
	case <-d.exited:
		if d.waitErr != nil {
			t.Errorf("stackd exited with %v after SIGTERM, want exit 0", d.waitErr)
		}
	case <-time.After(StopBound):
		d.cmd.Process.Kill()
		<-d.exited
		t.Errorf("stackd still running %v after SIGTERM; killed", StopBound)
	}
	d.StopTook = time.Since(start)
}

// Kill ends the daemon with SIGKILL, as a crash would, and waits for it.
func (d *Daemon) Kill() {
	d.stopped = true
	d.cmd.Process.Kill()
	<-d.exited
}

// Alive fails the test at once if the daemon has exited.
func (d *Daemon) Alive(t testing.TB) {
	t.Helper()
	select {
	case <-d.exited:
		t.Fatalf("stackd exited: %v\n%s", d.waitErr, d.log.Tail())
	default:
	}
}

// Log is the daemon's output so far.
func (d *Daemon) Log() *Log { return d.log }

// Log collects a daemon's output, a JSON record a line.
type Log struct {
	mu    sync.Mutex
	lines []string
}

func (l *Log) add(line string) {
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
}

// String is the whole log.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// Tail is the end of the log, at most logShown bytes.
func (l *Log) Tail() string {
	s := l.String()
	if len(s) > logShown {
		s = "[...]\n" + s[len(s)-logShown:]
	}
	return s
}

// Records returns the lines that parse as JSON records, numbers kept as
// json.Number.
func (l *Log) Records() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range l.lines {
		var r map[string]any
		dec := json.NewDecoder(strings.NewReader(line))
		dec.UseNumber()
		if dec.Decode(&r) == nil {
			out = append(out, r)
		}
	}
	return out
}
