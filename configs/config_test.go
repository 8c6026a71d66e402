package configs

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/stack"
)

func TestDefault(t *testing.T) {
	c := Default() // panics if default.yaml is broken
	if c.Source != DefaultSource {
		t.Errorf("Source = %q", c.Source)
	}
	if want := []Listener{{Network: "tcp", Address: "127.0.0.1:10809"}}; !reflect.DeepEqual(c.Listeners, want) {
		t.Errorf("Listeners = %v, want %v", c.Listeners, want)
	}
	if c.MetricsAddress != "127.0.0.1:9810" {
		t.Errorf("MetricsAddress = %q", c.MetricsAddress)
	}
	wantLimits := Limits{
		MaxConnections: 1024, MaxConnectionsPerClient: 64, MaxInFlight: 256,
		PayloadBudget: 256 << 20, ConnectionPayload: 64 << 20,
		HandshakeTimeout: 10 * time.Second, ReplyTimeout: time.Minute,
	}
	if c.Limits != wantLimits {
		t.Errorf("Limits = %+v, want %+v", c.Limits, wantLimits)
	}
	if len(c.Exports) != 1 {
		t.Fatalf("%d exports, want 1", len(c.Exports))
	}
	e := c.Exports[0]
	if e.Name != "default" || !e.Default || e.ReadOnly {
		t.Errorf("export %q default=%v read_only=%v", e.Name, e.Default, e.ReadOnly)
	}
	mem := "memory 256MiB()"
	want := "split 1GiB max_bytes=1MiB pool=1024(stripe 1GiB chunk=64KiB legs=4 pool=1024(" + strings.Repeat(mem, 4) + "))"
	if got := specString(e.Stack); got != want {
		t.Errorf("Stack = %s\nwant %s", got, want)
	}
	if size, ok := e.Stack.Size(); !ok || size != 1<<30 {
		t.Errorf("Size = %d, %v; want 1GiB", size, ok)
	}
	if got, ok := c.Export(""); !ok || got.Name != "default" {
		t.Errorf(`Export("") = %v, %v`, got, ok)
	}
	if _, ok := c.Export("nope"); ok {
		t.Error(`Export("nope") found an export`)
	}
}

func TestFormatTreeDefault(t *testing.T) {
	var b bytes.Buffer
	FormatTree(&b, Default())
	want := `default (1GiB, default) "1 GiB RAM disk: 1 MiB split over a 4-way 64 KiB stripe"
  split 1GiB max_bytes=1MiB pool=1024
    stripe 1GiB chunk=64KiB legs=4 pool=1024
      memory 256MiB
      memory 256MiB
      memory 256MiB
      memory 256MiB
`
	if b.String() != want {
		t.Errorf("FormatTree:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestFormatTreeAttributes(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "my disk.img")
	if err := os.WriteFile(img, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	src := strings.ReplaceAll(dedent(`
		exports:
		  - name: a
		    read_only: true
		    stack:
		      linear:
		        pool: {capacity: 2, rescuer: false}
		        legs:
		          - file: {path: "IMG"}
		          - split:
		              max_bytes: 4KiB
		              boundary: 64KiB
		              leg: {memory: {size: 1MiB, chunk: 64KiB}}
		          - null: {size: 1536MiB}
		  - name: b
		    stack: {null: {size: 512}}
		  - name: f
		    stack:
		      error:
		        ops: [write, flush]
		        rate: 0.5
		        ranges: [{offset: 1MiB, length: 64KiB}, {offset: 0, length: 512}]
		        leg:
		          flakey:
		            up: 5s
		            down: 1s
		            leg:
		              error: {leg: {memory: {size: 2MiB}}}`), "IMG", img)
	c, err := parseAndCheck("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	FormatTree(&b, c)
	// 8KiB + 1MiB + 1536MiB is not a whole number of MiB.
	want := "a (1573896KiB, read-only)\n" +
		"  linear 1573896KiB legs=3 pool=2 rescuer=off\n" +
		"    file 8KiB path=\"" + img + "\"\n" +
		"    split 1MiB max_bytes=4KiB boundary=64KiB pool=1024\n" +
		"      memory 1MiB chunk=64KiB\n" +
		"    null 1536MiB\n" +
		"b (512B)\n" +
		"  null 512B\n" +
		"f (2MiB)\n" +
		"  error 2MiB ops=write,flush errno=EIO rate=0.5 ranges=1MiB+64KiB,0B+512B\n" +
		"    flakey 2MiB up=5s down=1s mode=error\n" +
		"      error 2MiB errno=EIO\n" +
		"        memory 2MiB\n"
	if b.String() != want {
		t.Errorf("FormatTree:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestSpecMapping(t *testing.T) {
	src := dedent(`
		listen:
		  - tcp: ":10809"
		  - unix: /run/stackd/nbd.sock
		metrics:
		  address: "[::1]:9810"
		limits:
		  max_connections: 10
		  max_in_flight: 0
		  max_connections_per_client: 10
		  payload_budget: 96MiB
		  connection_payload: 33554432
		  handshake_timeout: 1m30s
		  reply_timeout: 2s
		exports:
		  - name: first
		    description: "the first"
		    stack:
		      split:
		        max_bytes: 128KiB
		        boundary: 0
		        pool: {capacity: 64}
		        leg:
		          stripe:
		            chunk: 4KiB
		            pool: {capacity: 1, rescuer: false}
		            legs:
		              - &leg {memory: {size: 1MiB, chunk: 8KiB}}
		              - *leg
		  - name: second
		    default: true
		    read_only: true
		    stack:
		      linear:
		        legs:
		          - null: {size: 4KiB}
		          - null:
		              size: 2GiB`)
	c, err := Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	mem := "memory 1MiB chunk=8KiB()"
	wantStacks := []string{
		"split 2MiB max_bytes=128KiB pool=64(stripe 2MiB chunk=4KiB legs=2 pool=1 rescuer=off(" + mem + mem + "))",
		"linear 2097156KiB legs=2 pool=1024(null 4KiB()null 2GiB())",
	}
	want := &Config{
		Listeners:      []Listener{{Network: "tcp", Address: ":10809"}, {Network: "unix", Address: "/run/stackd/nbd.sock"}},
		MetricsAddress: "[::1]:9810",
		Limits: Limits{
			MaxConnections: 10, MaxConnectionsPerClient: 10, MaxInFlight: 256,
			PayloadBudget: 96 << 20, ConnectionPayload: 32 << 20,
			HandshakeTimeout: 90 * time.Second, ReplyTimeout: 2 * time.Second,
		},
		Exports: []Export{
			{
				Name: "first", Description: "the first",
			},
			{
				Name: "second", Default: true, ReadOnly: true,
			},
		},
		Source: "test.yaml",
	}
	for i := range c.Exports {
		if i < len(wantStacks) {
			if got := specString(c.Exports[i].Stack); got != wantStacks[i] {
				t.Errorf("export %d: Stack = %s\nwant %s", i, got, wantStacks[i])
			}
		}
		c.Exports[i].Stack, c.Exports[i].line = stack.Spec{}, 0
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", c, want)
	}
	if e, ok := c.Export(""); !ok || e.Name != "second" {
		t.Errorf(`Export("") = %v, %v; want "second"`, e, ok)
	}
}

// TestLimitDefaults: a share left out (or 0) is the default share of the
// limit in effect over it, whether that limit was given or defaulted; and
// the limits reach the server's options.
func TestLimitDefaults(t *testing.T) {
	for _, c := range []struct {
		limits string
		want   Limits
	}{
		{"", Limits{
			MaxConnections: 1024, MaxConnectionsPerClient: 64, MaxInFlight: 256,
			PayloadBudget: 256 << 20, ConnectionPayload: 64 << 20,
			HandshakeTimeout: 10 * time.Second, ReplyTimeout: time.Minute,
		}},
		// A quarter of each, and never below four connections (or all of
		// them, if fewer) or one maximum-size request.
		{"{max_connections: 100, payload_budget: 1GiB}", Limits{
			MaxConnections: 100, MaxConnectionsPerClient: 25, MaxInFlight: 256,
			PayloadBudget: 1 << 30, ConnectionPayload: 256 << 20,
			HandshakeTimeout: 10 * time.Second, ReplyTimeout: time.Minute,
		}},
		{"{max_connections: 3, payload_budget: 64MiB, max_connections_per_client: 0, connection_payload: 0, reply_timeout: 0s}", Limits{
			MaxConnections: 3, MaxConnectionsPerClient: 3, MaxInFlight: 256,
			PayloadBudget: 64 << 20, ConnectionPayload: 32 << 20,
			HandshakeTimeout: 10 * time.Second, ReplyTimeout: time.Minute,
		}},
		// The shares may be the whole, and each limit at its floor.
		{"{max_connections: 7, max_connections_per_client: 7, payload_budget: 40MiB, connection_payload: 40MiB, reply_timeout: 2s}", Limits{
			MaxConnections: 7, MaxConnectionsPerClient: 7, MaxInFlight: 256,
			PayloadBudget: 40 << 20, ConnectionPayload: 40 << 20,
			HandshakeTimeout: 10 * time.Second, ReplyTimeout: 2 * time.Second,
		}},
		{"{max_connections_per_client: 1, payload_budget: 32MiB, connection_payload: 32MiB}", Limits{
			MaxConnections: 1024, MaxConnectionsPerClient: 1, MaxInFlight: 256,
			PayloadBudget: 32 << 20, ConnectionPayload: 32 << 20,
			HandshakeTimeout: 10 * time.Second, ReplyTimeout: time.Minute,
		}},
	} {
		src := "limits: " + c.limits + "\nexports:\n  - name: a\n    stack: {null: {size: 1MiB}}\n"
		cfg, err := Parse("t.yaml", []byte(src))
		if err != nil {
			t.Errorf("limits %q: %v", c.limits, err)
			continue
		}
		if cfg.Limits != c.want {
			t.Errorf("limits %q:\n got %+v\nwant %+v", c.limits, cfg.Limits, c.want)
		}
		o := cfg.Limits.ServerOptions()
		got := Limits{
			MaxConnections: o.MaxConnections, MaxConnectionsPerClient: o.MaxConnectionsPerClient,
			MaxInFlight: o.MaxInFlight, PayloadBudget: o.PayloadBudget, ConnectionPayload: o.ConnectionPayload,
			HandshakeTimeout: o.HandshakeTimeout, ReplyTimeout: o.ReplyTimeout,
		}
		if got != c.want {
			t.Errorf("limits %q: ServerOptions carry\n %+v\nwant %+v", c.limits, got, c.want)
		}
		// What Parse accepts, the server must too: the two check the
		// same bounds in two places.
		st, err := cfg.Exports[0].Build(nil)
		if err != nil {
			t.Fatal(err)
		}
		o.Exports = []nbd.ExportConfig{cfg.Exports[0].ServerExport(st.Root)}
		if _, err := nbd.NewServer(o); err != nil {
			t.Errorf("limits %q: the server refuses them: %v", c.limits, err)
		}
		st.Close()
	}
}

func TestDefaultExportRules(t *testing.T) {
	one := "exports:\n  - name: only\n    stack: {null: {size: 1MiB}}\n"
	c, err := Parse("t.yaml", []byte(one))
	if err != nil || !c.Exports[0].Default {
		t.Errorf("a lone export is not the default: %v", err)
	}
	oneOff := "exports:\n  - name: only\n    default: false\n    stack: {null: {size: 1MiB}}\n"
	c, err = Parse("t.yaml", []byte(oneOff))
	if err != nil || c.Exports[0].Default {
		t.Errorf("a lone export with default: false became the default: %v", err)
	}
	two := one + "  - name: other\n    stack: {null: {size: 1MiB}}\n"
	c, err = Parse("t.yaml", []byte(two))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Export(""); ok {
		t.Error("two exports and no default: the empty name found one")
	}
}

func TestMetricsOff(t *testing.T) {
	for _, addr := range []string{`off`, `""`, ``} {
		src := "metrics:\n  address: " + addr + "\nexports:\n  - name: a\n    stack: {null: {size: 1MiB}}\n"
		c, err := Parse("t.yaml", []byte(src))
		if err != nil {
			t.Errorf("address %s: %v", addr, err)
			continue
		}
		if c.MetricsAddress != "" {
			t.Errorf("address %s: MetricsAddress = %q, want off", addr, c.MetricsAddress)
		}
	}
	c, err := Parse("t.yaml", []byte("metrics: {}\nexports:\n  - name: a\n    stack: {null: {size: 1MiB}}\n"))
	if err != nil || c.MetricsAddress != DefaultMetricsAddress {
		t.Errorf("metrics: {} gave %v, %v; want the default address", c, err)
	}
}

// TestControl: the control socket is off unless the configuration names
// it; "off" and an empty value turn it off.
func TestControl(t *testing.T) {
	const exports = "exports:\n  - name: a\n    stack: {null: {size: 1MiB}}\n"
	for src, want := range map[string]string{
		"":                                    "",
		"control: off\n":                      "",
		"control: \"\"\n":                     "",
		"control:\n":                          "",
		"control: /run/stackd/control.sock\n": "/run/stackd/control.sock",
		"control: ctl.sock\n":                 "ctl.sock",
	} {
		c, err := Parse("t.yaml", []byte(src+exports))
		if err != nil {
			t.Errorf("%q: %v", src, err)
			continue
		}
		if c.Control != want {
			t.Errorf("%q: Control = %q, want %q", src, c.Control, want)
		}
	}
	if Default().Control != "" {
		t.Error("the embedded default has a control socket; it must run as any user, and /run/stackd is root's")
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stackd.yaml")
	if err := os.WriteFile(path, []byte("exports:\n  - name: a\n    stack: {file: {path: disk.img, size: 1MiB}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Run from elsewhere: the relative path is relative to the file.
	t.Chdir(t.TempDir())
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Source != path {
		t.Errorf("Source = %q, want %q", c.Source, path)
	}
	if got, want := c.Exports[0].Stack.Config.(*stack.FileConfig).Path.S, filepath.Join(dir, "disk.img"); got != want {
		t.Errorf("Path = %q, want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "disk.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load created or touched the file: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func TestErrorType(t *testing.T) {
	_, err := Parse("x.yaml", []byte("exports: []\n"))
	var e *Error
	if !errors.As(err, &e) || e.File != "x.yaml" || e.Line != 1 {
		t.Errorf("errors.As gave %#v from %v", e, err)
	}
}

// TestExamples parses every example with its /var/lib/stackd paths moved
// into a temporary directory, so that the examples stay valid, and checks
// the size of the export each describes.
func TestExamples(t *testing.T) {
	heads := map[string]string{
		"faults.yaml":       "faulty (256MiB, default)",
		"file-stripe.yaml":  "striped (4GiB, default)",
		"linear-files.yaml": "concat (3GiB, default)",
		"mirror-files.yaml": "mirrored (1GiB, default)",
		"read-only.yaml":    "golden (1GiB, default, read-only)",
		"tiny-pools.yaml":   "tiny (128MiB, default)",
	}
	paths, err := filepath.Glob("examples/*.yaml")
	if err != nil || len(paths) != len(heads) {
		t.Fatalf("examples %v (%v); want one for each of %v", paths, err, heads)
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			head, ok := heads[filepath.Base(path)]
			if !ok {
				t.Fatal("a new example: add its first FormatTree line to this test")
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			// read-only.yaml serves an existing image: a sparse 1 GiB file.
			golden := filepath.Join(dir, "golden.img")
			if err := os.WriteFile(golden, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(golden, 1<<30); err != nil {
				t.Fatal(err)
			}
			data = bytes.ReplaceAll(data, []byte("/var/lib/stackd"), []byte(dir))
			c, err := parseAndCheck(path, data)
			if err != nil {
				t.Fatal(err)
			}
			var tree bytes.Buffer
			FormatTree(&tree, c)
			if first, _, _ := strings.Cut(tree.String(), "\n"); !strings.HasPrefix(first, head) {
				t.Errorf("first line %q, want it to start %q", first, head)
			}
			if strings.Contains(tree.String(), "size unknown") {
				t.Errorf("size unknown in\n%s", tree.String())
			}
		})
	}
}

// TestFileAccepted covers file targets Parse accepts, and the sizes it
// computes for them.
func TestFileAccepted(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 3<<20); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, stack string
		size        uint64
	}{
		{"existing, no size", "{file: {path: IMG}}", 3 << 20},
		{"existing, smaller size", "{file: {path: IMG, size: 1MiB}}", 1 << 20},
		{"existing, same size", "{file: {path: IMG, size: 3MiB}}", 3 << 20},
		{"missing, with size", "{file: {path: DIR/new.img, size: 5MiB}}", 5 << 20},
	} {
		src := strings.NewReplacer("IMG", img, "DIR", dir).Replace(
			"exports:\n  - name: a\n    stack: " + c.stack + "\n")
		cfg, err := parseAndCheck("test.yaml", []byte(src))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if n, ok := cfg.Exports[0].Stack.Size(); !ok || n != c.size {
			t.Errorf("%s: Size = %d, %v; want %d", c.name, n, ok, c.size)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "new.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Parse created a file: %v", err)
	}
}

// makeUnwritable makes path impossible to open for writing, for root too
// when chattr works, and reports whether it managed.
func makeUnwritable(t *testing.T, path string) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		return os.Chmod(path, 0o444) == nil
	}
	if err := exec.Command("chattr", "+i", path).Run(); err != nil {
		return false
	}
	// Registered after t.TempDir, so it runs before the directory is
	// removed.
	t.Cleanup(func() { exec.Command("chattr", "-i", path).Run() })
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err == nil {
		f.Close()
		return false
	}
	return true
}

func TestUnwritableFile(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if !makeUnwritable(t, img) {
		t.Skip("cannot make a file unwritable here")
	}
	src := "exports:\n  - name: a\n    stack:\n      file: {path: " + img + "}\n"
	_, err := parseAndCheck("test.yaml", []byte(src))
	wantPrefix := "test.yaml:4: file " + img + " is not writable ("
	wantSuffix := "); mark the export read_only: true, or make the file writable"
	if err == nil || !strings.HasPrefix(err.Error(), wantPrefix) || !strings.HasSuffix(err.Error(), wantSuffix) {
		t.Errorf("got %v\nwant %s…%s", err, wantPrefix, wantSuffix)
	}
	// Read-only, it is fine.
	src = "exports:\n  - name: a\n    read_only: true\n    stack:\n      file: {path: " + img + "}\n"
	if _, err := parseAndCheck("test.yaml", []byte(src)); err != nil {
		t.Errorf("read-only export of an unwritable file: %v", err)
	}
}

func TestUnwritableDirectory(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root may write to any directory")
	}
	dir := t.TempDir()
	sub := filepath.Join(dir, "ro")
	if err := os.Mkdir(sub, 0o555); err != nil {
		t.Fatal(err)
	}
	src := "exports:\n  - name: a\n    stack:\n      file: {path: " + sub + "/a.img, size: 1MiB}\n"
	_, err := parseAndCheck("test.yaml", []byte(src))
	want := "test.yaml:4: file " + sub + "/a.img does not exist, and its directory " + sub +
		" is not writable (permission denied), so stackd cannot create it"
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

// specString describes a stack as its kinds ask `stackd check` to print
// it, each node followed by its legs in parentheses.
func specString(s stack.Spec) string {
	n, ok := s.Size()
	size := "size unknown"
	if ok {
		size = settings.FormatSize(n)
	}
	out := strings.Join(append([]string{s.Kind(), size}, s.Config.Describe()...), " ") + "("
	for _, l := range s.Config.LegSpecs() {
		out += specString(l)
	}
	return out + ")"
}

// parseAndCheck is what `stackd check` does: Parse, then CheckHost.
func parseAndCheck(source string, data []byte) (*Config, error) {
	c, err := Parse(source, data)
	if err != nil {
		return nil, err
	}
	return c, c.CheckHost()
}

func TestFormatTreeMirror(t *testing.T) {
	bitmap := filepath.Join(t.TempDir(), "m0.bitmap")
	src := strings.ReplaceAll(dedent(`
		exports:
		  - name: m
		    stack:
		      mirror:
		        read: least-pending
		        bitmap: {path: BITMAP, region: 1MiB}
		        resync_rate: 64MiB/s
		        legs:
		          - memory: {size: 16MiB}
		          - memory: {size: 16MiB}`), "BITMAP", bitmap)
	c, err := parseAndCheck("test.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	FormatTree(&b, c)
	want := "m (16MiB, default)\n" +
		"  mirror 16MiB legs=2 read=least-pending bitmap=" + bitmap + " region=1MiB resync_rate=64MiB/s pool=1024\n" +
		"    memory 16MiB\n" +
		"    memory 16MiB\n"
	if b.String() != want {
		t.Errorf("FormatTree:\n%s\nwant:\n%s", b.String(), want)
	}
	st, err := c.Exports[0].Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}
