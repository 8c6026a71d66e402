package peers

import (
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// nbdinfoExport is the part of one export in `nbdinfo --json` output the
// tests look at.
type nbdinfoExport struct {
	Name         string   `json:"export-name"`
	Description  string   `json:"description"`
	Size         int64    `json:"export-size"`
	IsReadOnly   *bool    `json:"is_read_only"`
	CanFlush     *bool    `json:"can_flush"`
	CanFUA       *bool    `json:"can_fua"`
	CanTrim      *bool    `json:"can_trim"`
	CanZero      *bool    `json:"can_zero"`
	CanMultiConn *bool    `json:"can_multi_conn"`
	BlockMin     int64    `json:"block_size_minimum"`
	BlockMax     int64    `json:"block_size_maximum"`
	Contexts     []string `json:"contexts"`
}

type nbdinfoJSON struct {
	Protocol   string          `json:"protocol"`
	Structured bool            `json:"structured"`
	Exports    []nbdinfoExport `json:"exports"`
}

func nbdinfo(t *testing.T, args ...string) nbdinfoJSON {
	t.Helper()
	out := mustRun(t, "nbdinfo", append([]string{"--json"}, args...)...)
	var v nbdinfoJSON
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("nbdinfo --json output: %v\n%s", err, out)
	}
	return v
}

func TestNbdinfo(t *testing.T) {
	need(t, "nbdinfo")
	exports := []export{
		{Name: "default", Description: "striped RAM disk", Default: true, Stack: memStack(16 * MiB)},
		{Name: "files", Description: "striped over four files", Stack: fileStack(t.TempDir(), 8*MiB)},
		{Name: "ro", Description: "read-only RAM disk", ReadOnly: true, Stack: memStack(4 * MiB)},
		// The longest strings the protocol allows, and not only ASCII.
		{Name: strings.Repeat("n", 4096), Description: strings.Repeat("d", 4096), Stack: memStack(MiB)},
		{Name: "ünï cödé/?&", Description: "déscription ✓", Stack: memStack(MiB)},
	}
	d := startDaemon(t, daemonConfig{Exports: exports})

	flag := func(t *testing.T, what string, p *bool, want bool) {
		t.Helper()
		switch {
		case p == nil:
			t.Errorf("%s missing from nbdinfo output", what)
		case *p != want:
			t.Errorf("%s = %v, want %v", what, *p, want)
		}
	}

	t.Run("export", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			size     int64
			readOnly bool
		}{{"default", 64 * MiB, false}, {"files", 32 * MiB, false}, {"ro", 16 * MiB, true}} {
			v := nbdinfo(t, d.uri(tc.name))
			if len(v.Exports) != 1 {
				t.Fatalf("%s: %d exports in nbdinfo output, want 1", tc.name, len(v.Exports))
			}
			if !strings.HasPrefix(v.Protocol, "newstyle-fixed") {
				t.Errorf("%s: protocol %q, want newstyle-fixed", tc.name, v.Protocol)
			}
			e := v.Exports[0]
			if e.Name != tc.name {
				t.Errorf("export name %q, want %q", e.Name, tc.name)
			}
			if e.Size != tc.size {
				t.Errorf("%s: export-size %d, want %d", tc.name, e.Size, tc.size)
			}
			flag(t, tc.name+": is_read_only", e.IsReadOnly, tc.readOnly)
			flag(t, tc.name+": can_flush", e.CanFlush, true)
			flag(t, tc.name+": can_multi_conn", e.CanMultiConn, true)
			// A read-only export does not offer the commands that would
			// change it.
			flag(t, tc.name+": can_trim", e.CanTrim, !tc.readOnly)
			flag(t, tc.name+": can_zero", e.CanZero, !tc.readOnly)
			if !slices.Contains(e.Contexts, "base:allocation") {
				t.Errorf("%s: meta contexts %q lack base:allocation", tc.name, e.Contexts)
			}
			if e.BlockMax != 32*MiB {
				t.Errorf("%s: block_size_maximum %d, want 32 MiB", tc.name, e.BlockMax)
			}
			if e.BlockMin < 1 || e.BlockMin > 512 {
				t.Errorf("%s: block_size_minimum %d, want 1 to 512", tc.name, e.BlockMin)
			}
		}
		// A name with spaces, a slash and non-ASCII letters, escaped in
		// the URI.
		if v := nbdinfo(t, "nbd+unix:///"+url.PathEscape("ünï cödé/?&")+"?socket="+d.Socket); len(v.Exports) != 1 || v.Exports[0].Size != 4*MiB {
			t.Errorf("export with an unusual name: %+v", v.Exports)
		}
		// The empty name selects the default export.
		v := nbdinfo(t, "nbd+unix:///?socket="+d.Socket)
		if len(v.Exports) != 1 || v.Exports[0].Size != 64*MiB {
			t.Errorf("empty export name: %+v, want the 64 MiB default export", v.Exports)
		}
	})

	t.Run("list", func(t *testing.T) {
		v := nbdinfo(t, "--list", "nbd+unix:///?socket="+d.Socket)
		got := map[string]string{}
		for _, e := range v.Exports {
			got[e.Name] = e.Description
		}
		for _, e := range exports {
			desc, ok := got[e.Name]
			switch {
			case !ok:
				t.Errorf("nbdinfo --list lacks export %.20q (%d bytes)", e.Name, len(e.Name))
			case desc != e.Description:
				t.Errorf("export %.20q: description %.20q (%d bytes), want %.20q (%d bytes)", e.Name, desc, len(desc), e.Description, len(e.Description))
			}
		}
		if len(v.Exports) != len(exports) {
			t.Errorf("nbdinfo --list shows %d exports, want %d", len(v.Exports), len(exports))
		}
	})

	t.Run("missing export", func(t *testing.T) {
		out, err := run(t, "nbdinfo", d.uri("no-such-export"))
		if err == nil {
			t.Fatalf("nbdinfo of a missing export succeeded:\n%s", out)
		}
		if exitCode(err) <= 0 {
			t.Fatalf("nbdinfo of a missing export: %v\n%s", err, out)
		}
		if !strings.Contains(out, "no-such-export") {
			t.Errorf("nbdinfo's message does not name the export:\n%s", out)
		}
		// The server keeps serving.
		if v := nbdinfo(t, d.uri("default")); len(v.Exports) != 1 || v.Exports[0].Size != 64*MiB {
			t.Errorf("after a missing export: %+v", v.Exports)
		}
	})
}
