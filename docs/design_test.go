// Package docs holds stackd's design document. Its only code is this test,
// which keeps DESIGN.md and the code that cites it from drifting apart: a
// comment that cites a rule the document does not define, a file or
// function the document names that has gone, or a dependency line that no
// longer matches the imports each fail it.
package docs

import (
	"bufio"
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// root is the repository, seen from this package's directory.
const root = ".."

const module = "github.com/stackd/stackd/"

var (
	// ruleHeading is how DESIGN.md defines a rule: "### Rule 3: ...".
	ruleHeading = regexp.MustCompile(`^### Rule (\d+): \S`)
	// ruleCitation finds "rule 5", "Rule 6", "rules 3 and 4", "rules 1, 2
	// and 5" in a comment; the numbers are picked out of the match.
	ruleCitation = regexp.MustCompile(`\b[Rr]ules? \d+(?:(?:,| and| or|, and|, or) \d+)*`)
	number       = regexp.MustCompile(`\d+`)
	// goFileRef is a file the document names, as `dir/file.go`.
	goFileRef = regexp.MustCompile("`([a-z0-9_/-]+\\.go)`")
	// declRef is a name that follows a file reference, as `Type.Method`,
	// `Type.Field` or `func`.
	declRef = regexp.MustCompile("^(?:\\s|,|and |or )*`([A-Za-z_]\\w*(?:\\.[A-Za-z_]\\w*)?)`")
	// depLine is one line of a dependency list: "configs  → nbd, stack".
	depLine = regexp.MustCompile(`^([a-z][a-z0-9_/-]*)\s+→\s+(.*)$`)
)

func readDesign(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("DESIGN.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// definedRules returns the rule numbers DESIGN.md defines, and checks that
// they run 1, 2, 3, ... with none twice: one numbering, each rule once.
func definedRules(t *testing.T, doc string) map[int]bool {
	t.Helper()
	rules := map[int]bool{}
	next := 1
	for _, line := range strings.Split(doc, "\n") {
		m := ruleHeading.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		if n != next {
			t.Errorf("DESIGN.md: %q: want rule %d next", line, next)
		}
		rules[n] = true
		next = n + 1
	}
	if len(rules) == 0 {
		t.Fatal("DESIGN.md defines no rules")
	}
	return rules
}

// goFiles returns the repository's Go files, tests included.
func goFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".go") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestRuleCitationsResolve: every "rule N" a Go comment cites is a rule
// DESIGN.md defines. This package's own comments are examples, not
// citations, and are skipped.
func TestRuleCitationsResolve(t *testing.T) {
	rules := definedRules(t, readDesign(t))
	fset := token.NewFileSet()
	cited := 0
	for _, path := range goFiles(t) {
		if filepath.Dir(path) == filepath.Join(root, "docs") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments|parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range f.Comments {
			for _, c := range g.List {
				for _, loc := range ruleCitation.FindAllStringIndex(c.Text, -1) {
					pos := fset.Position(c.Slash)
					line := pos.Line + strings.Count(c.Text[:loc[0]], "\n")
					for _, s := range number.FindAllString(c.Text[loc[0]:loc[1]], -1) {
						cited++
						if n, _ := strconv.Atoi(s); !rules[n] {
							t.Errorf("%s:%d: cites rule %d, which docs/DESIGN.md does not define", pos.Filename, line, n)
						}
					}
				}
			}
		}
	}
	if cited == 0 {
		t.Fatal("no rule citations found: is the pattern still right?")
	}
}

// TestNamedCodeExists: every `file.go` DESIGN.md names exists, and every
// `Name` right after one is declared in it (a function, a method as
// Type.Method, a type, a constant or variable, or a struct field as
// Type.Field).
func TestNamedCodeExists(t *testing.T) {
	doc := readDesign(t)
	decls := map[string]map[string]bool{}
	for _, loc := range goFileRef.FindAllStringSubmatchIndex(doc, -1) {
		file := doc[loc[2]:loc[3]]
		names, ok := decls[file]
		if !ok {
			names = declaredNames(t, filepath.Join(root, file))
			decls[file] = names
		}
		if names == nil {
			continue // reported by declaredNames
		}
		rest := doc[loc[1]:]
		for {
			m := declRef.FindStringSubmatchIndex(rest)
			if m == nil {
				break
			}
			name := rest[m[2]:m[3]]
			if !names[name] {
				t.Errorf("DESIGN.md names %s in %s, which declares no such thing", name, file)
			}
			rest = rest[m[1]:]
		}
	}
	if len(decls) == 0 {
		t.Fatal("DESIGN.md names no Go files: is the pattern still right?")
	}
}

// declaredNames returns the top-level names path declares, methods as
// Type.Method and struct fields as Type.Field; nil if it cannot be read.
func declaredNames(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Errorf("DESIGN.md names %s: %v", path, err)
		return nil
	}
	names := map[string]bool{}
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			if d.Recv == nil || len(d.Recv.List) == 0 {
				names[d.Name.Name] = true
				continue
			}
			names[recvType(d.Recv.List[0].Type)+"."+d.Name.Name] = true
		case *ast.GenDecl:
			for _, s := range d.Specs {
				switch s := s.(type) {
				case *ast.TypeSpec:
					names[s.Name.Name] = true
					if st, ok := s.Type.(*ast.StructType); ok {
						for _, fld := range st.Fields.List {
							for _, n := range fld.Names {
								names[s.Name.Name+"."+n.Name] = true
							}
						}
					}
				case *ast.ValueSpec:
					for _, n := range s.Names {
						names[n.Name] = true
					}
				}
			}
		}
	}
	return names
}

// recvType returns the name of a method's receiver type, without pointer
// or type parameters.
func recvType(e ast.Expr) string {
	for {
		switch x := e.(type) {
		case *ast.StarExpr:
			e = x.X
		case *ast.IndexExpr:
			e = x.X
		case *ast.IndexListExpr:
			e = x.X
		case *ast.Ident:
			return x.Name
		default:
			return ""
		}
	}
}

// TestDependencyLists: the package dependency lists in DESIGN.md and the
// README state each package's stackd imports exactly, and DESIGN.md's
// covers every package with non-test Go files.
func TestDependencyLists(t *testing.T) {
	listed := checkDependencyList(t, "DESIGN.md")
	checkDependencyList(t, filepath.Join(root, "README.md"))

	for _, path := range goFiles(t) {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		dir, _ := filepath.Rel(root, filepath.Dir(path))
		dir = filepath.ToSlash(dir)
		if !listed[dir] {
			t.Errorf("DESIGN.md: package %s is missing from the dependency list", dir)
			listed[dir] = true // once per package
		}
	}
}

// checkDependencyList compares each "pkg → a, b" line inside a fenced block
// of the Markdown file with pkg's imports, and returns the packages listed.
func checkDependencyList(t *testing.T, file string) map[string]bool {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	listed := map[string]bool{}
	fenced := false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			fenced = !fenced
			continue
		}
		m := depLine.FindStringSubmatch(line)
		if !fenced || m == nil {
			continue
		}
		pkg := m[1]
		listed[pkg] = true
		var want []string
		if !strings.HasPrefix(m[2], "(") {
			for _, d := range strings.Split(m[2], ",") {
				want = append(want, strings.TrimSpace(d))
			}
		}
		got, err := stackdImports(filepath.Join(root, pkg))
		if err != nil {
			t.Errorf("%s:%d: %s: %v", file, n, pkg, err)
			continue
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s:%d: %s imports %v, the list says %v", file, n, pkg, got, want)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(listed) == 0 {
		t.Errorf("%s has no dependency list", file)
	}
	return listed
}

// buildTagSets are the builds whose imports the lists cover: the default
// one, and the one with the rbd target (librbd through cgo), whose files
// only that build compiles. A package's line is the union over them, so
// that an import hidden behind a tag is listed too.
var buildTagSets = [][]string{nil, {"rbd", "pacific"}}

// stackdImports returns the stackd packages dir's non-test files import,
// in any of buildTagSets' builds, relative to the module and sorted.
func stackdImports(dir string) ([]string, error) {
	var out []string
	for _, tags := range buildTagSets {
		ctx := build.Default
		ctx.BuildTags = tags
		ctx.CgoEnabled = true
		p, err := ctx.ImportDir(dir, 0)
		if err != nil {
			return nil, err
		}
		for _, imp := range p.Imports {
			if rel, ok := strings.CutPrefix(imp, module); ok && !slices.Contains(out, rel) {
				out = append(out, rel)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}
