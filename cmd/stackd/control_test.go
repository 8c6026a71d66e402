package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/configs"
	"github.com/stackd/stackd/control"
	"github.com/stackd/stackd/control/controltest"
	"github.com/stackd/stackd/nbd/client"
)

// runAsStackd makes the test binary run as stackd itself, with its
// arguments: the daemon of the tests below is this binary, so that it
// has the test-only kinds that take actions.
const runAsStackd = "STACKD_TEST_RUN_AS_STACKD"

func TestMain(m *testing.M) {
	if os.Getenv(runAsStackd) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// controlConfig is a configuration with controltest.Stack as its
// default export, and a second export with nothing that takes actions.
func controlConfig(dir, control string) string {
	return `
listen: [{unix: ` + filepath.Join(dir, "nbd.sock") + `}]
metrics: {address: off}
control: ` + control + `
exports:
  - name: disk
    default: true
    stack: ` + controltest.Stack + `
  - name: plain
    stack: {memory: {size: 1MiB}}
`
}

// startLive starts `stackd serve -config conf` as a process of its own
// and waits until its control socket answers. It is stopped with SIGTERM
// when the test ends, and must exit 0.
func startLive(t *testing.T, conf, sock string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "serve", "-config", conf)
	cmd.Env = append(os.Environ(), runAsStackd+"=1")
	// A file, which the daemon writes itself, and the test reads at any
	// time.
	logPath := filepath.Join(t.TempDir(), "stackd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := func() string {
		b, _ := os.ReadFile(logPath)
		return string(b)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("stackd did not exit cleanly: %v", err)
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("stackd still running 30s after SIGTERM")
		}
		if t.Failed() {
			t.Logf("stackd output:\n%s", out())
		}
	})
	c := control.NewClient(sock)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err := c.Status(context.Background())
		if err == nil {
			return
		}
		select {
		case err := <-exited:
			t.Fatalf("stackd exited: %v\n%s", err, out())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the control socket does not answer: %v\n%s", err, out())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestControlLive runs every command of the control socket against a
// running daemon.
func TestControlLive(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "control.sock")
	conf := filepath.Join(dir, "stackd.yaml")
	if err := os.WriteFile(conf, []byte(controlConfig(dir, sock)), 0o644); err != nil {
		t.Fatal(err)
	}
	startLive(t, conf, sock)

	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v, %v; want a socket of mode 0600", fi.Mode(), err)
	}

	// Traffic through the daemon shows in the tree.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := client.Dial(ctx, "unix", filepath.Join(dir, "nbd.sock"), client.Options{ExportName: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := nc.Write(ctx, uint64(i)*4096, make([]byte, 4096), 0); err != nil {
			t.Fatal(err)
		}
	}

	mustRun := func(want string, args ...string) string {
		t.Helper()
		code, out, errOut := runCmd(args...)
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("stackd %s: exit %d, want %q in\n%s%s", strings.Join(args, " "), code, want, out, errOut)
		}
		return out
	}
	out := mustRun("disk (1MiB, default)", "status", "-control", sock)
	for _, want := range []string{
		"server: 1 connection, payload ",
		"  split 1MiB requests=3 pool=0/1024 punted=0 rescued=0 ",
		"      testswitch 1MiB requests=3 mode=on switches=0 [in_sync] ",
		"      memory 1MiB requests=0 [in_sync] ",
		"  disk/split/testmirror/leg1\n",
		"plain (1MiB)\n  memory 1MiB requests=0 ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	nc.Close()
	// The socket found through the daemon's configuration.
	mustRun("testmirror", "status", "-config", conf)
	raw := mustRun(`"exports"`, "status", "-json", "-control", sock)
	var st control.Status
	if err := json.Unmarshal([]byte(raw), &st); err != nil || len(st.Exports) != 2 || st.Exports[0].Root.Legs[0].Kind != "testmirror" {
		t.Errorf("status -json: %v\n%s", err, raw)
	}

	mustRun("disk/split/testmirror: fail leg 1: done\n", "leg", "fail", "disk/split/testmirror/leg1", "-control", sock)
	mustRun("[faulty]", "status", "-control", sock)
	mustRun("disk/split/testmirror: restore leg 1: done\n", "leg", "-config", conf, "restore", "disk/split/testmirror/leg1")
	mustRun("      memory 1MiB requests=0 [resyncing 0% resync=256MiB/s] ", "status", "-control", sock)
	mustRun("disk/split/testmirror/leg0: down-now: done\n", "fault", "disk/split/testmirror/leg0", "down-now", "-control", sock)
	mustRun("testswitch 1MiB requests=3 mode=down switches=1 [in_sync]", "status", "-control", sock)

	// Refusals: the message and status the socket answered, exit 1.
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"fault", "disk/nope", "on"}, `no node at "disk/nope"; ` + "`stackd status` lists the paths (404)"},
		{[]string{"leg", "fail", "disk/split/testmirror/leg9"}, "no node at"},
		{[]string{"fault", "disk/split", "on"}, "disk/split is a split, which takes no actions (400)"},
		{[]string{"fault", "plain/memory", "off"}, "plain/memory is a memory, which takes no actions (400)"},
		{[]string{"leg", "fail", "disk/split/testmirror"}, "is not a leg of a layer with many legs"},
		{[]string{"fault", "disk/split/testmirror/leg0", "sideways"}, `unknown action "sideways"`},
		{[]string{"leg", "fail", "disk/split/testmirror/leg0"}, "leg 0 is the last one in sync (409)"},
	} {
		code, out, errOut := runCmd(append(tc.args, "-control", sock)...)
		if code != 1 || out != "" || !strings.Contains(errOut, tc.says) || !strings.HasPrefix(errOut, "stackd: ") {
			t.Errorf("stackd %s: exit %d, %q, %q; want 1 and %q", strings.Join(tc.args, " "), code, out, errOut, tc.says)
		}
	}
	for _, args := range [][]string{{"leg", "fail"}, {"fault", "disk/split"}, {"status", "extra"}, {"status", "-frob"}} {
		if code, _, _ := runCmd(append(args, "-control", sock)...); code != 2 {
			t.Errorf("stackd %s: exit %d, want 2", strings.Join(args, " "), code)
		}
	}
	if code, _, errOut := runCmd("status", "-control", filepath.Join(dir, "none.sock")); code != 1 || !strings.Contains(errOut, "is stackd running") {
		t.Errorf("no socket: exit %d, %q", code, errOut)
	}
	plainConf := filepath.Join(dir, "plain.yaml")
	os.WriteFile(plainConf, []byte("exports:\n  - name: a\n    stack: {memory: {size: 1MiB}}\n"), 0o644)
	if code, _, errOut := runCmd("status", "-config", plainConf); code != 1 || !strings.Contains(errOut, "names no control socket") {
		t.Errorf("a configuration with no control: exit %d, %q", code, errOut)
	}

	// A second daemon on the same control socket does not start, and
	// leaves the first one's socket alone.
	dir2 := t.TempDir()
	cfg2, err := configs.Parse(filepath.Join(dir2, "stackd.yaml"), []byte(controlConfig(dir2, sock)))
	if err != nil {
		t.Fatal(err)
	}
	if d, err := start(cfg2, slog.New(slog.DiscardHandler), serveOptions{}); err == nil {
		d.stop()
		t.Fatal("a second daemon started on a control socket in use")
	} else if !strings.Contains(err.Error(), "another server is answering there") {
		t.Errorf("second daemon: %v", err)
	}
	mustRun("testmirror", "status", "-control", sock)
}

// TestControlStaleSocket: a socket left behind by a daemon that died is
// replaced; the new one is mode 0600 whatever the umask, and goes when
// the daemon stops.
func TestControlStaleSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "control.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // as if its daemon had been killed
	os.Chmod(sock, 0o777)
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	cfg, err := configs.Parse(filepath.Join(dir, "stackd.yaml"), []byte(controlConfig(dir, sock)))
	if err != nil {
		t.Fatal(err)
	}
	d, err := start(cfg, slog.New(slog.DiscardHandler), serveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket: %v, %v; want mode 0600 under umask 0", fi.Mode(), err)
	}
	if code, out, errOut := runCmd("status", "-control", sock); code != 0 || !strings.Contains(out, "testmirror") {
		t.Errorf("status: exit %d\n%s%s", code, out, errOut)
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("control socket still there after stop: %v", err)
	}

	// Something that is not a socket is never removed.
	if err := os.WriteFile(sock, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if d, err := start(cfg, slog.New(slog.DiscardHandler), serveOptions{}); err == nil {
		d.stop()
		t.Error("started over a regular file at the control path")
	}
	if b, err := os.ReadFile(sock); err != nil || string(b) != "precious" {
		t.Errorf("the file at the control path: %q, %v", b, err)
	}
}

// TestControlOtherUser: a user other than the daemon's cannot connect to
// the control socket; the same user can once the mode allows, so it is
// the socket's mode that refuses, not a directory on the way. Needs root,
// to run a process as nobody.
func TestControlOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: needs root to run a client as another user")
		}
		t.Skip("needs root to run a client as another user")
	}
	// Directories nobody can search, and a binary nobody can run: the
	// test's own, under t.TempDir, and the go build cache's.
	dir, err := os.MkdirTemp("", "stackd-ctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "stackd.test")
	copyFile(t, os.Args[0], bin, 0o755)
	sock := filepath.Join(dir, "control.sock")
	conf := filepath.Join(dir, "stackd.yaml")
	if err := os.WriteFile(conf, []byte(controlConfig(dir, sock)), 0o644); err != nil {
		t.Fatal(err)
	}
	startLive(t, conf, sock)

	asNobody := func() (int, string) {
		cmd := exec.Command(bin, "status", "-control", sock)
		cmd.Env = append(os.Environ(), runAsStackd+"=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, _ := cmd.CombinedOutput()
		return cmd.ProcessState.ExitCode(), string(out)
	}
	if code, out := asNobody(); code != 1 || !strings.Contains(out, "permission denied") || !strings.Contains(out, "mode 0600") {
		t.Errorf("status as nobody: exit %d, %q; want permission denied", code, out)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	code, out := asNobody()
	os.Chmod(sock, 0o600)
	if code != 0 || !strings.Contains(out, "testmirror") {
		t.Errorf("status as nobody with the socket 0666: exit %d, %q", code, out)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
