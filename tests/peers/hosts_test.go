package peers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
	"github.com/stackd/stackd/nbd/client"
)

// Remote legs on other "hosts": each host is a network namespace joined
// to this one by a veth pair, both made by the test and removed when it
// ends, failed or not. Addresses come from 198.18.0.0/15, the range set
// aside for benchmarking networks (RFC 2544), and from nowhere else:
// host i is 198.18.i.2, its veth peer here 198.18.i.1. Without root or
// the ip tool the same tests run over loopback (and the link-down case,
// which needs a link, is skipped); under CI=true they must run for real.

// host is one remote machine, real (a namespace) or loopback.
type host struct {
	t     *testing.T
	ns    string // the namespace, or "" on loopback
	veth  string // this side of the veth pair
	addr  string // the address its servers listen on
	index int
}

// hostsAvailable says whether namespaces can be made: root and ip.
// STACKD_TEST_LOOPBACK_HOSTS=1 runs the loopback variant even as root.
func hostsAvailable(t *testing.T) bool {
	if os.Getenv("STACKD_TEST_LOOPBACK_HOSTS") == "1" {
		t.Log("STACKD_TEST_LOOPBACK_HOSTS=1: hosts over loopback")
		return false
	}
	if _, err := exec.LookPath("ip"); err != nil || os.Geteuid() != 0 {
		stackdtest.Missing(t, "network namespaces need root and the ip tool (euid %d, ip: %v); running over loopback", os.Geteuid(), err)
		return false
	}
	return true
}

// ipCmd runs ip with args, failing the test on an error.
func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	mustRun(t, "ip", args...)
}

// newHost makes host i (1 to 250): a namespace with its end of a veth
// pair at 198.18.i.2/24 and loopback up, and this side at 198.18.i.1/24.
// The cleanup deletes the namespace (which takes its veth end, and so the
// pair, with it) and, in case the move never happened, this side.
func newHost(t *testing.T, i int, real bool) *host {
	t.Helper()
	if !real {
		return &host{t: t, addr: "127.0.0.1", index: i}
	}
	// Names within IFNAMSIZ, unique to this test process.
	tag := strconv.Itoa(os.Getpid()%100000) + "x" + strconv.Itoa(i)
	h := &host{t: t, ns: "sdh" + tag, veth: "sdv" + tag, addr: fmt.Sprintf("198.18.%d.2", i), index: i}
	t.Cleanup(func() {
		// Not run: t.Context is over by the time cleanups run.
		for _, args := range [][]string{{"netns", "del", h.ns}, {"link", "del", h.veth}, h.unreachable("del")} {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			exec.CommandContext(ctx, "ip", args...).Run() // the second fails when the first took the pair with it
			cancel()
		}
	})
	ipCmd(t, "netns", "add", h.ns)
	ipCmd(t, "link", "add", h.veth, "type", "veth", "peer", "name", h.veth+"p")
	ipCmd(t, "link", "set", h.veth+"p", "netns", h.ns)
	ipCmd(t, "addr", "add", fmt.Sprintf("198.18.%d.1/24", i), "dev", h.veth)
	ipCmd(t, "link", "set", h.veth, "up")
	ipCmd(t, h.unreachable("add")...)
	ipCmd(t, "-n", h.ns, "addr", "add", h.addr+"/24", "dev", h.veth+"p")
	ipCmd(t, "-n", h.ns, "link", "set", h.veth+"p", "up")
	ipCmd(t, "-n", h.ns, "link", "set", "lo", "up")
	return h
}

// command is name run on the host.
func (h *host) command(name string, args ...string) *exec.Cmd {
	if h.ns == "" {
		return exec.Command(name, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
}

// port is the port host i's server listens on: NBD's own in a namespace,
// where nothing else listens; on loopback one per host, fixed, so that a
// restarted server is found again at the same address.
func (h *host) port() int {
	if h.ns != "" {
		return 10809
	}
	return 20000 + os.Getpid()%20000 + h.index
}

func (h *host) tcp() string { return fmt.Sprintf("%s:%d", h.addr, h.port()) }

// unreachable is the ip arguments that add or delete the host's fallback
// route: its /24 unreachable, at a metric below the veth's own route. A
// link taken down loses its route (link), and without this one the
// kernel would send what was meant for the host out of the default route,
// off the machine; with it, a dial fails at once with EHOSTUNREACH, as to
// a host whose only path is down.
func (h *host) unreachable(op string) []string {
	return []string{"route", op, "unreachable", fmt.Sprintf("198.18.%d.0/24", h.index), "metric", "4242"}
}

// link takes this side of the host's veth down or up.
func (h *host) link(state string) { ipCmd(h.t, "link", "set", h.veth, state) }

// serve starts name on the host and waits until it greets on its TCP
// address. The process is killed and waited for when the test ends.
func (h *host) serve(name string, args ...string) *exec.Cmd {
	t := h.t
	t.Helper()
	cmd := h.command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	var mu sync.Mutex
	w := lockedWriter{mu: &mu, b: &out}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			mu.Lock()
			t.Logf("%s on %s:\n%s", name, h.tcp(), out.String())
			mu.Unlock()
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for greets("tcp", h.tcp()) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not greet on %s within 10s", cmdline(name, args), h.tcp())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// serveStackd runs stackd on the host: a memory export, disk0, behind a
// delay layer of 1 ms on reads and writes (the kernel here has no netem:
// the latency of a distant host comes from the remote's own stack).
func (h *host) serveStackd() *exec.Cmd { return h.serveStackdLeg(memStack(remoteLegSize / 4)) }

// serveStackdLeg is serveStackd with leg, a stack node in YAML flow style,
// under the delay layer in place of the memory.
func (h *host) serveStackdLeg(leg string) *exec.Cmd {
	dir := socketDir(h.t)
	conf := filepath.Join(dir, "stackd.yaml")
	cfg := fmt.Sprintf(`listen:
  - tcp: %s
metrics: {address: off}
exports:
  - name: disk0
    stack: {delay: {read: 1ms, write: 1ms, leg: %s}}
`, h.tcp(), leg)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return h.serve(stackdBin, "serve", "-config", conf)
}

func (h *host) serveNbdkit() *exec.Cmd {
	need(h.t, "nbdkit")
	return h.serve("nbdkit", "-f", "--exit-with-parent", "-i", h.addr, "-p", strconv.Itoa(h.port()),
		"memory", fmt.Sprintf("size=%d", remoteLegSize))
}

func (h *host) serveQemuNbd() *exec.Cmd {
	need(h.t, "qemu-nbd")
	img := filepath.Join(h.t.TempDir(), "leg.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Truncate(img, remoteLegSize); err != nil {
		h.t.Fatal(err)
	}
	return h.serve("qemu-nbd", "-f", "raw", "-t", "-e", "8", "-x", "disk0", "-b", h.addr, "-p", strconv.Itoa(h.port()), img)
}

// TestHostsStripe: the front stripes over three hosts, one each of
// stackd (with 1 ms of latency), nbdkit and qemu-nbd, over TCP through the
// veth pairs; fio verifies, and an nbdcopy round trip hashes the same.
func TestHostsStripe(t *testing.T) {
	need(t, "fio")
	need(t, "nbdcopy")
	real := hostsAvailable(t)
	hosts := []*host{newHost(t, 1, real), newHost(t, 2, real), newHost(t, 3, real)}
	hosts[0].serveStackd()
	hosts[1].serveNbdkit()
	hosts[2].serveQemuNbd()
	uris := []string{"nbd://" + hosts[0].tcp() + "/disk0", "nbd://" + hosts[1].tcp() + "/", "nbd://" + hosts[2].tcp() + "/disk0"}
	front := startDaemon(t, daemonConfig{Exports: []export{{Name: "default", Stack: frontStripe(uris, "10s")}}})
	uri := front.uri("default")
	size := int64(len(uris)) * remoteLegSize
	runFio(t, uri, "--name=randwrite", "--rw=randwrite", "--bs=4k", "--iodepth=32",
		fmt.Sprintf("--size=%d", size), "--verify=crc32c", "--do_verify=1")
	nbdcopyRoundTrip(t, uri, size, 21, "over three hosts")
}

// loadResult is what a load run saw.
type loadResult struct {
	ok, eio, other atomic.Int64
	slowest        atomic.Int64 // nanoseconds, the longest request
	firstOther     atomic.Pointer[string]
}

// load writes 4 KiB blocks at 16 requests in flight through c until stop
// closes (or a bound on the count is reached), each request bounded by
// its context, and counts the outcomes.
func load(c *client.Client, stop <-chan struct{}, res *loadResult) *sync.WaitGroup {
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bytes.Repeat([]byte{byte(g + 1)}, 4096)
			for i := range 100000 {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				start := time.Now()
				err := c.Write(ctx, uint64(g*64+i%64)*4096, buf, 0)
				cancel()
				took := int64(time.Since(start))
				for {
					s := res.slowest.Load()
					if took <= s || res.slowest.CompareAndSwap(s, took) {
						break
					}
				}
				switch {
				case err == nil:
					res.ok.Add(1)
				case errors.Is(err, syscall.EIO):
					res.eio.Add(1)
				default:
					res.other.Add(1)
					msg := err.Error()
					res.firstOther.CompareAndSwap(nil, &msg)
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}
	return &wg
}

// TestHostLost: in the middle of a write load through a front whose one
// leg is a stackd on another host, the host is lost three ways: its
// server killed with SIGKILL, its link taken down, its server stopped
// with SIGSTOP (which hangs rather than drops). Each time, every request
// either succeeds or fails with EIO, none takes much longer than the
// leg's timeout, the front stays up, and once the host is back requests
// succeed again.
func TestHostLost(t *testing.T) {
	real := hostsAvailable(t)
	const timeout = 2 * time.Second
	for i, mode := range []string{"kill", "link-down", "stop"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "link-down" && !real {
				t.Skip("over loopback there is no link to take down")
			}
			h := newHost(t, 10+i, real)
			srv := h.serveStackd()
			front := startDaemon(t, daemonConfig{Metrics: true, Exports: []export{{Name: "default",
				Stack: fmt.Sprintf("{nbd: {uri: %s, timeout: %v, size: %d}}", strconv.Quote("nbd://"+h.tcp()+"/disk0"), timeout, remoteLegSize)}}})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c := front.dial(t, ctx, "default")

			// A block written before the loss, for the cases where the
			// remote keeps its memory.
			known := bytes.Repeat([]byte("kept"), 1024)
			const knownAt = 16 << 20
			if err := c.Write(ctx, knownAt, known, 0); err != nil {
				t.Fatal(err)
			}

			var res loadResult
			stop := make(chan struct{})
			wg := load(c, stop, &res)
			defer func() {
				select {
				case <-stop:
				default:
					close(stop)
				}
				wg.Wait()
			}()
			time.Sleep(300 * time.Millisecond)
			if res.ok.Load() == 0 {
				t.Fatal("no write succeeded before the loss")
			}
			switch mode {
			case "kill":
				srv.Process.Kill()
			case "link-down":
				h.link("down")
			case "stop":
				srv.Process.Signal(syscall.SIGSTOP)
			}
			// Long enough for every request caught by the loss to time
			// out, and for later ones to fail too.
			time.Sleep(2*timeout + time.Second)
			if res.eio.Load() == 0 {
				t.Errorf("no request failed while the host was lost")
			}
			okDuring := res.ok.Load()
			front.alive()
			switch mode {
			case "kill":
				srv.Wait()
				h.serveStackd()
			case "link-down":
				h.link("up")
			case "stop":
				srv.Process.Signal(syscall.SIGCONT)
			}
			stackdtest.WaitFor(t, "writes to succeed again once the host is back", 20*time.Second, func() bool {
				return res.ok.Load() > okDuring+100
			})
			close(stop)
			wg.Wait()
			if n := res.other.Load(); n > 0 {
				t.Errorf("%d requests failed with something other than EIO, first: %s", n, *res.firstOther.Load())
			}
			// The watchdog ticks at a tenth of the timeout; a request may
			// also wait a dial out.
			if s := time.Duration(res.slowest.Load()); s > timeout+timeout/2 {
				t.Errorf("the slowest request took %v; the leg's timeout is %v", s, timeout)
			}
			if mode != "kill" {
				got := make([]byte, len(known))
				if err := c.Read(ctx, knownAt, got); err != nil || !bytes.Equal(got, known) {
					t.Errorf("the block written before the loss: %v, equal %v", err, bytes.Equal(got, known))
				}
			}
			m := front.scrape(t)
			layer := `{layer="default/nbd"}`
			t.Logf("reconnects %d, retried %d, timed out %d", m["stackd_remote_reconnects_total"+layer],
				m["stackd_remote_requests_retried_total"+layer], m["stackd_remote_requests_timed_out_total"+layer])
			if m["stackd_remote_requests_timed_out_total"+layer] == 0 {
				t.Errorf("no request counted as timed out")
			}
			t.Logf("%s: %d writes ok, %d EIO, slowest %v", mode, res.ok.Load(), res.eio.Load(), time.Duration(res.slowest.Load()))
			// Before the host's server goes at cleanup: the front's final
			// flush reaches it.
			c.Close()
			front.Stop(t)
		})
	}
}
