// Package e2e tests stackd against the real Linux kernel NBD client: a
// stock Debian kernel booted under qemu (software emulation) attaches an
// export with nbd-client, makes and checks an ext4 filesystem on it, and
// powers off (init.sh is the guest's scenario); the host then reads the
// export back through stackd and checks the filesystem and a file the
// guest wrote. One more case leaves the device idle for longer than
// stackd's reply timeout between large and small requests, which must all
// succeed. Another runs the filesystem case over TLS, nbd-client
// presenting a client certificate to a stackd that requires both. A
// relay between the guest and stackd decodes what the kernel sends, and
// the test logs it.
//
// prepare.sh installs qemu and friends when missing (as root) and builds
// the guests (kernel, initramfs) under tests/e2e/cache/, or
// $STACKD_E2E_CACHE. When a prerequisite is missing and cannot be had,
// the tests fail under CI=true and skip otherwise; -short, or
// STACKD_E2E=off, skips them outright. A run takes 4 to 6 minutes, plus
// about a minute to install and download on a fresh machine.
//
//	go test -count=1 -v ./tests/e2e/
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd/wire"
)

const (
	// guestBound bounds one guest run, boot to power-off. A run takes
	// 30 to 90 s under emulation; the kernel client has no request
	// timeout, so a server that stops answering would hang the guest
	// for ever: past this bound qemu is killed and the test fails.
	guestBound = 4 * time.Minute
	// prepareBound bounds prepare.sh: installing qemu and downloading two
	// kernels on a fresh machine; a second run only checks its cache.
	prepareBound = 10 * time.Minute
	// hostToolBound bounds each host-side check (nbdcopy, e2fsck, debugfs)
	// of a 1 GiB export.
	hostToolBound = 2 * time.Minute
)

// stackdBin is the stackd built by TestMain.
var stackdBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() || os.Getenv("STACKD_E2E") == "off" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "stackd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	// With the race detector, a data race the kernel's load provokes
	// makes stackd exit 66, and its report lands in the log the test
	// prints.
	if stackdBin, err = stackdtest.Build(dir, raceEnabled); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building stackd:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func skipUnlessE2E(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no kernel-client end-to-end tests")
	}
	if os.Getenv("STACKD_E2E") == "off" {
		t.Skip("STACKD_E2E=off")
	}
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		stackdtest.Missing(t, "the guest is a Debian amd64 kernel booted by qemu on a Linux amd64 host, not %s/%s",
			runtime.GOOS, runtime.GOARCH)
	}
}

// bound returns a context that ends after d, or a little before the test
// binary's own deadline, whichever comes first, so that a hang is
// reported by this test rather than by go test's panic.
func bound(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	if dl, ok := t.Deadline(); ok {
		if left := time.Until(dl) - 20*time.Second; left < d {
			d = max(left, time.Second)
		}
	}
	return context.WithTimeout(context.Background(), d)
}

// guest is what prepare.sh made for one kernel series.
type guest struct {
	vmlinuz, initrd, release string
}

var prepared struct {
	sync.Mutex
	guests map[string]guest
	errs   map[string]string // series → why there is no guest
}

// prepareGuest runs prepare.sh for series ("6.1", "6.12") once per test
// binary and returns its guest, or reports the missing prerequisite.
func prepareGuest(t *testing.T, series string) guest {
	t.Helper()
	prepared.Lock()
	defer prepared.Unlock()
	if g, ok := prepared.guests[series]; ok {
		return g
	}
	if msg, ok := prepared.errs[series]; ok {
		stackdtest.Missing(t, "%s", msg)
	}
	if prepared.guests == nil {
		prepared.guests = map[string]guest{}
		prepared.errs = map[string]string{}
	}
	ctx, cancel := bound(t, prepareBound)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "bash", "./prepare.sh", series)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// prepare.sh's children (apt-get, dpkg) die with it only if it
	// is killed as a group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	t.Logf("prepare.sh %s: %v", series, time.Since(start).Round(100*time.Millisecond))
	if err != nil {
		msg := fmt.Sprintf("prepare.sh %s: %v\n%s", series, err, tail(stderr.String(), 30))
		if ctx.Err() != nil {
			msg = fmt.Sprintf("prepare.sh %s ran over its bound and was killed\n%s", series, tail(stderr.String(), 30))
		}
		prepared.errs[series] = msg
		stackdtest.Missing(t, "%s", msg)
	}
	for _, line := range strings.Split(stdout.String(), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 5 && f[0] == "ready" && f[1] == series:
			g := guest{vmlinuz: f[2], initrd: f[3], release: f[4]}
			prepared.guests[series] = g
			return g
		case len(f) >= 2 && f[0] == "unavailable" && f[1] == series:
			prepared.errs[series] = "kernel " + series + ": " + strings.Join(f[2:], " ")
			stackdtest.Missing(t, "%s", prepared.errs[series])
		}
	}
	prepared.errs[series] = fmt.Sprintf("prepare.sh %s printed no ready line:\n%s\n%s", series, stdout.String(), tail(stderr.String(), 30))
	t.Fatal(prepared.errs[series])
	return guest{}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// daemon is a running stackd (stackdtest.Daemon), logging JSON records.
type daemon struct {
	*stackdtest.Daemon
	addr string // 127.0.0.1:PORT of its TCP listener
}

// startStackd starts stackd serving the exports in exportsYAML (the
// config's "exports:" list) on a free loopback port, with metrics off,
// the limits in limitsYAML (the config's "limits:" mapping, indented;
// empty for the defaults) and the config's "tls:" section tlsYAML (empty:
// none).
func startStackd(t *testing.T, limitsYAML, tlsYAML, exportsYAML string) *daemon {
	t.Helper()
	cfg := "listen:\n  - tcp: 127.0.0.1:0\nmetrics: {address: off}\n" + tlsYAML
	if limitsYAML != "" {
		cfg += "limits:\n" + limitsYAML
	}
	cfg += "exports:\n" + exportsYAML
	d := &daemon{Daemon: stackdtest.Start(t, stackdBin, t.TempDir(), cfg)}
	d.addr = d.TCP[0]
	return d
}

// stop sends SIGTERM and requires stackd to exit 0 within
// stackdtest.StopBound.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	d.Stop(t)
	if t.Failed() {
		t.FailNow()
	}
}

// checkLog fails the test on ERROR records in stackd's log and logs the
// warnings and connection summaries.
func (d *daemon) checkLog(t *testing.T) {
	t.Helper()
	for _, r := range d.Log().Records() {
		switch r["level"] {
		case "ERROR":
			t.Errorf("stackd logged an error: %v", r)
		case "WARN":
			t.Logf("stackd warned: %v", r)
		}
		if r["msg"] == "nbd: connection closed" {
			t.Logf("stackd: connection %v closed: reason=%v requests=%v bytes_in=%v bytes_out=%v",
				r["conn"], r["reason"], r["requests"], r["bytes_in"], r["bytes_out"])
			// The kernel client reads every reply as it comes: a
			// failed write is stackd's fault (a stale deadline), never
			// the client's.
			if reason, _ := r["reason"].(string); strings.HasPrefix(reason, "write failed") {
				t.Errorf("stackd dropped connection %v: %s", r["conn"], reason)
			}
		}
	}
}

// kcase is one end-to-end case.
type kcase struct {
	name    string
	series  string // kernel series, as prepare.sh takes it
	conns   int    // nbd-client -C
	exports func(dir string) string
	// maxSectorsKB, if not 0, raises the kernel's largest request to
	// that many KiB before the raw I/O (32768: 32 MiB requests).
	maxSectorsKB int
	// persistent stacks keep their data across a restart of stackd,
	// which the test then checks.
	persistent bool
	// job is init.sh's scenario: "" (fs: a filesystem, which the host
	// checks afterwards) or "idle" (raw I/O around an idle spell of idle).
	job  string
	idle time.Duration
	// limits is stackd's "limits:" mapping, indented; empty: the defaults.
	limits string
	// clientTimeout, if not 0, is the kernel's request timeout
	// (nbd-client -t). Without one, a request sent on a connection the
	// server has closed waits for ever, and the guest only ends at
	// guestBound.
	clientTimeout time.Duration
	// tls attaches with nbd-client -certfile -keyfile -cacertfile,
	// to a stackd that requires TLS and the client's certificate; the
	// host's checks go over TLS too.
	tls bool
	// check runs on what the kernel sent.
	check func(t *testing.T, s *tapStats)
}

// defaultStack is configs/default.yaml's export: split at 1 MiB over a
// 4-way 64 KiB stripe of RAM.
func defaultStack(string) string {
	return splitStripe(strings.Repeat("              - memory: {size: 256MiB}\n", 4))
}

// fileStripe is the same stack over four files in dir.
func fileStripe(dir string) string {
	var legs strings.Builder
	for i := range 4 {
		fmt.Fprintf(&legs, "              - file: {path: %q, size: 256MiB}\n", filepath.Join(dir, fmt.Sprintf("leg%d.img", i)))
	}
	return splitStripe(legs.String())
}

// splitStripe is the export "default" of the default stack's shape over
// legs, YAML list items: split at 1 MiB over a 64 KiB stripe.
func splitStripe(legs string) string {
	return `  - name: default
    stack:
      split:
        max_bytes: 1MiB
        leg:
          stripe:
            chunk: 64KiB
            legs:
` + legs
}

func TestKernelClient(t *testing.T) {
	skipUnlessE2E(t)
	cases := []kcase{
		{name: "default-6.1", series: "6.1", conns: 1, exports: defaultStack},
		{
			name: "multiconn-6.1", series: "6.1", conns: 4, exports: defaultStack,
			check: func(t *testing.T, s *tapStats) {
				if len(s.conns) != 4 {
					t.Errorf("nbd-client -C 4 opened %d connections, want 4", len(s.conns))
				}
			},
		},
		{name: "file-stripe-6.1", series: "6.1", conns: 1, exports: fileStripe, persistent: true},
		{
			// The fs job over TLS (issue 15): the kernel's requests
			// travel through nbd-client's GnuTLS session, which the
			// tap sees only as far as STARTTLS.
			name: "tls-6.1", series: "6.1", conns: 1, exports: tlsStack, tls: true,
			check: func(t *testing.T, s *tapStats) {
				// The attempt nbd-client must refuse, then the attach.
				if len(s.conns) != 2 {
					t.Errorf("the guest opened %d connections, want 2", len(s.conns))
				}
				for i, cs := range s.conns {
					if !cs.tls {
						t.Errorf("connection %d did not start with NBD_OPT_STARTTLS: options %v", i, cs.options)
					}
				}
			},
		},
		{
			// 6.12 sends WRITE_ZEROES (BLKZEROOUT, which the guest's
			// blkdiscard -z issues, sets NO_HOLE), and, with
			// max_sectors_kb raised, reads and writes of many MiB.
			name: "default-6.12", series: "6.12", conns: 1, exports: defaultStack, maxSectorsKB: 32768,
			check: func(t *testing.T, s *tapStats) {
				z := s.ops[wire.CmdWriteZeroes]
				switch {
				case z == nil || z.n == 0:
					t.Errorf("the 6.12 kernel sent no WRITE_ZEROES")
				case z.flags[wire.CmdFlagNoHole] == 0:
					t.Errorf("the 6.12 kernel sent no WRITE_ZEROES with NO_HOLE")
				}
				if w := s.ops[wire.CmdWrite]; w == nil || w.maxLen < 6<<20 {
					t.Errorf("no write of 6 MiB arrived with max_sectors_kb raised")
				}
			},
		},
		{
			// A device that idles longer than reply_timeout after a
			// large read is not dropped (issue 10): the 32 MiB reply,
			// larger than a socket buffer, is finished by stackd's
			// writer goroutine, which arms the write deadline; the
			// first small reply after the idle spell must not trip
			// over that deadline, long past. 5 s of idle against 3 s
			// of timeout: more than the timeout, even with the second
			// the writer may arm it late.
			name: "idle-6.1", series: "6.1", conns: 1, exports: defaultStack, maxSectorsKB: 32768,
			job: "idle", idle: 5 * time.Second, limits: "  reply_timeout: 3s\n",
			// A dropped connection fails the guest's I/O within 30 s
			// instead of hanging it for guestBound; the largest request
			// here, 32 MiB, is answered in a few seconds.
			clientTimeout: 30 * time.Second,
			check: func(t *testing.T, s *tapStats) {
				// Else the step did not test what it says.
				if r := s.ops[wire.CmdRead]; r == nil || r.maxLen < 32<<20 {
					t.Errorf("no 32 MiB read arrived with max_sectors_kb raised")
				}
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { runCase(t, c) })
	}
}

func runCase(t *testing.T, c kcase) {
	start := time.Now()
	g := prepareGuest(t, c.series)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		stackdtest.Missing(t, "qemu-system-x86_64: %v", err)
	}
	hostTools := []string{"nbdcopy", "e2fsck", "debugfs"}
	for _, tool := range hostTools {
		if _, err := lookTool(tool); err != nil {
			stackdtest.Missing(t, "%s (scripts/install-test-deps.sh and prepare.sh install it): %v", tool, err)
		}
	}

	dataDir := t.TempDir()
	exports := c.exports(dataDir)
	var tc *tlsSetup
	tlsYAML := ""
	if c.tls {
		tc = newTLSSetup(t)
		tlsYAML = tc.serverYAML()
	}
	uri := func(addr string) string {
		if tc != nil {
			return tc.uri(addr, "default")
		}
		return fmt.Sprintf("nbd://%s/default", addr)
	}
	d := startStackd(t, c.limits, tlsYAML, exports)
	tp := startTap(t, d.addr)
	reported := false
	t.Cleanup(func() {
		if t.Failed() && !reported {
			t.Logf("the kernel sent, until the failure: %s", tp.close())
		}
	})

	guestStart := time.Now()
	serial := runGuest(t, qemu, g, tp.port(), "default", c, tc)
	t.Logf("guest run (%s, -C %d): %v", g.release, c.conns, time.Since(guestStart).Round(100*time.Millisecond))
	stats := tp.close()
	reported = true
	t.Logf("the kernel sent: %s", stats)
	if stats.bad != "" {
		t.Errorf("the tap could not follow the kernel's stream: %s", stats.bad)
	}
	for i, cs := range stats.conns {
		// Past STARTTLS the tap sees only ciphertext: stackd's log
		// tells instead (tlsSetup.checkLog).
		if !cs.disc && !cs.tls {
			t.Errorf("connection %d ended without NBD_CMD_DISC", i)
		}
	}
	if c.check != nil {
		c.check(t, stats)
	}
	if tc != nil {
		tc.checkLog(t, d, c.conns)
	}
	if c.job == "idle" {
		// No filesystem to check: the guest checked what it read.
		d.stop(t)
		d.checkLog(t)
		t.Logf("case %s: %v", c.name, time.Since(start).Round(100*time.Millisecond))
		return
	}

	sum := regexp.MustCompile(`E2E-SUM /big0 ([0-9a-f]{64})`).FindStringSubmatch(serial)
	if sum == nil {
		t.Fatalf("the guest printed no E2E-SUM for /big0")
	}
	image := filepath.Join(t.TempDir(), "image")
	checkStart := time.Now()
	checkImage(t, uri(d.addr), image, sum[1])
	t.Logf("host check (nbdcopy, e2fsck, debugfs): %v", time.Since(checkStart).Round(100*time.Millisecond))
	d.stop(t)
	d.checkLog(t)

	if c.persistent {
		// The files hold the filesystem: a new stackd on the same
		// files serves the same bytes.
		restart := time.Now()
		d2 := startStackd(t, c.limits, tlsYAML, exports)
		again := filepath.Join(t.TempDir(), "image")
		copyExport(t, uri(d2.addr), again)
		d2.stop(t)
		d2.checkLog(t)
		if off, err := firstDifference(image, again); err != nil {
			t.Error(err)
		} else if off >= 0 {
			t.Errorf("after a restart of stackd the export reads differently from byte %d on", off)
		}
		t.Logf("restart check: %v", time.Since(restart).Round(100*time.Millisecond))
	}
	t.Logf("case %s: %v", c.name, time.Since(start).Round(100*time.Millisecond))
}

// lookTool finds a host tool, in PATH or in the sbin directories a
// non-root PATH may lack.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// runGuest boots the guest against 10.0.2.2:port (the host's loopback),
// over TLS with tc's client certificate if tc is not nil, waits for it to
// power off within guestBound, and returns its serial console output,
// which must hold E2E-PASS.
func runGuest(t *testing.T, qemu string, g guest, port int, export string, c kcase, tc *tlsSetup) string {
	t.Helper()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "serial.log")
	job := c.job
	if job == "" {
		job = "fs"
	}
	appendArgs := fmt.Sprintf("console=ttyS0 panic=-1 quiet rdinit=/init stackd.port=%d stackd.export=%s stackd.conns=%d stackd.job=%s",
		port, export, c.conns, job)
	if c.idle != 0 {
		appendArgs += fmt.Sprintf(" stackd.idle=%d", int(c.idle.Seconds()))
	}
	if c.clientTimeout != 0 {
		appendArgs += fmt.Sprintf(" stackd.timeout=%d", int(c.clientTimeout.Seconds()))
	}
	if c.maxSectorsKB != 0 {
		appendArgs += fmt.Sprintf(" stackd.max_sectors_kb=%d", c.maxSectorsKB)
	}
	initrd := g.initrd
	if tc != nil {
		initrd = tc.initrd(t, g.initrd)
		appendArgs += tc.guestArgs()
	}
	ctx, cancel := bound(t, guestBound)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "512M",
		"-nodefaults", "-display", "none", "-no-reboot",
		"-serial", "file:"+logPath,
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=",
		"-kernel", g.vmlinuz, "-initrd", initrd,
		"-append", appendArgs)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// On timeout exec kills qemu by its PID (it starts no children).
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	serialBytes, _ := os.ReadFile(logPath)
	serial := string(serialBytes)
	for _, line := range strings.Split(serial, "\n") {
		if strings.HasPrefix(line, "E2E-STEP ") || strings.HasPrefix(line, "E2E-INFO ") {
			t.Logf("guest: %s", strings.TrimSpace(line))
		}
	}
	switch {
	case ctx.Err() != nil:
		t.Fatalf("the guest ran over %v and was killed: a request went unanswered?\nserial console (tail):\n%s",
			guestBound, tail(serial, 40))
	case err != nil:
		t.Fatalf("qemu: %v\n%s\nserial console (tail):\n%s", err, tail(out.String(), 20), tail(serial, 40))
	}
	if m := regexp.MustCompile(`E2E-FAIL: .*`).FindString(serial); m != "" {
		t.Fatalf("guest: %s\nserial console (tail):\n%s", m, tail(serial, 40))
	}
	if !strings.Contains(serial, "E2E-PASS") {
		t.Fatalf("the guest powered off without E2E-PASS\nserial console (tail):\n%s", tail(serial, 40))
	}
	// An error the server returned that the kernel absorbed (a retried
	// or ignored request) shows only in the kernel's log.
	if errs := kernelErrors.FindAllString(serial, 10); len(errs) > 0 {
		t.Errorf("the guest kernel logged errors:\n%s", strings.Join(errs, "\n"))
	}
	return serial
}

// kernelErrors matches the guest kernel's complaints about the device or
// the filesystem on it.
var kernelErrors = regexp.MustCompile(`(?m)^.*(nbd0.*(error|timed out|Receive control failed|Dead connection)|EXT4-fs (error|warning)|I/O error).*$`)

// copyExport copies the export at uri to a local file with nbdcopy.
func copyExport(t *testing.T, uri, image string) {
	t.Helper()
	ctx, cancel := bound(t, hostToolBound)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nbdcopy", uri, image).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdcopy %s %s: %v\n%s", uri, image, err, out)
	}
}

// checkImage copies the export at uri and checks, on the host, the
// filesystem and the file /big0, whose sha256 the guest printed.
func checkImage(t *testing.T, uri, image, bigSum string) {
	t.Helper()
	copyExport(t, uri, image)
	ctx, cancel := bound(t, hostToolBound)
	defer cancel()
	e2fsck, _ := lookTool("e2fsck")
	if out, err := exec.CommandContext(ctx, e2fsck, "-fn", image).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn on the copied export: %v\n%s", err, tail(string(out), 30))
	}
	debugfs, _ := lookTool("debugfs")
	cmd := exec.CommandContext(ctx, debugfs, "-R", "cat /big0", image)
	h := sha256.New()
	cmd.Stdout = h
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("debugfs -R 'cat /big0': %v\n%s", err, stderr.String())
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != bigSum {
		t.Errorf("/big0 read back through stackd: sha256 %s, the guest wrote %s\n%s", got, bigSum, stderr.String())
	}
}

// firstDifference returns the offset of the first byte at which files a
// and b differ, -1 if they are equal.
func firstDifference(a, b string) (int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return 0, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return 0, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	var off int64
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if !bytes.Equal(ba[:na], bb[:nb]) {
			for i := 0; i < min(na, nb); i++ {
				if ba[i] != bb[i] {
					return off + int64(i), nil
				}
			}
			return off + int64(min(na, nb)), nil
		}
		off += int64(na)
		aDone := ea == io.EOF || ea == io.ErrUnexpectedEOF
		bDone := eb == io.EOF || eb == io.ErrUnexpectedEOF
		switch {
		case ea != nil && !aDone:
			return 0, ea
		case eb != nil && !bDone:
			return 0, eb
		case aDone || bDone:
			return -1, nil
		}
	}
}

// --- The tap: a loopback TCP relay between the guest and stackd that
// decodes what the client sends, to report what the kernel sent. It only
// reads the client's side; bytes pass unchanged in both directions.

// The tap names commands and flags as the spec does; their values are
// package nbd/wire's.
var cmdNames = map[uint16]string{
	wire.CmdRead: "READ", wire.CmdWrite: "WRITE", wire.CmdDisc: "DISC", wire.CmdFlush: "FLUSH", wire.CmdTrim: "TRIM",
	wire.CmdCache: "CACHE", wire.CmdWriteZeroes: "WRITE_ZEROES", wire.CmdBlockStatus: "BLOCK_STATUS",
}

var flagNames = []struct {
	bit  uint16
	name string
}{{wire.CmdFlagFUA, "FUA"}, {wire.CmdFlagNoHole, "NO_HOLE"}, {wire.CmdFlagDF, "DF"}, {wire.CmdFlagReqOne, "REQ_ONE"}, {wire.CmdFlagFastZero, "FAST_ZERO"}}

// maxTapPayload bounds a write payload the tap will skip: the kernel
// sends at most 32 MiB; a larger length means the tap lost the framing.
const maxTapPayload = 64 << 20

type opStats struct {
	n              int
	minLen, maxLen uint32
	flags          map[uint16]int
}

type connStats struct {
	options  []uint32
	requests int
	disc     bool
	flushes  int
	tls      bool // the client sent NBD_OPT_STARTTLS; the rest is TLS
}

type tapStats struct {
	conns []*connStats
	ops   map[uint16]*opStats
	bad   string // first framing the tap could not follow
}

func (s *tapStats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d connection(s)", len(s.conns))
	var cmds []int
	for c := range s.ops {
		cmds = append(cmds, int(c))
	}
	sort.Ints(cmds)
	for _, c := range cmds {
		o := s.ops[uint16(c)]
		name := cmdNames[uint16(c)]
		if name == "" {
			name = fmt.Sprintf("cmd%d", c)
		}
		fmt.Fprintf(&b, "; %s %d", name, o.n)
		if c != wire.CmdFlush && c != wire.CmdDisc {
			fmt.Fprintf(&b, " (%s..%s", size(o.minLen), size(o.maxLen))
			for _, f := range flagNames {
				if o.flags[f.bit] > 0 {
					fmt.Fprintf(&b, ", %s %d", f.name, o.flags[f.bit])
				}
			}
			b.WriteString(")")
		}
	}
	tls := 0
	for _, cs := range s.conns {
		if cs.tls {
			tls++
		}
	}
	if tls > 0 {
		fmt.Fprintf(&b, "; %d after STARTTLS, their requests unseen", tls)
	}
	if len(s.conns) > 1 && tls < len(s.conns) {
		b.WriteString("; FLUSH per connection:")
		for _, cs := range s.conns {
			if cs.tls {
				b.WriteString(" -")
			} else {
				fmt.Fprintf(&b, " %d", cs.flushes)
			}
		}
	}
	return b.String()
}

func size(n uint32) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

type tap struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	stats  tapStats
	done   chan struct{}
	active map[net.Conn]struct{}
}

func startTap(t *testing.T, target string) *tap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{ln: ln, target: target, done: make(chan struct{}), active: map[net.Conn]struct{}{},
		stats: tapStats{ops: map[uint16]*opStats{}}}
	tp.wg.Add(1)
	go tp.accept()
	t.Cleanup(func() { tp.close() })
	return tp
}

func (tp *tap) port() int { return tp.ln.Addr().(*net.TCPAddr).Port }

func (tp *tap) accept() {
	defer tp.wg.Done()
	for {
		c, err := tp.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", tp.target, 10*time.Second)
		if err != nil {
			c.Close()
			tp.setBad("dial stackd: " + err.Error())
			continue
		}
		tp.mu.Lock()
		cs := &connStats{}
		tp.stats.conns = append(tp.stats.conns, cs)
		tp.active[c], tp.active[s] = struct{}{}, struct{}{}
		tp.mu.Unlock()
		tp.wg.Add(2)
		go func() {
			defer tp.wg.Done()
			io.Copy(c, s)
			c.(*net.TCPConn).CloseWrite()
		}()
		go func() {
			defer tp.wg.Done()
			// What the parser reads has been forwarded already: the
			// relay never waits on the parser.
			r := bufio.NewReaderSize(io.TeeReader(c, s), 1<<16)
			if err := tp.follow(r, cs); err != nil && !errors.Is(err, io.EOF) {
				tp.setBad(err.Error())
			}
			io.Copy(io.Discard, r)
			s.(*net.TCPConn).CloseWrite()
		}()
	}
}

func (tp *tap) setBad(msg string) {
	tp.mu.Lock()
	if tp.stats.bad == "" {
		tp.stats.bad = msg
	}
	tp.mu.Unlock()
}

// follow decodes the client's side of one connection: flags, options,
// then requests, until EOF.
func (tp *tap) follow(r *bufio.Reader, cs *connStats) error {
	var hdr wire.RequestHeader
	if _, err := io.ReadFull(r, hdr[:4]); err != nil { // client flags
		return err
	}
	for {
		peek, err := r.Peek(8)
		if err != nil {
			return err
		}
		if binary.BigEndian.Uint64(peek) != wire.MagicOption {
			break
		}
		if _, err := io.ReadFull(r, hdr[:wire.OptionHeaderLen]); err != nil {
			return err
		}
		opt, n, _ := wire.DecodeOption(hdr[:]) // the magic was peeked at
		if n > 1<<20 {
			return fmt.Errorf("option %d of %d bytes", opt, n)
		}
		if _, err := r.Discard(int(n)); err != nil {
			return err
		}
		tp.mu.Lock()
		cs.options = append(cs.options, opt)
		if opt == wire.OptStartTLS {
			cs.tls = true
		}
		tp.mu.Unlock()
		// Whether or not the server accepted it (it must, in the only
		// case that sends it), what follows cannot be followed: TLS
		// records, or a client that gave up.
		if opt == wire.OptStartTLS {
			return nil
		}
	}
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("connection ended mid-request")
			}
			return err
		}
		if m := hdr.Magic(); m != wire.MagicRequest {
			return fmt.Errorf("request magic %#x", m)
		}
		flags, cmd, length := hdr.Flags(), hdr.Type(), hdr.Length()
		tp.mu.Lock()
		o := tp.stats.ops[cmd]
		if o == nil {
			o = &opStats{minLen: length, flags: map[uint16]int{}}
			tp.stats.ops[cmd] = o
		}
		o.n++
		o.minLen, o.maxLen = min(o.minLen, length), max(o.maxLen, length)
		for _, f := range flagNames {
			if flags&f.bit != 0 {
				o.flags[f.bit]++
			}
		}
		cs.requests++
		switch cmd {
		case wire.CmdDisc:
			cs.disc = true
		case wire.CmdFlush:
			cs.flushes++
		}
		tp.mu.Unlock()
		if cmd == wire.CmdWrite {
			if length > maxTapPayload {
				return fmt.Errorf("write of %d bytes", length)
			}
			if _, err := r.Discard(int(length)); err != nil {
				return err
			}
		}
	}
}

// close stops accepting, lets the relays drain (the guest is gone, so
// they end as soon as they have passed on what it sent), ends those still
// open after a few seconds, and returns what the clients sent.
func (tp *tap) close() *tapStats {
	select {
	case <-tp.done:
	default:
		close(tp.done)
		tp.ln.Close()
		if !stackdtest.Within(&tp.wg, 5*time.Second) {
			tp.mu.Lock()
			for c := range tp.active {
				c.Close()
			}
			tp.mu.Unlock()
			tp.wg.Wait()
		}
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return &tp.stats
}
