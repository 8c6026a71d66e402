package nbd

import (
	"io"
	"runtime"
	"testing"

	"github.com/stackd/stackd/nbd/wire"
)

// TestSteadyStateAllocs pipelines requests on a raw connection and counts
// the allocations of the whole process (the test's side allocates nothing
// per request): the server's request path should allocate next to nothing.
func TestSteadyStateAllocs(t *testing.T) {
	dev := newMemDev(1<<20, allCaps)
	dev.lendEvery = 1 // READs send lent memory, as from a RAM target
	ts := startServer(t, oneExport(dev), "unix")
	for _, structured := range []bool{false, true} {
		r := dialRaw(t, ts)
		r.start("mem", structured, false)
		const n = 2000
		var reqs []byte
		for i := range n {
			switch i % 3 {
			case 0:
				reqs = append(reqs, requestBytes(wire.CmdRead, 0, uint64(i), 0, 4096, nil)...)
			case 1:
				reqs = append(reqs, requestBytes(wire.CmdWrite, 0, uint64(i), 0, 4096, make([]byte, 4096))...)
			case 2:
				reqs = append(reqs, requestBytes(wire.CmdFlush, 0, uint64(i), 0, 0, nil)...)
			}
		}
		replyBytes := n/3*(wire.SimpleReplyLen+4096) + (n-n/3)*wire.SimpleReplyLen
		if structured {
			// READs answered with OFFSET_DATA (its offset, then the data),
			// the rest with simple replies.
			replyBytes = n/3*(wire.ChunkHeaderLen+8+4096) + (n-n/3)*wire.SimpleReplyLen
		}
		sink := make([]byte, replyBytes)
		// Once to warm the pools, once to measure.
		go r.nc.Write(reqs)
		if _, err := io.ReadFull(r.br, sink); err != nil {
			t.Fatal(err)
		}
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		go r.nc.Write(reqs)
		if _, err := io.ReadFull(r.br, sink); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&b)
		per := float64(b.Mallocs-a.Mallocs) / n
		t.Logf("structured=%v: %.2f allocations, %.0f bytes per request", structured, per, float64(b.TotalAlloc-a.TotalAlloc)/n)
		// Under the race detector sync.Pool drops some of what it is
		// given, hence the slack.
		if per > 1 {
			t.Errorf("structured=%v: %.2f allocations per request", structured, per)
		}
		if dev.lent.Load() == 0 {
			t.Errorf("structured=%v: no READ was answered with lent memory", structured)
		}
	}
}
