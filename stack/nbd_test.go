package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/targets"
)

// serveMemory runs package nbd's server over a memory target on loopback
// TCP until the test ends, and returns its address.
func serveMemory(t *testing.T, size uint64) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := nbd.NewServer(nbd.Options{Exports: []nbd.ExportConfig{{Name: "disk0", Device: targets.NewMemory(size, 0)}}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return l.Addr().String()
}

// TestNBDStripe: a stripe over two nbd legs, one of them sized by the host
// check; data written through it reads back; the legs are Controlled,
// show their connections and take no action; an export advertises only
// what the remotes can do.
func TestNBDStripe(t *testing.T) {
	a, b := serveMemory(t, 8<<20), serveMemory(t, 8<<20)
	spec, err := decodeSpec(t, fmt.Sprintf(`stripe:
  chunk: 64KiB
  legs:
    - nbd: {uri: "nbd://%s/disk0", connections: 2, timeout: 5s}
    - nbd: {uri: "nbd://%s/disk0", size: 8MiB}
`, a, b))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := spec.Size(); ok {
		t.Fatal("size known before the host check")
	}
	var p settings.Problems
	(&Host{Export: "x"}).CheckHost(spec, &p)
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
	if n, ok := spec.Size(); !ok || n != 16<<20 {
		t.Fatalf("size %d, %v", n, ok)
	}
	if got := strings.Join(spec.Config.LegSpecs()[0].Config.Describe(), " "); got != fmt.Sprintf("uri=nbd://%s/disk0 connections=2 timeout=5s", a) {
		t.Errorf("Describe = %q", got)
	}
	st := mustBuild(t, "x", spec, BuildOptions{})
	defer st.Close()
	if want := targets.NewMemory(1, 0).Caps(); st.Root.Caps() != want {
		t.Errorf("caps %b, want the memory target's %b", st.Root.Caps(), want)
	}
	var s bioset.Submitter
	data := bytes.Repeat([]byte("remote!!"), 32<<10)
	if err := request(t, &s, st.Root, bioset.OpWrite, 0, 0, uint64(len(data)), data, nil); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := request(t, &s, st.Root, bioset.OpRead, 0, 0, uint64(len(got)), got, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	leg, _, _, err := st.Lookup("x/stripe/leg0")
	if err != nil || leg.Control == nil || leg.Remote == nil {
		t.Fatalf("leg0: %+v, %v", leg, err)
	}
	js, _ := json.Marshal(leg.Control.State())
	if !strings.Contains(string(js), `"state":"connected"`) {
		t.Errorf("state %s", js)
	}
	if err := leg.Control.Act("fail", -1); !errors.Is(err, ErrUnknownAction) {
		t.Errorf("Act: %v", err)
	}
	if r := leg.Remote.RemoteStats(); r.InFlight != 0 || len(r.States) != 2 {
		t.Errorf("remote stats %+v", r)
	}
}

func TestNBDConfigErrors(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"nbd: {uri: http://x/y}", `line 1: nbd uri "http://x/y": scheme "http" is not nbd, nbd+unix, nbds or nbds+unix`},
		{"nbd: {uri: \"nbd://h/d\", connections: 0}", `line 1: nbd connections: 0 is out of range; want 1 to 16`},
		{"nbd: {uri: \"nbd://h/d\", timeout: 1ms}", `line 1: nbd timeout: 1ms is shorter than 100ms`},
		{"nbd: {uri: \"nbd://h/d\", size: 1000}", `line 1: nbd size: 1000B is not a multiple of 512 bytes`},
		{"nbd: {size: 1MiB}", `line 1: nbd needs "uri"`},
	} {
		_, err := decodeSpec(t, c.src)
		if err == nil || err.Error() != c.want {
			t.Errorf("%s:\n got %v\nwant %s", c.src, err, c.want)
		}
	}
}

// TestNBDHostCheck: without a size, an unreachable remote is a problem
// that says to give one; a size that differs from the remote's is one too.
func TestNBDHostCheck(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	live := serveMemory(t, 4<<20)
	for _, c := range []struct{ src, want string }{
		{fmt.Sprintf("nbd: {uri: \"nbd://%s/disk0\"}", dead), "give a size, and the export starts without the remote"},
		{fmt.Sprintf("nbd: {uri: \"nbd://%s/disk0\", size: 8MiB}", live), "the remote is 4MiB (4194304 bytes), not the size 8MiB given"},
	} {
		spec, err := decodeSpec(t, c.src)
		if err != nil {
			t.Fatal(err)
		}
		var p settings.Problems
		(&Host{}).CheckHost(spec, &p)
		if err := p.Err(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.src, err, c.want)
		}
	}
	spec, err := decodeSpec(t, fmt.Sprintf("nbd: {uri: \"nbd://%s/disk0\", size: 4MiB, timeout: 200ms}", dead))
	if err != nil {
		t.Fatal(err)
	}
	var p settings.Problems
	(&Host{}).CheckHost(spec, &p)
	if err := p.Err(); err != nil {
		t.Fatalf("a sized leg whose remote is down: %v", err)
	}
	st, err := Build("x", spec, BuildOptions{})
	if err != nil {
		t.Fatalf("build with the remote down: %v", err)
	}
	defer st.Close()
	var s bioset.Submitter
	if err := request(t, &s, st.Root, bioset.OpRead, 0, 0, 4096, make([]byte, 4096), nil); err == nil {
		t.Fatal("read from a remote that is down succeeded")
	}
}
