package configs

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/stackd/stackd/stack"
)

// dedent strips the leading newline and the tabs that indent a YAML
// snippet inside Go source, so that line 1 of the snippet is its first
// line and the YAML keeps its own (space) indentation.
func dedent(s string) string {
	s = strings.TrimPrefix(s, "\n")
	lines := strings.Split(s, "\n")
	indent := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		if n := len(l) - len(strings.TrimLeft(l, "\t")); indent < 0 || n < indent {
			indent = n
		}
	}
	for i, l := range lines {
		if len(l)-len(strings.TrimLeft(l, "\t")) >= indent && indent > 0 {
			lines[i] = l[indent:]
		} else {
			lines[i] = strings.TrimLeft(l, "\t")
		}
	}
	return strings.Join(lines, "\n")
}

// TestErrors runs the cases in testdata/errors/*.txtar. A case NAME is
// the configuration NAME.yaml, parsed and host-checked as test.yaml
// (parseAndCheck); NAME.want, the whole error text it must give; and, if
// the case needs files, NAME.files: one line per file to make in $DIR,
// "NAME SIZE" for a sparse file or "NAME -> TARGET" for a symlink. In the
// YAML and the want, $DIR is that directory, and $KINDS the list of node
// kinds as messages give it.
func TestErrors(t *testing.T) {
	archives, err := filepath.Glob("testdata/errors/*.txtar")
	if err != nil || len(archives) == 0 {
		t.Fatalf("no test data: %v", err)
	}
	kinds := strings.Join(stack.Kinds(), ", ")
	for _, archive := range archives {
		data, err := os.ReadFile(archive)
		if err != nil {
			t.Fatal(err)
		}
		group := strings.TrimSuffix(filepath.Base(archive), ".txtar")
		sections := readTxtar(data)
		for _, name := range sectionNames(sections, ".yaml") {
			t.Run(group+"/"+name, func(t *testing.T) {
				dir := t.TempDir()
				makeFiles(t, dir, sections[name+".files"])
				expand := strings.NewReplacer("$DIR", dir, "$KINDS", kinds).Replace
				src := expand(sections[name+".yaml"])
				want, ok := sections[name+".want"]
				if !ok {
					t.Fatalf("%s: no %s.want", archive, name)
				}
				_, err := parseAndCheck("test.yaml", []byte(src))
				got := "<nil>"
				if err != nil {
					got = err.Error()
				}
				if want = expand(want); got != want {
					t.Errorf("%s: error mismatch\n got: %s\nwant: %s\nyaml:\n%s", archive, got, want, src)
				}
			})
		}
	}
}

// readTxtar returns the files of a txtar archive by name, each without
// the newline that ends it in the archive (so that a case can be a file
// that does not end in one). The comment before the first file is
// dropped.
func readTxtar(data []byte) map[string]string {
	files := map[string]string{}
	var name string
	var body []string
	flush := func() {
		if name != "" {
			files[name] = strings.Join(body, "\n")
		}
	}
	for _, line := range strings.SplitAfter(string(data), "\n") {
		text := strings.TrimSuffix(line, "\n")
		if strings.HasPrefix(text, "-- ") && strings.HasSuffix(text, " --") && len(text) > 6 {
			flush()
			name, body = text[3:len(text)-3], nil
			continue
		}
		if name != "" && line != "" {
			body = append(body, text)
		}
	}
	flush()
	return files
}

// sectionNames returns the names of the sections that end in ext, without
// it, in a stable order.
func sectionNames(sections map[string]string, ext string) []string {
	var names []string
	for n := range sections {
		if base, ok := strings.CutSuffix(n, ext); ok {
			names = append(names, base)
		}
	}
	sort.Strings(names)
	return names
}

// makeFiles makes the files a case's .files section lists.
func makeFiles(t *testing.T, dir, list string) {
	t.Helper()
	for _, line := range strings.Split(list, "\n") {
		if name, target, ok := strings.Cut(line, " -> "); ok {
			if err := os.Symlink(filepath.Join(dir, target), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
			continue
		}
		name, size, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(size, 10, 64)
		if err != nil {
			t.Fatalf("files: %q: %v", line, err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, n); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAllErrorsReported checks that Parse goes on after a problem and
// reports every one, in line order, each on its own line.
func TestAllErrorsReported(t *testing.T) {
	src := dedent(`
		listen:
		  - tcp: nowhere
		limits:
		  max_in_flight: 1
		exports:
		  - name: a
		    stack:
		      stripe:
		        chunk: 100
		        legs:
		          - memory: {size: 1MiB}
		          - memory: {size: 0}
		  - name: a
		    stack: {disk: {}}`)
	want := []string{
		`test.yaml:2: tcp address "nowhere": want host:port: missing port in address`,
		`test.yaml:4: max_in_flight: 1 is too small; the Linux client keeps up to 128 requests in flight on a connection, so the limit must be at least that`,
		`test.yaml:9: stripe chunk: 100B is not a multiple of 512 bytes`,
		`test.yaml:12: memory size must be greater than zero`,
		`test.yaml:13: export name "a" is already used at line 6`,
		`test.yaml:14: unknown kind "disk" (want ` + strings.Join(stack.Kinds(), ", ") + `)`,
	}
	_, err := Parse("test.yaml", []byte(src))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", err, strings.Join(want, "\n"))
	}
}
