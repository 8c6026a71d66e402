package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestCheckDefault(t *testing.T) {
	code, out, errOut := runCmd("check")
	if code != 0 {
		t.Fatalf("check of the embedded default: exit %d, %s", code, errOut)
	}
	for _, want := range []string{"default (1GiB, default)", "split", "stripe", "memory 256MiB"} {
		if !strings.Contains(out, want) {
			t.Errorf("tree lacks %q:\n%s", want, out)
		}
	}
}

func TestCheckRejectsBadConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	bad := "exports:\n  - name: x\n    stack:\n      memory: {size: 1MiB, colour: blue}\n"
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCmd("check", "-config", path)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(errOut, path+":4:") || !strings.Contains(errOut, "colour") {
		t.Fatalf("error does not name file, line and key: %q", errOut)
	}
}

func TestCommandLine(t *testing.T) {
	if code, out, _ := runCmd("version"); code != 0 || !strings.HasPrefix(out, "stackd ") {
		t.Fatalf("version: exit %d, %q", code, out)
	}
	if code, _, errOut := runCmd("frobnicate"); code != 2 || !strings.Contains(errOut, "unknown command") {
		t.Fatalf("unknown command: exit %d, %q", code, errOut)
	}
	if code, _, _ := runCmd("serve", "-log-format", "xml"); code != 2 {
		t.Fatalf("bad -log-format: exit %d, want 2", code)
	}
	path := filepath.Join(t.TempDir(), "missing.yaml")
	if code, _, _ := runCmd("serve", "-config", path); code != 1 {
		t.Fatalf("missing config: exit %d, want 1", code)
	}
}
