package control_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/configs"
	"github.com/stackd/stackd/control"
	"github.com/stackd/stackd/control/controltest"
	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/stack"
)

// testConfig has controltest.Stack, and a second export with no
// Controlled node at all.
const testConfig = `
exports:
  - name: disk
    default: true
    stack: ` + controltest.Stack + `
  - name: plain
    read_only: true
    stack: {stripe: {chunk: 4KiB, legs: [{memory: {size: 1MiB}}, {memory: {size: 1MiB}}]}}
`

// fakeServer stands for the NBD server's counters.
type fakeServer struct{}

func (fakeServer) Stats() nbd.ServerStats {
	return nbd.ServerStats{ConnsOpen: 2, PayloadInUse: 3 << 19, PayloadCapacity: 256 << 20}
}

// serve builds testConfig's stacks and serves the control API over them
// on a unix socket; it returns a client of it.
func serve(t *testing.T) (*control.Client, []*stack.Stack, string) {
	t.Helper()
	cfg, err := configs.Parse("<test>", []byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	var exports []control.Export
	var stacks []*stack.Stack
	for _, e := range cfg.Exports {
		st, err := e.Build(nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		stacks = append(stacks, st)
		exports = append(exports, control.Export{Name: e.Name, Default: e.Default, ReadOnly: e.ReadOnly, Stack: st})
	}
	srv := control.New(control.Options{Exports: exports, Server: fakeServer{}})
	sock := filepath.Join(t.TempDir(), "control.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return control.NewClient(sock), stacks, sock
}

// write sends one 4 KiB WRITE through dev and waits for it.
func write(t *testing.T, dev stack.Device, off uint64) {
	t.Helper()
	done := make(chan struct{})
	var b bioset.Bio
	b.Init(bioset.OpWrite, off, 4096, make([]byte, 4096), func(*bioset.Bio) { close(done) })
	b.Dev = dev
	b.TopOffset = off
	var s bioset.Submitter
	s.Submit(&b)
	<-done
	if err := b.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestStatus(t *testing.T) {
	c, stacks, _ := serve(t)
	write(t, stacks[0].Root, 0)
	ctx := context.Background()
	st, raw, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(raw) {
		t.Fatalf("not JSON: %s", raw)
	}
	if st.Server == nil || st.Server.ConnectionsOpen != 2 {
		t.Errorf("server: %+v", st.Server)
	}
	if len(st.Exports) != 2 {
		t.Fatalf("%d exports", len(st.Exports))
	}
	disk := st.Exports[0]
	if disk.Name != "disk" || !disk.Default || disk.Size != 1<<20 {
		t.Errorf("export: %+v", disk)
	}
	split := disk.Root
	if split.Path != "disk/split" || split.Kind != "split" || split.Pool == nil || split.Pool.Capacity != 1024 || !split.Pool.Rescuer {
		t.Errorf("split: %+v %+v", split, split.Pool)
	}
	if split.Requests != 1 || split.Controlled || len(split.Legs) != 1 {
		t.Errorf("split: %d requests, controlled %v, %d legs", split.Requests, split.Controlled, len(split.Legs))
	}
	mirror := split.Legs[0]
	if mirror.Path != "disk/split/testmirror" || !mirror.Controlled || len(mirror.Legs) != 2 {
		t.Fatalf("mirror: %+v", mirror)
	}
	var ms controltest.MirrorState
	if err := json.Unmarshal(mirror.State, &ms); err != nil || len(ms.Legs) != 2 || ms.Legs[1].State != "in_sync" {
		t.Errorf("mirror state %s: %v", mirror.State, err)
	}
	sw := mirror.Legs[0]
	if sw.Path != "disk/split/testmirror/leg0" || sw.Kind != "testswitch" || !sw.Controlled || len(sw.Legs) != 1 ||
		sw.Legs[0].Path != "disk/split/testmirror/leg0/memory" || sw.Legs[0].Pool != nil {
		t.Errorf("switch: %+v", sw)
	}
	plain := st.Exports[1]
	if !plain.ReadOnly || plain.Root.Kind != "stripe" || len(plain.Root.Legs) != 2 || plain.Root.Legs[1].Path != "plain/stripe/leg1" {
		t.Errorf("plain: %+v", plain)
	}

	var text bytes.Buffer
	control.FormatStatus(&text, st)
	for _, want := range []string{
		"server: 2 connections, payload 1.5MiB of 256MiB in use\n",
		"disk (1MiB, default)\n",
		"  split 1MiB requests=1 pool=0/1024 punted=0 rescued=0 ",
		"    testmirror 1MiB requests=1 ",
		"      testswitch 1MiB requests=1 mode=on switches=0 [in_sync] ",
		"        memory 1MiB requests=1 ",
		"      memory 1MiB requests=0 [in_sync] ",
		"plain (2MiB, read-only)\n",
		"disk/split/testmirror/leg0/memory\n",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, text.String())
		}
	}
	// The paths stand in one column.
	col := -1
	for _, line := range strings.Split(strings.TrimSpace(text.String()), "\n") {
		i := strings.Index(line, "disk/")
		if i < 0 {
			i = strings.Index(line, "plain/")
		}
		if i < 0 {
			continue
		}
		if col >= 0 && i != col {
			t.Errorf("path at column %d, not %d: %q", i, col, line)
		}
		col = i
	}

}

func TestActions(t *testing.T) {
	c, _, _ := serve(t)
	ctx := context.Background()
	res, err := c.ActOnLeg(ctx, "disk/split/testmirror/leg1", "fail")
	if err != nil || res.Path != "disk/split/testmirror" || res.Leg != 1 || !strings.Contains(string(res.State), `"faulty"`) {
		t.Fatalf("fail leg1: %+v %s, %v", res, res.State, err)
	}
	if _, err := c.ActOnLeg(ctx, "disk/split/testmirror/leg0", "fail"); !isCode(err, http.StatusConflict, "last one in sync") {
		t.Errorf("failing the last leg in sync: %v", err)
	}
	if _, err := c.ActOnLeg(ctx, "disk/split/testmirror/leg1", "restore"); err != nil {
		t.Fatal(err)
	}
	st, _, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	control.FormatStatus(&text, st)
	if want := "      memory 1MiB requests=0 [resyncing 0% resync=256MiB/s] "; !strings.Contains(text.String(), want) {
		t.Errorf("status after restore lacks %q:\n%s", want, text.String())
	}

	// A leg that is a Controlled node itself takes its own actions as a
	// node, and its parent's as a leg.
	res, err = c.Act(ctx, "disk/split/testmirror/leg0", "down-now")
	if err != nil || res.Path != "disk/split/testmirror/leg0" || res.Leg != -1 || !strings.Contains(string(res.State), `"down"`) {
		t.Fatalf("down-now: %+v, %v", res, err)
	}

	for _, tc := range []struct {
		leg          bool
		path, action string
		code         int
		says         string
	}{
		{false, "disk/nope", "on", http.StatusNotFound, `no node at "disk/nope"`},
		{true, "disk/split/testmirror/leg7", "fail", http.StatusNotFound, "no node"},
		{false, "disk/split", "on", http.StatusBadRequest, "disk/split is a split, which takes no actions"},
		{false, "disk/split/testmirror/leg0", "frobnicate", http.StatusBadRequest, "unknown action"},
		{true, "disk/split/testmirror/leg0", "frobnicate", http.StatusBadRequest, "unknown action"},
		{true, "disk/split/testmirror", "fail", http.StatusBadRequest, "not a leg of a layer with many legs"},
		{true, "plain/stripe/leg1", "fail", http.StatusBadRequest, "a leg of a stripe, which takes no actions on its legs"},
		{false, "disk/split/testmirror", "fail", http.StatusConflict, "not on itself"},
	} {
		act := c.Act
		if tc.leg {
			act = c.ActOnLeg
		}
		if _, err := act(ctx, tc.path, tc.action); !isCode(err, tc.code, tc.says) {
			t.Errorf("%s %s (leg %v): %v; want %d saying %q", tc.path, tc.action, tc.leg, err, tc.code, tc.says)
		}
	}
}

func isCode(err error, code int, says string) bool {
	var ce *control.Error
	return errors.As(err, &ce) && ce.Code == code && strings.Contains(ce.Msg, says)
}

// TestHTTP: the API as plain HTTP sees it: JSON errors for what has no
// endpoint, one node's subtree, and a bounded body.
func TestHTTP(t *testing.T) {
	_, _, sock := serve(t)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	do := func(method, path string, body []byte) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, "http://stackd"+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: Content-Type %q", method, path, ct)
		}
		return resp.StatusCode, b.String()
	}
	if code, body := do("GET", "/v1/nodes/disk/split/testmirror/leg0", nil); code != 200 ||
		!strings.Contains(body, `"path": "disk/split/testmirror/leg0/memory"`) || strings.Contains(body, `"disk/split"`) {
		t.Errorf("one node: %d %s", code, body)
	}
	if code, body := do("GET", "/v1/nodes/disk/nope", nil); code != 404 || !strings.Contains(body, `"error": "no node at`) {
		t.Errorf("no node: %d %s", code, body)
	}
	if code, body := do("GET", "/v2/status", nil); code != 404 || !strings.Contains(body, `"error"`) {
		t.Errorf("no endpoint: %d %s", code, body)
	}
	if code, body := do("POST", "/v1/nodes/disk/split/testmirror/leg0/on", nil); code != 404 || !strings.Contains(body, "actions/ACTION") {
		t.Errorf("no actions/: %d %s", code, body)
	}
	if code, body := do("POST", "/v1/nodes/disk/split/testmirror/leg0/actions/on", bytes.Repeat([]byte("x"), 1<<20)); code != 413 || !strings.Contains(body, `"error"`) {
		t.Errorf("a 1 MiB body: %d %s", code, body)
	}
	if code, body := do("POST", "/v1/nodes/disk/split/testmirror/leg0/actions/on", nil); code != 200 || !strings.Contains(body, `"action": "on"`) {
		t.Errorf("on: %d %s", code, body)
	}

	// A header far beyond maxHeaderBytes is refused before any handler.
	req, _ := http.NewRequest("GET", "http://stackd/v1/status", nil)
	req.Header.Set("X-Padding", strings.Repeat("x", 64<<10))
	if resp, err := hc.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 64 KiB header: %s", resp.Status)
	}
}

// TestFormatState: how a node's state is put into words.
func TestFormatState(t *testing.T) {
	st := control.Status{Exports: []control.ExportStatus{{Name: "e", Size: 1 << 20, Root: control.NodeStatus{
		Path: "e/x", Kind: "x", Size: 1 << 20, Controlled: true,
		State: json.RawMessage(`{"state":"degraded","ops":["read","write"],"bitmap":{"dirty_bytes":1572864,"region_bytes":65536},"rate":0.5,"legs":[{"state":"in_sync"}]}`),
		Legs:  []control.NodeStatus{{Path: "e/x/leg0", Kind: "memory", Size: 1 << 20}},
	}}}}
	var b bytes.Buffer
	control.FormatStatus(&b, st)
	layer := "  x 1MiB requests=0 degraded ops=[read, write] bitmap.dirty=1.5MiB bitmap.region=64KiB rate=0.5"
	leg := "    memory 1MiB requests=0 [in_sync]"
	want := "e (1MiB)\n" + layer + "  e/x\n" + leg + strings.Repeat(" ", len(layer)-len(leg)+2) + "e/x/leg0\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
