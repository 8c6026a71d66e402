package stackdtest

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// CephStartBound bounds bringing a one-node cluster up, from the
	// monitor's mkfs to a pool that serves I/O. On a 2-core machine it
	// takes about 10 s; a cluster that is not up by then will not be.
	CephStartBound = 60 * time.Second
	// cephCommandBound bounds one ceph or rbd command once the cluster
	// is up.
	cephCommandBound = 30 * time.Second
	// cephStopBound bounds each daemon's exit after SIGTERM; past it the
	// daemon is killed.
	cephStopBound = 10 * time.Second
	// cephLogShown bounds the end of each daemon's log a failing test
	// prints.
	cephLogShown = 16 << 10
)

// cephDaemons are the binaries a cluster runs, with the packages that
// provide them, for the message that says what is missing.
var cephCommands = []struct{ cmd, pkg string }{
	{"ceph-mon", "ceph-mon"},
	{"ceph-osd", "ceph-osd"},
	{"ceph-mgr", "ceph-mgr"},
	{"ceph", "ceph-common"},
	{"rbd", "ceph-common"},
	{"monmaptool", "ceph-common"},
}

// Ceph is a one-node Ceph cluster of the test's own: a monitor on a free
// loopback port (msgr v2 only, auth none), one OSD on memstore, one mgr,
// and a pool of size 1 initialised for RBD. Every file is under Dir, the
// daemons' pid files too; the cleanup stops them by pid.
type Ceph struct {
	// Dir holds everything: ceph.conf, the daemons' data, logs, sockets.
	Dir string
	// Conf is the path of ceph.conf, for clients (librbd, the rbd CLI).
	Conf string
	// Pool is the RBD pool.
	Pool string
	// MonAddr is the monitor's address, host:port.
	MonAddr string

	t       testing.TB
	daemons []*cephDaemon
}

type cephDaemon struct {
	name   string // "mon.a", for logs
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// StartCeph starts a cluster under a temporary directory and returns
// once its pool takes I/O; the test's cleanup stops it. Missing daemons
// are Missing (a failure under CI=true). A cluster that is not up within
// CephStartBound fails the test with the end of each daemon's log.
func StartCeph(t testing.TB) *Ceph {
	t.Helper()
	for _, c := range cephCommands {
		if _, err := exec.LookPath(c.cmd); err != nil {
			Missing(t, "%s not found (Debian package %s)", c.cmd, c.pkg)
		}
	}
	// Under /tmp, not t.TempDir: the monitor's and daemons' admin socket
	// paths must fit in a sockaddr_un (108 bytes), which a test's
	// temporary directory, named after the test, may not.
	dir, err := os.MkdirTemp("", "ceph")
	if err != nil {
		t.Fatal(err)
	}
	c := &Ceph{Dir: dir, Conf: filepath.Join(dir, "ceph.conf"), Pool: "rbd", t: t}
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("ceph logs:\n%s", c.logs())
		}
		os.RemoveAll(dir)
	})
	ctx, cancel := context.WithTimeout(context.Background(), CephStartBound)
	defer cancel()
	if err := c.start(ctx); err != nil {
		t.Fatalf("ceph cluster not up: %v\nlogs:\n%s", err, c.logs())
	}
	return c
}

// freePort returns a loopback port that was free a moment ago, so that
// test binaries running at once start clusters that do not collide. The
// race with another process taking it in between is small, and then the
// monitor fails to bind, which the start reports.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// cephConf is the cluster's configuration. Auth is off, so no keyring is
// needed by anyone; memstore keeps the OSD's data in RAM, as much as was
// written, so the cluster costs no disk; the mgr loads only its
// always-on modules.
const cephConf = `[global]
fsid = {{fsid}}
mon host = v2:{{mon}}
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
ms bind msgr1 = false
ms bind ipv4 = true
ms bind ipv6 = false
public addr = 127.0.0.1
public network = 127.0.0.0/8
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail crit = 0
mon data avail warn = 0
mgr initial modules =
run dir = {{dir}}/run
admin socket = {{dir}}/run/$name.asok
pid file = {{dir}}/run/$name.pid
log file = {{dir}}/log/$name.log
mon cluster log file = {{dir}}/log/cluster.log
crash dir = {{dir}}/crash
chdir = {{dir}}
keyring = {{dir}}/keyring

[mon]
mon data = {{dir}}/mon/$name

[osd]
osd data = {{dir}}/osd/$name
osd objectstore = memstore
memstore device bytes = 4294967296
osd max object name len = 256
osd max object namespace len = 64

[mgr]
mgr data = {{dir}}/mgr/$name

[client]
log file = {{dir}}/log/client.log
`

func (c *Ceph) start(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	c.MonAddr = "127.0.0.1:" + strconv.Itoa(port)
	for _, d := range []string{"run", "log", "crash", "mon/mon.a", "osd/osd.0", "mgr/mgr.x"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			return err
		}
	}
	fsid := newUUID()
	conf := strings.NewReplacer("{{fsid}}", fsid, "{{mon}}", c.MonAddr, "{{dir}}", c.Dir).Replace(cephConf)
	if err := os.WriteFile(c.Conf, []byte(conf), 0o644); err != nil {
		return err
	}
	monmap := filepath.Join(c.Dir, "monmap")
	steps := [][]string{
		{"monmaptool", "--create", "--fsid", fsid, "--addv", "a", "[v2:" + c.MonAddr + "]", monmap},
		{"ceph-mon", "-c", c.Conf, "--mkfs", "-i", "a", "--monmap", monmap},
	}
	for _, s := range steps {
		if _, err := c.run(ctx, s...); err != nil {
			return err
		}
	}
	if err := c.daemon("mon.a", "ceph-mon", "-i", "a"); err != nil {
		return err
	}
	osdUUID := newUUID()
	id, err := c.run(ctx, "ceph", "-c", c.Conf, "osd", "new", osdUUID)
	if err != nil {
		return err
	}
	if strings.TrimSpace(id) != "0" {
		return fmt.Errorf("ceph osd new: got osd %q, want 0", strings.TrimSpace(id))
	}
	if _, err := c.run(ctx, "ceph-osd", "-c", c.Conf, "-i", "0", "--mkfs", "--osd-uuid", osdUUID); err != nil {
		return err
	}
	if err := c.daemon("osd.0", "ceph-osd", "-i", "0"); err != nil {
		return err
	}
	if err := c.daemon("mgr.x", "ceph-mgr", "-i", "x"); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"ceph", "-c", c.Conf, "osd", "pool", "create", c.Pool, "8", "8"},
		{"ceph", "-c", c.Conf, "osd", "pool", "set", c.Pool, "size", "1", "--yes-i-really-mean-it"},
		// rbd pool init writes to the pool, so it returns once the
		// OSD is up and the pool's placement groups are active.
		{"rbd", "-c", c.Conf, "pool", "init", c.Pool},
	} {
		if _, err := c.run(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// run runs one command to completion within ctx and returns its stdout.
func (c *Ceph) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = c.Dir
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return "", fmt.Errorf("%s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// daemon starts a daemon in the foreground (-f), as a child the cleanup
// can stop by its pid, and not one that forks away from the test.
func (c *Ceph) daemon(name, bin string, args ...string) error {
	cmd := exec.Command(bin, append([]string{"-f", "-c", c.Conf}, args...)...)
	cmd.Dir = c.Dir
	out, err := os.Create(filepath.Join(c.Dir, "log", name+".out"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	// A test binary that dies without its cleanups (a panic, go test's
	// -timeout) takes its daemons with it rather than leave a cluster
	// running. (The signal follows the thread that started the child;
	// test goroutines do not lock their threads, so the runtime keeps
	// it.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	d := &cephDaemon{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		out.Close()
		close(d.exited)
	}()
	c.daemons = append(c.daemons, d)
	return nil
}

// stop ends the daemons, last started first, by pid: SIGTERM, then
// SIGKILL past cephStopBound.
func (c *Ceph) stop() {
	for i := len(c.daemons) - 1; i >= 0; i-- {
		d := c.daemons[i]
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(cephStopBound):
			d.cmd.Process.Kill()
			<-d.exited
		}
	}
	c.daemons = nil
}

// logs returns the end of every daemon's log.
func (c *Ceph) logs() string {
	var b strings.Builder
	files, _ := filepath.Glob(filepath.Join(c.Dir, "log", "*"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil || len(data) == 0 {
			continue
		}
		if len(data) > cephLogShown {
			data = append([]byte("[...]\n"), data[len(data)-cephLogShown:]...)
		}
		fmt.Fprintf(&b, "==> %s <==\n%s\n", filepath.Base(f), data)
	}
	return b.String()
}

// RBD runs the rbd command against the cluster's pool and returns its
// output, failing the test if it fails.
func (c *Ceph) RBD(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cephCommandBound)
	defer cancel()
	out, err := c.run(ctx, append([]string{"rbd", "-c", c.Conf, "-p", c.Pool}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// CreateImage creates an image of size bytes in the pool.
func (c *Ceph) CreateImage(t testing.TB, name string, size uint64) {
	t.Helper()
	c.RBD(t, "create", "--size", strconv.FormatUint(size, 10)+"B", name)
}

// Stop stops the cluster before the test ends, as a lost cluster: what
// uses it sees its requests time out.
func (c *Ceph) Stop() { c.stop() }
