package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSIGHUPDuringStartup: a SIGHUP while the daemon is still starting
// (here, dialling a remote that accepts and never greets, which takes
// the leg's timeout) does not kill it; it is acted on once the daemon is
// ready.
func TestSIGHUPDuringStartup(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for range 4 {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c // held open, silent: the dial waits out its timeout
		}
	}()
	dir := t.TempDir()
	conf := filepath.Join(dir, "stackd.yaml")
	cfg := "listen: [{unix: " + filepath.Join(dir, "nbd.sock") + "}]\nmetrics: {address: off}\n" +
		"exports:\n  - name: d\n    stack: {nbd: {uri: \"nbd://" + l.Addr().String() + "/x\", size: 1MiB, timeout: 1s}}\n"
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "stackd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(os.Args[0], "serve", "-config", conf)
	cmd.Env = append(os.Environ(), runAsStackd+"=1")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		// The remote never answers, so the final flush would fail:
		// this test is about surviving, not stopping.
		cmd.Process.Kill()
		<-exited
		for len(accepted) > 0 {
			(<-accepted).Close()
		}
	}()
	out := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	select {
	case <-accepted: // the host check's probe, or the leg's first dial: starting
	case <-time.After(10 * time.Second):
		t.Fatalf("the daemon never dialled its remote\n%s", out())
	}
	if strings.Contains(out(), `"ready"`) || strings.Contains(out(), "msg=ready") {
		t.Fatalf("ready before the remote's dial ended\n%s", out())
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(20 * time.Second)
	for !strings.Contains(out(), "SIGHUP: no tls section") {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("a SIGHUP during startup ended the daemon: %v\n%s", err, out())
		case <-deadline:
			t.Fatalf("the SIGHUP was not acted on after start\n%s", out())
		case <-time.After(20 * time.Millisecond):
		}
	}
	log := out()
	if i, j := strings.Index(log, "msg=ready"), strings.Index(log, "SIGHUP: no tls section"); i < 0 || j < i {
		t.Errorf("the SIGHUP was acted on before the daemon was ready\n%s", log)
	}
}
