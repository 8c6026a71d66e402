package peers

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackd/stackd/internal/stackdtest"
)

// fioJob is the part of one job in fio's JSON output the tests look at.
type fioJob struct {
	Name  string `json:"jobname"`
	Error int    `json:"error"`
	Read  fioIO  `json:"read"`
	Write fioIO  `json:"write"`
}

type fioIO struct {
	Bytes int64 `json:"io_bytes"`
	IOs   int64 `json:"total_ios"`
}

// runFio runs fio with the nbd engine against uri and returns its jobs.
// The JSON goes to a file: the engine prints to stdout as well.
func runFio(t *testing.T, uri string, args ...string) []fioJob {
	t.Helper()
	out := filepath.Join(t.TempDir(), "fio.json")
	args = append([]string{"--ioengine=nbd", "--uri=" + uri, "--output-format=json", "--output=" + out,
		// A cap, never reached on a healthy server: each job is sized
		// to take a few seconds at most.
		"--runtime=20",
		// fio would leave its verify state in the working directory.
		"--verify_state_save=0"}, args...)
	log := mustRun(t, "fio", args...)
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Jobs []fioJob `json:"jobs"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("fio JSON output: %v\n%s\n%s", err, data, log)
	}
	if len(v.Jobs) == 0 {
		t.Fatalf("fio reported no jobs:\n%s\n%s", data, log)
	}
	for _, j := range v.Jobs {
		if j.Error != 0 {
			t.Errorf("fio job %s: error %d\n%s", j.Name, j.Error, log)
		}
	}
	if strings.Contains(log, "verify:") || strings.Contains(log, "bad magic") {
		t.Errorf("fio reported verification failures:\n%s", log)
	}
	return v.Jobs
}

// TestFio drives the export with fio's nbd engine (libnbd: structured
// replies, strict checks, iodepth requests in flight on one connection)
// and lets fio verify every block it wrote.
func TestFio(t *testing.T) {
	need(t, "fio")
	out, err := run(t, "fio", "--enghelp=nbd")
	if err != nil || !strings.Contains(out, "uri") {
		stackdtest.Missing(t, "fio has no nbd ioengine: %v\n%s", err, out)
	}
	d := startDaemon(t, daemonConfig{Exports: []export{{Name: "default", Stack: memStack(32 * MiB)}}})
	uri := d.uri("default")

	t.Run("randwrite verify", func(t *testing.T) {
		jobs := runFio(t, uri, "--name=randwrite", "--rw=randwrite", "--bs=4k", "--iodepth=32",
			"--size=64M", "--verify=crc32c", "--do_verify=1")
		for _, j := range jobs {
			if j.Write.Bytes != 64*MiB {
				t.Errorf("job %s wrote %d bytes, want 64 MiB", j.Name, j.Write.Bytes)
			}
			// The verify pass reads back everything written.
			if j.Read.Bytes != j.Write.Bytes {
				t.Errorf("job %s: verify read %d bytes of %d written", j.Name, j.Read.Bytes, j.Write.Bytes)
			}
		}
	})

	t.Run("randrw mixed sizes verify", func(t *testing.T) {
		jobs := runFio(t, uri, "--name=randrw", "--rw=randrw", "--bsrange=512-1M", "--blockalign=512",
			"--iodepth=16", "--size=128M", "--verify=crc32c", "--do_verify=1")
		for _, j := range jobs {
			if j.Write.Bytes == 0 || j.Read.Bytes == 0 {
				t.Errorf("job %s: read %d, wrote %d bytes; want both", j.Name, j.Read.Bytes, j.Write.Bytes)
			}
			// Reads include the verify pass over every block written.
			if j.Read.Bytes < j.Write.Bytes {
				t.Errorf("job %s: read %d bytes, fewer than the %d written: verification did not run", j.Name, j.Read.Bytes, j.Write.Bytes)
			}
		}
	})

	t.Run("single-bio pools", func(t *testing.T) {
		// Every layer's pool holds one bio: requests that fan out make
		// progress only through the rescuers (configs/examples/tiny-pools.yaml).
		tiny := startDaemon(t, daemonConfig{Exports: []export{{Name: "default", Stack: "{split: {max_bytes: 64KiB, pool: {capacity: 1}, leg: " +
			"{stripe: {chunk: 4KiB, pool: {capacity: 1}, legs: [{memory: {size: 16MiB}}, {memory: {size: 16MiB}}]}}}}"}}})
		jobs := runFio(t, tiny.uri("default"), "--name=tiny", "--rw=randrw", "--bsrange=512-256k", "--blockalign=512",
			"--iodepth=16", "--size=32M", "--verify=crc32c", "--do_verify=1")
		for _, j := range jobs {
			if j.Read.Bytes < j.Write.Bytes || j.Write.Bytes == 0 {
				t.Errorf("job %s: read %d, wrote %d bytes: verification did not run", j.Name, j.Read.Bytes, j.Write.Bytes)
			}
		}
	})
}
