package peers

import (
	"encoding/json"
	"testing"

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
