package peers

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

// runPython runs a libnbd script (what nbdsh runs) with args and returns
// its output.
func runPython(t *testing.T, script string, args ...string) string {
	t.Helper()
	py := needNBDPython(t)
	return mustRun(t, py, append([]string{"-c", script}, args...)...)
}

// multiConnScript writes on one connection, flushes, and reads on
// another: with NBD_FLAG_CAN_MULTI_CONN advertised, the flush on one
// connection makes the data visible on every connection.
const multiConnScript = `
import os, sys
import nbd

uri = sys.argv[1]
h1 = nbd.NBD()
h1.connect_uri(uri)
h2 = nbd.NBD()
h2.connect_uri(uri)
for h in (h1, h2):
    if not h.can_multi_conn():
        sys.exit("server does not advertise multi-conn")
size = h1.get_size()
ranges = [
    (0, 4096),
    (65536 - 100, 200),                  # across a stripe chunk
    (1048576 - 5000, 1048576 + 10000),   # across two split boundaries
    (3 * 1048576 + 7, 1),
    (size - 4096, 4096),
]
for i, (off, n) in enumerate(ranges * 3):
    w, r = (h1, h2) if i % 2 == 0 else (h2, h1)
    data = os.urandom(n)
    w.pwrite(data, off)
    w.flush()
    got = r.pread(n, off)
    if got != data:
        bad = next(j for j in range(n) if got[j] != data[j])
        sys.exit("round %d: %d bytes at %d written on one connection read back "
                 "different on the other, first at byte %d" % (i, n, off, off + bad))
h1.shutdown()
h2.shutdown()
print("multi-conn ok: %d rounds" % (len(ranges) * 3))
`

func TestMultiConn(t *testing.T) {
	needNBDPython(t)
	d := startDaemon(t, daemonConfig{TCP: true, Exports: []export{{Name: "default", Stack: memStack(4 * MiB)}}})
	for _, uri := range []string{d.uri("default"), d.tcpURI("default")} {
		out := runPython(t, multiConnScript, uri)
		if !strings.Contains(out, "multi-conn ok: 15 rounds") {
			t.Errorf("%s: %s", uri, out)
		}
	}
}

// badRequestsScript sends, with libnbd's client-side checks off, every
// request the spec says a server must refuse, and prints one JSON line per
// request: the errno it got, and whether the same connection still reads
// and the data written before is intact.
const badRequestsScript = `
import errno, json, sys
import nbd

def errname(e):
    num = e.args[1] if len(e.args) > 1 else 0
    return errno.errorcode.get(num, str(num))

def connect(uri):
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.add_meta_context("base:allocation")
    h.connect_uri(uri)
    return h

rw = connect(sys.argv[1])
ro = connect(sys.argv[2])
size = rw.get_size()
rosize = ro.get_size()

# Known data at both ends of the read-write export.
head = bytes(range(256)) * 256                      # 64 KiB at offset 0
tail = bytes((i * 7 + 3) & 255 for i in range(65536))  # the last 64 KiB
rw.pwrite(head, 0)
rw.pwrite(tail, size - 65536)
rw.flush()
rohead = ro.pread(65536, 0)

def intact(h):
    try:
        if h is rw:
            return rw.pread(65536, 0) == head and rw.pread(65536, size - 65536) == tail
        return ro.pread(65536, 0) == rohead
    except nbd.Error as e:
        return "read after it failed: " + str(e)

def cb(metacontext, offset, entries, err):
    return 0

MiB = 1 << 20
rows = [
    ("write past the end", rw, lambda: rw.pwrite(b"\xee" * 1024, size - 512)),
    ("write beyond the end", rw, lambda: rw.pwrite(b"\xee" * 512, size + 4096)),
    ("write offset wraps", rw, lambda: rw.pwrite(b"\xee" * 1024, 2**64 - 512)),
    ("write-zeroes past the end", rw, lambda: rw.zero(1024, size - 512)),
    ("write-zeroes beyond the end", rw, lambda: rw.zero(512, size)),
    ("read past the end", rw, lambda: rw.pread(1024, size - 512)),
    ("read offset wraps", rw, lambda: rw.pread(1024, 2**64 - 512)),
    ("trim past the end", rw, lambda: rw.trim(1024, size - 512)),
    ("block status past the end", rw, lambda: rw.block_status(1024, size - 512, cb)),
    ("block status beyond the end", rw, lambda: rw.block_status(512, size + 512, cb)),
    ("read with unknown flag", rw, lambda: rw.pread(512, 0, flags=1 << 10)),
    ("write with unknown flag", rw, lambda: rw.pwrite(b"\xee" * 512, 4096, flags=1 << 10)),
    ("trim with unknown flag", rw, lambda: rw.trim(512, 4096, flags=1 << 12)),
    ("read longer than 32 MiB", rw, lambda: rw.pread(32 * MiB + 1, 0)),
    ("write on read-only", ro, lambda: ro.pwrite(b"\xee" * 512, 0)),
    ("trim on read-only", ro, lambda: ro.trim(512, 0)),
    ("write-zeroes on read-only", ro, lambda: ro.zero(512, 0)),
    # Legal, for contrast: no-payload commands may be longer than 32 MiB.
    ("read of 32 MiB", rw, lambda: rw.pread(32 * MiB, 65536)),
    ("trim of 40 MiB", rw, lambda: rw.trim(40 * MiB, 65536)),
    ("write-zeroes of 40 MiB", rw, lambda: rw.zero(40 * MiB, 65536)),
    ("block status of 40 MiB", rw, lambda: rw.block_status(40 * MiB, 65536, cb)),
    ("read-only read", ro, lambda: ro.pread(4096, rosize - 4096)),
]
for name, h, f in rows:
    got, msg = "ok", ""
    try:
        f()
    except nbd.Error as e:
        got, msg = errname(e), e.string
    print(json.dumps({"row": name, "errno": got, "msg": msg, "intact": intact(h)}))
rw.shutdown()
ro.shutdown()
print(json.dumps({"row": "done"}))
`

// TestBadRequests checks the README's table of bad requests through
// libnbd with its client-side checks off. Misaligned requests are not
// tested: the server advertises a minimum block size of 1, so nothing is
// misaligned. Unknown commands, which libnbd cannot send, are covered by
// TestRawBadRequests.
func TestBadRequests(t *testing.T) {
	needNBDPython(t)
	d := startDaemon(t, daemonConfig{Exports: []export{
		{Name: "default", Stack: memStack(16 * MiB)},
		{Name: "ro", ReadOnly: true, Stack: memStack(MiB)},
	}})
	want := map[string][]string{
		"write past the end":          {"ENOSPC"},
		"write beyond the end":        {"ENOSPC"},
		"write offset wraps":          {"ENOSPC"},
		"write-zeroes past the end":   {"ENOSPC"},
		"write-zeroes beyond the end": {"ENOSPC"},
		"read past the end":           {"EINVAL"},
		"read offset wraps":           {"EINVAL"},
		"trim past the end":           {"EINVAL"},
		"block status past the end":   {"EINVAL"},
		"block status beyond the end": {"EINVAL"},
		"read with unknown flag":      {"EINVAL"},
		"write with unknown flag":     {"EINVAL"},
		"trim with unknown flag":      {"EINVAL"},
		"read longer than 32 MiB":     {"EINVAL", "EOVERFLOW"},
		"write on read-only":          {"EPERM"},
		"trim on read-only":           {"EPERM"},
		"write-zeroes on read-only":   {"EPERM"},
		"read of 32 MiB":              {"ok"},
		"trim of 40 MiB":              {"ok"},
		"write-zeroes of 40 MiB":      {"ok"},
		"block status of 40 MiB":      {"ok"},
		"read-only read":              {"ok"},
	}
	out := runPython(t, badRequestsScript, d.uri("default"), d.uri("ro"))
	seen := map[string]bool{}
	done := false
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var r struct {
			Row    string
			Errno  string
			Msg    string
			Intact any
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("script output %q: %v", line, err)
		}
		if r.Row == "done" {
			done = true
			continue
		}
		seen[r.Row] = true
		w, ok := want[r.Row]
		if !ok {
			t.Errorf("unexpected row %q", r.Row)
			continue
		}
		if !slices.Contains(w, r.Errno) {
			t.Errorf("%s: got %s (%s), want %s", r.Row, r.Errno, r.Msg, strings.Join(w, " or "))
		}
		if r.Intact != true {
			t.Errorf("%s: afterwards the connection or the data is not intact: %v", r.Row, r.Intact)
		}
	}
	for row := range want {
		if !seen[row] {
			t.Errorf("row %q missing from the script's output", row)
		}
	}
	if !done {
		t.Errorf("script did not finish:\n%s", out)
	}
	t.Logf("script output:\n%s", out)
	d.alive()
}

// pipelineScript queues n writes of sz bytes at once on one connection,
// far more than the server keeps in flight or has payload budget for,
// then as many reads, and checks every reply and the data.
const pipelineScript = `
import sys
import nbd

uri, base, n, sz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
h = nbd.NBD()
h.connect_uri(uri)

def pattern(i):
    return bytes([(i * 37 + base // sz + 1) & 255]) * sz

def drain(cookies):
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        h.aio_command_completed(c)  # raises on an error reply

bufs = [nbd.Buffer.from_bytearray(bytearray(pattern(i))) for i in range(n)]
queued = [h.aio_pwrite(bufs[i], base + i * sz) for i in range(n)]
most = h.aio_in_flight()
drain(queued)
bufs = [nbd.Buffer(sz) for i in range(n)]
queued = [h.aio_pread(bufs[i], base + i * sz) for i in range(n)]
drain(queued)
for i in range(n):
    if bytes(bufs[i].to_bytearray()) != pattern(i):
        sys.exit("request %d: data read back differs" % i)
h.shutdown()
print("pipeline ok: %d requests of %d bytes, %d queued at once" % (n, sz, most))
`

// TestPipelineBackpressure has three clients each queue hundreds of
// requests at once against a server that keeps 128 in flight per
// connection and 32 MiB of payload for all: the server must push back
// (stop reading) rather than fail or stall, and the data must be right.
func TestPipelineBackpressure(t *testing.T) {
	py := needNBDPython(t)
	d := startDaemon(t, daemonConfig{
		Exports: []export{{Name: "default", Stack: memStack(64 * MiB)}},
		Limits:  "{max_in_flight: 128, payload_budget: 32MiB}",
	})
	jobs := []struct {
		base   int64
		n, len int
	}{
		{0, 1500, 64 * KiB},          // 94 MiB in small requests
		{96 * MiB, 24, 4 * MiB},      // 96 MiB in large ones
		{192 * MiB, 3000, 8*KiB + 1}, // unaligned sizes, 24 MiB
	}
	var wg sync.WaitGroup
	outs := make([]string, len(jobs))
	errs := make([]error, len(jobs))
	for i, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = run(t, py, "-c", pipelineScript, d.uri("default"),
				fmt.Sprint(j.base), fmt.Sprint(j.n), fmt.Sprint(j.len))
		}()
	}
	wg.Wait()
	for i := range jobs {
		if errs[i] != nil || !strings.Contains(outs[i], "pipeline ok") {
			t.Errorf("client %d: %v\n%s", i, errs[i], outs[i])
		} else {
			t.Log(strings.TrimSpace(outs[i]))
		}
	}
}
