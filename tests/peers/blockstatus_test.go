package peers

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stackd/stackd/nbd/wire"
)

// extent is one entry of `nbdinfo --map --json` (base:allocation).
type extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
	Type   int   `json:"type"` // NBD_STATE_HOLE 1 | NBD_STATE_ZERO 2
}

func nbdinfoMap(t *testing.T, uri string) []extent {
	t.Helper()
	out := mustRun(t, "nbdinfo", "--map", "--json", uri)
	var m []extent
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
	}
	return m
}

// typesIn returns the extent types that overlap [off, off+n).
func typesIn(m []extent, off, n int64) map[int]bool {
	ts := map[int]bool{}
	for _, e := range m {
		if e.Offset < off+n && off < e.Offset+e.Length {
			ts[e.Type] = true
		}
	}
	return ts
}

// TestBlockStatus checks base:allocation through the whole stack with
// nbdinfo --map: the map covers the export exactly, data written is never
// reported as zero (a client such as nbdcopy or qemu-img would skip it),
// and on RAM legs what was never written, or was trimmed, is a hole.
func TestBlockStatus(t *testing.T) {
	need(t, "nbdinfo")
	const size = 64 * MiB
	for _, tc := range []struct {
		name   string
		stack  func(dir string) string
		sparse bool // holes are guaranteed (RAM); files depend on the filesystem
	}{
		{"memory", func(string) string { return memStack(size / 4) }, true},
		{"files", func(dir string) string { return fileStack(dir, size/4) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDaemon(t, daemonConfig{Exports: []export{{Name: "default", Stack: tc.stack(t.TempDir())}}})
			c := connectRaw(t, d.Socket, "default")
			defer c.disconnect()
			writes := []struct{ off, n int64 }{
				{100000, 5},                 // inside one chunk
				{65536 - 1, 2},              // across a stripe chunk edge
				{3000000, 1000000},          // across the 3 MiB split point
				{9*MiB + 123, 4*MiB + 4567}, // many chunks on every leg
				{size - 1, 1},               // the last byte
			}
			for _, w := range writes {
				data := make([]byte, w.n)
				for i := range data {
					data[i] = byte(i%251) + 1 // never zero
				}
				c.mustWrite(t, uint64(w.off), data)
			}
			// Trim 2 MiB, aligned to the stripe (and the RAM chunks), inside
			// a written region: it holds data until it is trimmed.
			const trimOff, trimLen = 10 * MiB, 2 * MiB
			if errno, _, err := c.do(0, wire.CmdTrim, trimOff, trimLen, nil); err != nil || errno != 0 {
				t.Fatalf("TRIM: errno %d, %v", errno, err)
			}

			m := nbdinfoMap(t, d.uri("default"))
			next := int64(0)
			for _, e := range m {
				if e.Offset != next || e.Length <= 0 {
					t.Fatalf("map not contiguous at %d: %+v", next, e)
				}
				next = e.Offset + e.Length
			}
			if next != size {
				t.Fatalf("map covers %d bytes, want %d: %+v", next, size, m)
			}
			for _, w := range writes {
				if w.off < trimOff+trimLen && trimOff < w.off+w.n {
					// Split around the trimmed range.
					checkData(t, m, w.off, trimOff-w.off)
					checkData(t, m, trimOff+trimLen, w.off+w.n-trimOff-trimLen)
					continue
				}
				checkData(t, m, w.off, w.n)
			}
			if !tc.sparse {
				t.Logf("map: %+v", m)
				return
			}
			for _, r := range []struct {
				what   string
				off, n int64
			}{
				{"never written", 20 * MiB, 40 * MiB},
				{"trimmed", trimOff, trimLen},
			} {
				if ts := typesIn(m, r.off, r.n); len(ts) != 1 || !ts[3] {
					t.Errorf("%s range %d+%d: extent types %v, want only hole,zero (3)", r.what, r.off, r.n, ts)
				}
			}
			if t.Failed() {
				t.Logf("map: %+v", m)
			}
		})
	}
}

// checkData requires [off, off+n), which holds nonzero data, to be
// reported as allocated data only.
func checkData(t *testing.T, m []extent, off, n int64) {
	t.Helper()
	for ty := range typesIn(m, off, n) {
		if ty != 0 {
			t.Errorf("written range %d+%d overlaps an extent of type %d (hole 1, zero 2): a client would skip its data", off, n, ty)
		}
	}
}

// TestBlockStatusMapRequests counts, with the daemon's own per-op request
// counter, the BLOCK_STATUS requests `nbdinfo --map` needs to map an empty
// export of the default shape (1 GiB: a 1 MiB split over a 4-way 64 KiB
// stripe of RAM legs) and one of 8 GiB. nbdinfo asks about the rest of
// the export until the replies cover it, so the count is how much one
// reply covers: when the split cut BLOCK_STATUS at 1 MiB and the stripe
// spent a result slot per 64 KiB chunk, a reply covered about 64 KiB, and
// mapping the default export took 14925 requests.
func TestBlockStatusMapRequests(t *testing.T) {
	need(t, "nbdinfo")
	const maxRequests = 16
	for _, legSize := range []int64{256 * MiB, 2048 * MiB} {
		size := 4 * legSize
		t.Run(fmt.Sprintf("%dGiB", size>>30), func(t *testing.T) {
			d := startDaemon(t, daemonConfig{Metrics: true, Exports: []export{{Name: "default", Stack: memStack(legSize)}}})
			start := time.Now()
			m := nbdinfoMap(t, d.uri("default"))
			took := time.Since(start)
			if len(m) != 1 || m[0] != (extent{Offset: 0, Length: size, Type: 3}) {
				t.Errorf("map %+v, want one hole,zero extent (3) of %d bytes", m, size)
			}
			n := d.settledRequests(t, "default", "block_status")
			t.Logf("nbdinfo --map of an empty %d GiB export: %d block status requests, %v", size>>30, n, took)
			if n < 1 || n > maxRequests {
				t.Errorf("nbdinfo --map sent %d block status requests, want 1 to %d", n, maxRequests)
			}
		})
	}
}

// settledRequests returns stackd_export_requests_total for export and op
// once the export has nothing in flight and the counter has stopped
// moving: the server counts a request after its reply is on the wire, so
// a client may be done a moment before the count is.
func (d *daemon) settledRequests(t *testing.T, export, op string) int64 {
	t.Helper()
	requests := fmt.Sprintf("stackd_export_requests_total{export=%q,op=%q}", export, op)
	inFlight := fmt.Sprintf("stackd_export_requests_in_flight{export=%q}", export)
	last := int64(-1)
	deadline := time.Now().Add(10 * time.Second)
	for {
		v := d.scrape(t)
		n, ok := v[requests]
		if !ok {
			t.Fatalf("metrics have no %s", requests)
		}
		if v[inFlight] == 0 && n == last {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still moving (%d, was %d) or %s is %d after 10s", requests, n, last, inFlight, v[inFlight])
		}
		last = n
		time.Sleep(50 * time.Millisecond)
	}
}

// scrape reads the daemon's /metrics: each sample's value by its name and
// labels as the text format writes them. Only integral values are kept,
// which is all the counters and gauges the tests read.
func (d *daemon) scrape(t *testing.T) map[string]int64 {
	t.Helper()
	if d.MetricsAddr == "" {
		t.Fatal("scrape: the daemon serves no metrics (daemonConfig.Metrics)")
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + d.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s\n%s", resp.Status, b)
	}
	v := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if n, err := strconv.ParseInt(line[i+1:], 10, 64); err == nil {
			v[line[:i]] = n
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return v
}
