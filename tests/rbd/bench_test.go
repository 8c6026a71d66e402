//go:build rbd

package rbd

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
)

// benchRow is one fio workload of the side-by-side bench.
type benchRow struct {
	name, rw, bs string
	depth        int
}

var benchRows = []benchRow{
	{"4k randread qd32", "randread", "4k", 32},
	{"4k randwrite qd32", "randwrite", "4k", 32},
	{"4k randread qd1", "randread", "4k", 1},
	{"1M write qd8", "write", "1M", 8},
}

// fioRate runs one fio job against uri for secs and returns its IOPS and
// bandwidth (MiB/s).
func fioRate(t *testing.T, uri string, r benchRow, secs int) (iops, mibs float64) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "fio.json")
	stackdtest.MustRun(t, cmdTimeout, "fio", "--ioengine=nbd", "--uri="+uri, "--name=bench", "--rw="+r.rw, "--bs="+r.bs,
		fmt.Sprintf("--iodepth=%d", r.depth), "--size=256M", "--time_based", fmt.Sprintf("--runtime=%d", secs),
		"--ramp_time=1", "--output-format=json", "--output="+out)
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Jobs []struct {
			Read, Write struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw"` // KiB/s
			}
		} `json:"jobs"`
	}
	if err := json.Unmarshal(data, &v); err != nil || len(v.Jobs) != 1 {
		t.Fatalf("fio JSON: %v\n%s", err, data)
	}
	j := v.Jobs[0]
	return j.Read.IOPS + j.Write.IOPS, (j.Read.BW + j.Write.BW) / 1024
}

// qemuNBD serves image through qemu-nbd's rbd driver on a unix socket and
// returns its URI.
func qemuNBD(t *testing.T, c *stackdtest.Ceph, image string) string {
	t.Helper()
	dir := stackdtest.SocketDir(t)
	sock := filepath.Join(dir, "nbd.sock")
	cmd := exec.Command("qemu-nbd", "-f", "raw", "--persistent", "--shared=8", "--export-name=disk",
		"--socket="+sock, fmt.Sprintf("rbd:%s/%s:conf=%s", c.Pool, image, c.Conf))
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	stackdtest.WaitFor(t, "qemu-nbd's socket", 20*time.Second, func() bool {
		_, err := os.Stat(sock)
		return err == nil
	})
	return "nbd+unix:///disk?socket=" + sock
}

// TestRBDBench runs the workloads side by side on one image, through
// stackd's rbd target (at several worker counts) and through qemu-nbd's
// rbd driver, and logs the table. It runs only when STACKD_RBD_BENCH is
// set (to the seconds each workload runs): it measures, it checks
// nothing.
func TestRBDBench(t *testing.T) {
	secs := 0
	fmt.Sscan(os.Getenv("STACKD_RBD_BENCH"), &secs)
	if secs <= 0 {
		t.Skip("set STACKD_RBD_BENCH=SECONDS to run the rbd bench")
	}
	need(t, "fio", "nbdcopy", "qemu-nbd")
	c := stackdtest.StartCeph(t)
	// Every block written once, so that reads reach the OSD's data
	// rather than librbd's answer for a missing object.
	src := filepath.Join(t.TempDir(), "src.img")
	randomFile(t, src, 256*MiB, 9)
	c.RBD(t, "import", "--no-progress", src, "bench")

	type server struct {
		name string
		uri  func(t *testing.T) string
	}
	var servers []server
	for _, w := range strings.Fields(os.Getenv("STACKD_RBD_BENCH_WORKERS")) {
		servers = append(servers, server{"stackd workers=" + w, func(t *testing.T) string {
			_, uri := serve(t, rbdNode(c, "bench", ", workers: "+w))
			return uri
		}})
	}
	if len(servers) == 0 {
		servers = append(servers, server{"stackd", func(t *testing.T) string {
			_, uri := serve(t, rbdNode(c, "bench", ""))
			return uri
		}})
	}
	servers = append(servers, server{"qemu-nbd", func(t *testing.T) string { return qemuNBD(t, c, "bench") }})

	var table strings.Builder
	fmt.Fprintf(&table, "| workload | %s |\n|---|", strings.Join(func() []string {
		var n []string
		for _, s := range servers {
			n = append(n, s.name)
		}
		return n
	}(), " | "))
	for range servers {
		table.WriteString("---|")
	}
	table.WriteString("\n")
	results := make([][]string, len(benchRows))
	for _, s := range servers {
		t.Run(s.name, func(t *testing.T) {
			uri := s.uri(t)
			for i, r := range benchRows {
				iops, mibs := fioRate(t, uri, r, secs)
				results[i] = append(results[i], fmt.Sprintf("%.0f IOPS, %.1f MiB/s", iops, mibs))
			}
		})
	}
	for i, r := range benchRows {
		fmt.Fprintf(&table, "| %s | %s |\n", r.name, strings.Join(results[i], " | "))
	}
	t.Logf("rbd bench, %d s a workload:\n%s", secs, table.String())
}
