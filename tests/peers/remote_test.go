package peers

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The nbd kind through the real daemon: a front stackd whose export
// stripes over remote legs served by a remote stackd, nbdkit's memory
// plugin and qemu-nbd on a file, driven by fio, nbdcopy and qemu-img.

// remoteLegSize is each remote's size: small enough that a random image
// of the whole front export is quick to write and hash.
const remoteLegSize = 32 * MiB

// remoteServer is one NBD server a front leg points at.
type remoteServer struct {
	name string
	uri  string // the nbd leg's uri
	// proc is a peer's process; nil for a stackd, which is a daemon.
	proc *exec.Cmd
}

// startPeer starts an NBD server process and waits until it greets on
// the unix socket sock. It is killed, and waited for, when the test ends.
func startPeer(t *testing.T, sock string, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	log, err := os.Create(sock + ".log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		log.Close()
		if t.Failed() {
			out, _ := os.ReadFile(sock + ".log")
			t.Logf("%s output:\n%s", name, out)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for greets("unix", sock) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not greet on %s within 10s", cmdline(name, args), sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd
}

// remoteStackd is a stackd serving a memory export, disk0, over loopback
// TCP.
func remoteStackd(t *testing.T) remoteServer {
	d := startDaemon(t, daemonConfig{TCP: true, Exports: []export{{Name: "disk0", Stack: memStack(remoteLegSize / 4)}}})
	return remoteServer{name: "stackd", uri: "nbd://" + d.TCPAddr + "/disk0"}
}

// remoteNbdkit is nbdkit's memory plugin on a unix socket.
func remoteNbdkit(t *testing.T) remoteServer {
	need(t, "nbdkit")
	sock := filepath.Join(socketDir(t), "nbdkit.sock")
	cmd := startPeer(t, sock, "nbdkit", "-f", "--exit-with-parent", "-U", sock, "memory", fmt.Sprintf("size=%d", remoteLegSize))
	return remoteServer{name: "nbdkit", uri: "nbd+unix:///?socket=" + sock, proc: cmd}
}

// remoteQemuNbd is qemu-nbd serving a file on a unix socket, to several
// clients (-e), persistently (-t): the host check's probe and the leg's
// connection come one after the other.
func remoteQemuNbd(t *testing.T) remoteServer {
	need(t, "qemu-nbd")
	dir := socketDir(t)
	img := filepath.Join(dir, "leg.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, remoteLegSize); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "qemu.sock")
	cmd := startPeer(t, sock, "qemu-nbd", "-f", "raw", "-t", "-e", "8", "-x", "disk0", "-k", sock, img)
	return remoteServer{name: "qemu-nbd", uri: "nbd+unix:///disk0?socket=" + sock, proc: cmd}
}

// frontStripe is a stripe of 64 KiB chunks over nbd legs at uris; the
// first leg gives its size, the others learn it from the remote.
func frontStripe(uris []string, timeout string) string {
	legs := make([]string, len(uris))
	for i, u := range uris {
		size := ""
		if i == 0 {
			size = fmt.Sprintf(", size: %d", remoteLegSize)
		}
		legs[i] = fmt.Sprintf("{nbd: {uri: %s, connections: 4, timeout: %s%s}}", strconv.Quote(u), timeout, size)
	}
	return "{stripe: {chunk: 64KiB, legs: [" + strings.Join(legs, ", ") + "]}}"
}

// TestRemoteLegs: the front stripes over three remotes (stackd, nbdkit,
// qemu-nbd), and over two; fio verifies what it writes, an nbdcopy round
// trip hashes the same, qemu-img compares the image with the export, and
// every leg stayed connected without a retry or a timeout.
func TestRemoteLegs(t *testing.T) {
	need(t, "fio")
	need(t, "nbdcopy")
	need(t, "qemu-img")
	for _, tc := range []struct {
		name    string
		remotes []func(*testing.T) remoteServer
	}{
		{"three", []func(*testing.T) remoteServer{remoteStackd, remoteNbdkit, remoteQemuNbd}},
		{"two", []func(*testing.T) remoteServer{remoteStackd, remoteNbdkit}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var uris []string
			for _, start := range tc.remotes {
				uris = append(uris, start(t).uri)
			}
			front := startDaemon(t, daemonConfig{Metrics: true, Exports: []export{{Name: "default", Stack: frontStripe(uris, "30s")}}})
			uri := front.uri("default")
			size := int64(len(uris)) * remoteLegSize

			fioVerify(t, uri, size)
			runFio(t, uri, "--name=mixed", "--rw=randrw", "--bsrange=512-1M", "--blockalign=512",
				"--iodepth=16", fmt.Sprintf("--size=%d", size), "--verify=crc32c", "--do_verify=1")

			src := nbdcopyRoundTrip(t, uri, size, 13, fmt.Sprintf("over %d remotes", len(uris)))
			if out := mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri); !strings.Contains(out, "identical") {
				t.Errorf("qemu-img compare: %s", out)
			}

			m := front.scrape(t)
			for i := range uris {
				layer := fmt.Sprintf("layer=%q", "default/stripe/leg"+strconv.Itoa(i))
				if v := m["stackd_remote_connections{"+layer+`,state="connected"}`]; v < 1 {
					t.Errorf("leg %d (%s): %d connections connected", i, uris[i], v)
				}
				for _, name := range []string{"stackd_remote_requests_retried_total", "stackd_remote_requests_timed_out_total", "stackd_remote_reconnects_total"} {
					if v := m[name+"{"+layer+"}"]; v != 0 {
						t.Errorf("leg %d: %s = %d on a healthy remote", i, name, v)
					}
				}
			}
		})
	}
}

// TestRemoteDownAtStart: a front whose remote is not there yet starts
// anyway (the leg has a size), fails requests with EIO after the timeout,
// and serves them once the remote comes up.
func TestRemoteDownAtStart(t *testing.T) {
	need(t, "nbdkit")
	need(t, "qemu-io")
	sock := filepath.Join(socketDir(t), "late.sock")
	front := startDaemon(t, daemonConfig{Exports: []export{{Name: "default",
		Stack: fmt.Sprintf("{nbd: {uri: %s, timeout: 1s, size: %d}}", strconv.Quote("nbd+unix:///?socket="+sock), remoteLegSize)}}})
	uri := front.uri("default")
	start := time.Now()
	out, _ := run(t, "qemu-io", "-f", "raw", "-c", "read 0 4k", uri)
	if !qemuIOFailed(out) {
		t.Fatalf("read from a remote that is not there: %s", out)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the failed read took %v with a 1s timeout", took)
	}
	front.alive()
	startPeer(t, sock, "nbdkit", "-f", "--exit-with-parent", "-U", sock, "memory", fmt.Sprintf("size=%d", remoteLegSize))
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _ := run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", "-c", "read -P 0x5a 0 64k", uri)
		if !qemuIOFailed(out) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the remote is up, yet requests still fail after 20s: %s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Before the remote goes: the final flush of shutdown reaches it.
	front.Stop(t)
}
