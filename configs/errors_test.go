package configs

import (
	"strings"
	"testing"
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

type errorCase struct {
	name string
	yaml string
	// want is the whole error text; $DIR stands for a temporary
	// directory, the same one the YAML's $DIR names.
	want string
	// setup prepares files under dir before parsing.
	setup func(t *testing.T, dir string)
}

// parseCase parses a case as file test.yaml and returns its error text.
func parseCase(t *testing.T, c errorCase) (string, string) {
	t.Helper()
	dir := t.TempDir()
	if c.setup != nil {
		c.setup(t, dir)
	}
	src := strings.ReplaceAll(dedent(c.yaml), "$DIR", dir)
	_, err := Parse("test.yaml", []byte(src))
	got := "<nil>"
	if err != nil {
		got = err.Error()
	}
	return got, strings.ReplaceAll(c.want, "$DIR", dir)
}

func runErrorCases(t *testing.T, cases []errorCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, want := parseCase(t, c)
			if got != want {
				t.Errorf("Parse error mismatch\n got: %s\nwant: %s\nyaml:\n%s", got, want, dedent(c.yaml))
			}
		})
	}
}

// TestStructureErrors covers keys, kinds, YAML types and YAML syntax.
func TestStructureErrors(t *testing.T) {
	runErrorCases(t, []errorCase{
		{
			name: "unknown top-level key",
			yaml: `
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}
				listn:
				  - tcp: 127.0.0.1:1`,
			want: `test.yaml:4: unknown key "listn" in the configuration (did you mean "listen"?)`,
		},
		{
			name: "unknown key deep in a stack",
			yaml: `
				exports:
				  - name: a
				    stack:
				      split:
				        max_bytes: 4KiB
				        leg:
				          memory:
				            size: 1MiB
				            sise: 2MiB`,
			want: `test.yaml:9: unknown key "sise" in memory (did you mean "size"?)`,
		},
		{
			name: "unknown key with no close match",
			yaml: `
				exports:
				  - name: a
				    colour: red
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:3: unknown key "colour" in export (want name, description, default, read_only, stack)`,
		},
		{
			name: "size on an export",
			yaml: `
				exports:
				  - name: a
				    size: 1GiB
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:3: unknown key "size" in export; an export's size is its stack's size; give sizes to the leaf targets`,
		},
		{
			name: "pool on a leaf",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {size: 1MiB, pool: {capacity: 1}}`,
			want: `test.yaml:4: unknown key "pool" in memory (want size, chunk, delay)`,
		},
		{
			name: "duplicate key",
			yaml: `
				exports:
				  - name: a
				    name: b
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:3: export: duplicate key "name" (first at line 2)`,
		},
		{
			name: "node with no kind",
			yaml: `
				exports:
				  - name: a
				    stack: {}`,
			want: `test.yaml:3: stack has no kind; want one of split, stripe, linear, memory, file, null`,
		},
		{
			name: "node with two kinds",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {size: 1MiB}
				      null: {size: 1MiB}`,
			want: `test.yaml:4: stack has 2 keys (memory, null); a stack node has exactly one, its kind (put legs under "leg:" or "legs:")`,
		},
		{
			name: "unknown kind",
			yaml: `
				exports:
				  - name: a
				    stack:
				      raid0: {}`,
			want: `test.yaml:4: unknown kind "raid0" (want split, stripe, linear, memory, file, null)`,
		},
		{
			name: "misspelt kind",
			yaml: `
				exports:
				  - name: a
				    stack:
				      split:
				        max_bytes: 4KiB
				        leg:
				          strip: {chunk: 4KiB}`,
			want: `test.yaml:7: unknown kind "strip" (did you mean "stripe"?)`,
		},
		{
			name: "stack is a string",
			yaml: `
				exports:
				  - name: a
				    stack: memory`,
			want: `test.yaml:3: stack must be a stack node, a mapping with one key naming its kind such as "memory: {size: 1GiB}"; got "memory"`,
		},
		{
			name: "stack is empty",
			yaml: `
				exports:
				  - name: a
				    stack:`,
			want: `test.yaml:3: stack must be a stack node, a mapping with one key naming its kind such as "memory: {size: 1GiB}"; got empty`,
		},
		{
			name: "leg of a list is a string",
			yaml: `
				exports:
				  - name: a
				    stack:
				      linear:
				        legs:
				          - memory: {size: 1MiB}
				          - null`,
			want: `test.yaml:7: linear leg 2 must be a stack node, a mapping with one key naming its kind such as "memory: {size: 1GiB}"; got empty`,
		},
		{
			name: "kind settings are a list",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: [1MiB]`,
			want: `test.yaml:4: memory must be a mapping of keys to values, not a list`,
		},
		{
			name: "bool is a string",
			yaml: `
				exports:
				  - name: a
				    read_only: yes
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:3: read_only must be true or false, not "yes"`,
		},
		{
			name: "name is a number",
			yaml: `
				exports:
				  - name: 2024
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: export name must be a string, not the number 2024 (quote it to make it a string)`,
		},
		{
			name: "size is a list",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory:
				        size: [1, MiB]`,
			want: `test.yaml:5: memory size must be a size such as 4096 or 256MiB, not a list`,
		},
		{
			name: "legs is a mapping",
			yaml: `
				exports:
				  - name: a
				    stack:
				      linear:
				        legs:
				          memory: {size: 1MiB}`,
			want: `test.yaml:6: linear legs must be a list (lines starting with "- "), not a mapping`,
		},
		{
			name: "configuration is a list",
			yaml: `
				- name: a`,
			want: `test.yaml:1: the configuration must be a mapping of keys to values, not a list`,
		},
		{
			name: "empty file",
			yaml: ``,
			want: `test.yaml:1: the configuration is empty; it needs at least an exports list`,
		},
		{
			name: "comments only",
			yaml: `
				# nothing here`,
			want: `test.yaml:1: the configuration is empty; it needs at least an exports list`,
		},
		{
			name: "merge key",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory:
				        <<: {size: 1MiB}`,
			want: "test.yaml:5: memory: merge keys (<<) are not supported; repeat the keys or use an alias for the whole value\n" +
				`test.yaml:5: memory needs "size"`,
		},
		{
			name: "unknown anchor",
			yaml: `
				exports:
				  - name: a
				    stack: *leg`,
			want: `test.yaml:3: unknown anchor "leg" referenced`,
		},
		{
			name: "second document",
			yaml: `
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}
				---
				listen: []`,
			want: `test.yaml:5: a second YAML document; a configuration is a single document`,
		},
		{
			name: "syntax error, scanner",
			yaml: `
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}
				listen: a: b`,
			want: `test.yaml:4: mapping values are not allowed in this context`,
		},
		{
			name: "syntax error, parser",
			yaml: `
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}
				listen: []`,
			want: `test.yaml:3: did not find expected ',' or '}'`,
		},
		{
			name: "syntax error on line 1",
			yaml: `
				exports: a: b`,
			want: `test.yaml:1: mapping values are not allowed in this context`,
		},
	})
}

// TestLayerErrors covers the rules of split, stripe, linear and pools.
func TestLayerErrors(t *testing.T) {
	runErrorCases(t, []errorCase{
		{
			name: "stripe with one leg",
			yaml: `
				exports:
				  - name: a
				    stack:
				      stripe:
				        chunk: 4KiB
				        legs:
				          - memory: {size: 1MiB}`,
			want: `test.yaml:7: stripe needs at least 2 legs, has 1`,
		},
		{
			name: "stripe with no legs",
			yaml: `
				exports:
				  - name: a
				    stack:
				      stripe:
				        chunk: 4KiB
				        legs: []`,
			want: `test.yaml:6: stripe needs at least 2 legs, has 0`,
		},
		{
			name: "stripe without legs key",
			yaml: `
				exports:
				  - name: a
				    stack:
				      stripe:
				        chunk: 4KiB`,
			want: `test.yaml:5: stripe needs "legs"`,
		},
		{
			name: "stripe leg instead of legs",
			yaml: `
				exports:
				  - name: a
				    stack:
				      stripe:
				        chunk: 4KiB
				        leg: {memory: {size: 1MiB}}`,
			want: "test.yaml:5: stripe needs \"legs\"\n" +
				`test.yaml:6: unknown key "leg" in stripe; stripe takes a list: write "legs:"`,
		},
		{
			name: "stripe chunk missing",
			yaml: `
				exports:
				  - name: a
				    stack:
				      stripe:
				        legs:
				          - memory: {size: 1MiB}
				          - memory: {size: 1MiB}`,
			want: `test.yaml:5: stripe needs "chunk"`,
		},
		{
			name: "stripe chunk zero",
			yaml: `
				exports:
				  - name: a
				    stack:
				      stripe:
				        chunk: 0
				        legs:
				          - memory: {size: 1MiB}
				          - memory: {size: 1MiB}`,
			want: `test.yaml:5: stripe chunk must be greater than zero`,
		},
		{
			name: "stripe chunk not a multiple of 512",
			yaml: `
				exports:
				  - name: a
				    stack:
				      stripe:
				        chunk: 1000
				        legs:
				          - memory: {size: 1MiB}
				          - memory: {size: 1MiB}`,
			want: `test.yaml:5: stripe chunk: 1000B is not a multiple of 512 bytes`,
		},
		{
			name: "stripe legs of different sizes",
			yaml: `
				exports:
				  - name: a
				    stack:
				      stripe:
				        chunk: 4KiB
				        legs:
				          - memory: {size: 1MiB}
				          - memory: {size: 1MiB}
				          - memory: {size: 2MiB}`,
			want: `test.yaml:9: stripe leg 3 is 2MiB but leg 1 (line 7) is 1MiB; the legs of a stripe must be the same size`,
		},
		{
			name: "stripe legs of different sizes, computed",
			// leg 1: linear 1MiB+1MiB = 2MiB; leg 2: split of 2MiB;
			// leg 3: stripe of 2 x (1MiB+512 rounded down to 4KiB) = 2MiB;
			// leg 4: stripe of 2 x 1MiB+4KiB = 2MiB+8KiB.
			yaml: `
				exports:
				  - name: a
				    stack:
				      stripe:
				        chunk: 4KiB
				        legs:
				          - linear:
				              legs:
				                - memory: {size: 1MiB}
				                - null: {size: 1MiB}
				          - split:
				              max_bytes: 64KiB
				              leg: {memory: {size: 2MiB}}
				          - stripe:
				              chunk: 4KiB
				              legs:
				                - memory: {size: 1049088}
				                - memory: {size: 1049088}
				          - stripe:
				              chunk: 4KiB
				              legs:
				                - memory: {size: 1052672}
				                - memory: {size: 1052672}`,
			want: `test.yaml:19: stripe leg 4 is 2056KiB but leg 1 (line 7) is 2MiB; the legs of a stripe must be the same size`,
		},
		{
			name: "stripe legs smaller than a chunk",
			yaml: `
				exports:
				  - name: a
				    stack:
				      stripe:
				        chunk: 64KiB
				        legs:
				          - memory: {size: 32KiB}
				          - memory: {size: 32KiB}`,
			want: `test.yaml:7: stripe legs are 32KiB, smaller than the 64KiB chunk; each leg must hold at least one chunk`,
		},
		{
			name: "linear with no legs",
			yaml: `
				exports:
				  - name: a
				    stack:
				      linear: {legs: []}`,
			want: `test.yaml:4: linear needs at least 1 leg, has 0`,
		},
		{
			name: "split with legs",
			yaml: `
				exports:
				  - name: a
				    stack:
				      split:
				        max_bytes: 4KiB
				        legs:
				          - memory: {size: 1MiB}`,
			want: "test.yaml:5: split needs \"leg\"\n" +
				`test.yaml:6: unknown key "legs" in split; split has exactly one leg: write "leg:" and a single stack node`,
		},
		{
			name: "split leg is a list",
			yaml: `
				exports:
				  - name: a
				    stack:
				      split:
				        max_bytes: 4KiB
				        leg:
				          - memory: {size: 1MiB}
				          - memory: {size: 1MiB}`,
			want: `test.yaml:7: split leg must be a single stack node, not a list; a split has exactly one leg`,
		},
		{
			name: "split without max_bytes",
			yaml: `
				exports:
				  - name: a
				    stack:
				      split:
				        leg: {memory: {size: 1MiB}}`,
			want: `test.yaml:5: split needs "max_bytes"`,
		},
		{
			name: "split max_bytes below 512",
			yaml: `
				exports:
				  - name: a
				    stack:
				      split:
				        max_bytes: 256
				        leg: {memory: {size: 1MiB}}`,
			want: `test.yaml:5: split max_bytes: 256B is not a multiple of 512 bytes`,
		},
		{
			name: "split max_bytes zero",
			yaml: `
				exports:
				  - name: a
				    stack:
				      split:
				        max_bytes: 0
				        leg: {memory: {size: 1MiB}}`,
			want: `test.yaml:5: split max_bytes must be greater than zero`,
		},
		{
			name: "split boundary not a multiple of 512",
			yaml: `
				exports:
				  - name: a
				    stack:
				      split:
				        max_bytes: 4KiB
				        boundary: 1000
				        leg: {memory: {size: 1MiB}}`,
			want: `test.yaml:6: split boundary: 1000B is not a multiple of 512 bytes (0: no boundary)`,
		},
		{
			name: "pool capacity zero",
			yaml: `
				exports:
				  - name: a
				    stack:
				      linear:
				        pool: {capacity: 0}
				        legs: [{memory: {size: 1MiB}}]`,
			want: `test.yaml:5: pool capacity: 0 is out of range; want 1 to 1048576 bios (absent: 1024)`,
		},
		{
			name: "pool capacity too large",
			yaml: `
				exports:
				  - name: a
				    stack:
				      linear:
				        pool:
				          capacity: 1048577
				        legs: [{memory: {size: 1MiB}}]`,
			want: `test.yaml:6: pool capacity: 1048577 is out of range; want 1 to 1048576 bios (absent: 1024)`,
		},
		{
			name: "pool capacity not a number",
			yaml: `
				exports:
				  - name: a
				    stack:
				      linear:
				        pool: {capacity: lots}
				        legs: [{memory: {size: 1MiB}}]`,
			want: `test.yaml:5: pool capacity must be a whole number, not "lots"`,
		},
		{
			name: "pool unknown key",
			yaml: `
				exports:
				  - name: a
				    stack:
				      linear:
				        pool: {capacity: 8, rescue: false}
				        legs: [{memory: {size: 1MiB}}]`,
			want: `test.yaml:5: unknown key "rescue" in linear pool (did you mean "rescuer"?)`,
		},
		{
			name: "pool rescuer not a bool",
			yaml: `
				exports:
				  - name: a
				    stack:
				      linear:
				        pool: {rescuer: off}
				        legs: [{memory: {size: 1MiB}}]`,
			want: `test.yaml:5: pool rescuer must be true or false, not "off"`,
		},
	})
}

// TestLeafErrors covers memory, null and sizes and durations in general.
func TestLeafErrors(t *testing.T) {
	runErrorCases(t, []errorCase{
		{
			name: "memory without size",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {chunk: 4KiB}`,
			want: `test.yaml:4: memory needs "size"`,
		},
		{
			name: "memory with nothing",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory:`,
			want: `test.yaml:4: memory needs "size"`,
		},
		{
			name: "memory size zero",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {size: 0}`,
			want: `test.yaml:4: memory size must be greater than zero`,
		},
		{
			name: "null size not a multiple of 512",
			yaml: `
				exports:
				  - name: a
				    stack:
				      null:
				        size: 1000`,
			want: `test.yaml:5: null size: 1000B is not a multiple of 512 bytes`,
		},
		{
			name: "negative size",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {size: -1}`,
			want: `test.yaml:4: memory size: -1: a size cannot be negative`,
		},
		{
			name: "negative size with unit",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {size: -1MiB}`,
			want: `test.yaml:4: memory size: "-1MiB": a size cannot be negative`,
		},
		{
			name: "unknown unit",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {size: 12XB}`,
			want: `test.yaml:4: memory size: "12XB": unknown unit "XB"; use B, KiB, MiB, GiB or TiB (K, M, G, T are the same binary units)`,
		},
		{
			name: "decimal unit",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {size: 1MB}`,
			want: `test.yaml:4: memory size: "1MB": decimal unit MB is not accepted; write MiB for 1048576 bytes, or the plain number of bytes for 1000000`,
		},
		{
			name: "fractional size",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {size: 1.5GiB}`,
			want: `test.yaml:4: memory size: "1.5GiB": a size is a whole number; use a smaller unit instead of a fraction (1.5GiB is 1536MiB)`,
		},
		{
			name: "size too large",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {size: 16777216TiB}`,
			want: `test.yaml:4: memory size: "16777216TiB": too large (more than 16 EiB)`,
		},
		{
			name: "export larger than NBD allows",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {size: 8388608TiB}`,
			want: `test.yaml:4: export "a" is 8388608TiB, more than NBD clients can address (8EiB less one byte)`,
		},
		{
			name: "memory chunk not a power of two",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {size: 1MiB, chunk: 6KiB}`,
			want: `test.yaml:4: memory chunk: 6KiB is not a power of two`,
		},
		{
			name: "memory chunk below a page",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory: {size: 1MiB, chunk: 2KiB}`,
			want: `test.yaml:4: memory chunk: 2KiB is smaller than 4KiB, a page`,
		},
		{
			name: "delay without unit",
			yaml: `
				exports:
				  - name: a
				    stack:
				      null: {size: 1MiB, delay: 5}`,
			want: `test.yaml:4: null delay: "5" is not a duration; want a number and a unit such as 10s, 1ms or 250us`,
		},
		{
			name: "negative delay",
			yaml: `
				exports:
				  - name: a
				    stack:
				      memory:
				        size: 1MiB
				        delay: -1ms`,
			want: `test.yaml:6: memory delay: -1ms: a duration cannot be negative`,
		},
	})
}

// TestExportErrors covers exports, listeners, metrics and limits.
func TestExportErrors(t *testing.T) {
	long := strings.Repeat("x", MaxStringLen+1)
	runErrorCases(t, []errorCase{
		{
			name: "no exports key",
			yaml: `
				listen:
				  - tcp: 127.0.0.1:10809`,
			want: `test.yaml:1: the configuration needs "exports"`,
		},
		{
			name: "no exports",
			yaml: `
				exports: []`,
			want: `test.yaml:1: exports is an empty list; a configuration needs at least one export`,
		},
		{
			name: "export without name",
			yaml: `
				exports:
				  - description: nameless
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: export needs "name"`,
		},
		{
			name: "empty name",
			yaml: `
				exports:
				  - name: ""
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: export name must not be empty (a client asking for "" gets the default export)`,
		},
		{
			name: "name too long",
			yaml: `
				exports:
				  - name: ` + long + `
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: export name is 4097 bytes long; NBD allows at most 4096`,
		},
		{
			name: "description with NUL",
			yaml: `
				exports:
				  - name: a
				    description: "a\0b"
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:3: description must not contain a NUL character`,
		},
		{
			name: "duplicate names",
			yaml: `
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}
				  - name: b
				    stack: {memory: {size: 1MiB}}
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:6: export name "a" is already used at line 2`,
		},
		{
			name: "two defaults",
			yaml: `
				exports:
				  - name: a
				    default: true
				    stack: {memory: {size: 1MiB}}
				  - name: b
				    default: true
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:6: export "b" cannot also be the default: "a" at line 3 already is`,
		},
		{
			name: "export without stack",
			yaml: `
				exports:
				  - name: a
				    read_only: true`,
			want: `test.yaml:2: export needs "stack"`,
		},
		{
			name: "tcp without port",
			yaml: `
				listen:
				  - tcp: localhost
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: tcp address "localhost": want host:port: missing port in address`,
		},
		{
			name: "tcp with a named port",
			yaml: `
				listen:
				  - tcp: localhost:nbd
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: tcp address "localhost:nbd": port "nbd" is not a number from 0 to 65535`,
		},
		{
			name: "tcp with a port out of range",
			yaml: `
				listen:
				  - tcp: ":65536"
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: tcp address ":65536": port "65536" is not a number from 0 to 65535`,
		},
		{
			name: "unquoted IPv6",
			yaml: `
				listen:
				  - tcp: [::1]:10809
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: did not find expected node content; quote an IPv6 address, as in tcp: "[::1]:10809"`,
		},
		{
			name: "unquoted IPv6 read as a list",
			yaml: `
				listen:
				  - tcp: [fe80::1]
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: tcp address must be a string; quote an IPv6 address, as in tcp: "[::1]:10809"`,
		},
		{
			name: "empty unix path",
			yaml: `
				listen:
				  - unix: ""
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: unix socket path must not be empty`,
		},
		{
			name: "unix path too long",
			yaml: `
				listen:
				  - unix: /` + strings.Repeat("s", 107) + `
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: unix socket path is 108 bytes long; Linux allows at most 107`,
		},
		{
			name: "unknown listener kind",
			yaml: `
				listen:
				  - tcp: 127.0.0.1:10809
				  - udp: 127.0.0.1:10809
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:3: unknown listener kind "udp" (did you mean "tcp"?)`,
		},
		{
			name: "listener with two kinds",
			yaml: `
				listen:
				  - {tcp: 127.0.0.1:10809, unix: /x}
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: a listener is a mapping with one key, tcp or unix, such as "- tcp: 127.0.0.1:10809"; got a mapping`,
		},
		{
			name: "listener listed twice",
			yaml: `
				listen:
				  - tcp: 127.0.0.1:10809
				  - tcp: 127.0.0.1:10809
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:3: listener tcp 127.0.0.1:10809 is already listed at line 2`,
		},
		{
			name: "no listeners",
			yaml: `
				listen: []
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:1: listen is an empty list; name at least one listener, or leave listen out for the default 127.0.0.1:10809`,
		},
		{
			name: "metrics address without port",
			yaml: `
				metrics:
				  address: nope
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: metrics address "nope": want host:port: missing port in address (or "off" to serve no metrics)`,
		},
		{
			name: "max_in_flight below what Linux sends",
			yaml: `
				limits:
				  max_in_flight: 64
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: max_in_flight: 64 is too small; the Linux client keeps up to 128 requests in flight on a connection, so the limit must be at least that`,
		},
		{
			name: "payload budget below one request",
			yaml: `
				limits:
				  payload_budget: 16MiB
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: payload_budget: 16MiB is too small; a client may send a single 32MiB request, so the budget must be at least that`,
		},
		{
			name: "negative max_connections",
			yaml: `
				limits:
				  max_connections: -1
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: max_connections: -1 is out of range; want 1 to 2147483647 (0 or absent: 1024)`,
		},
		{
			name: "malformed handshake_timeout",
			yaml: `
				limits:
				  handshake_timeout: 10 seconds
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: handshake_timeout: "10 seconds" is not a duration; want a number and a unit such as 10s, 1ms or 250us`,
		},
		{
			name: "reply_timeout below the deadline's renewal period",
			yaml: `
				limits:
				  reply_timeout: 1500ms
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: reply_timeout: 1.5s is too short; the server renews a connection's write deadline only once every 1s, so the timeout must be at least 2s`,
		},
		{
			name: "malformed reply_timeout",
			yaml: `
				limits:
				  reply_timeout: 3
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: reply_timeout: "3" is not a duration; want a number and a unit such as 10s, 1ms or 250us`,
		},
		{
			name: "connection_payload below one request",
			yaml: `
				limits:
				  connection_payload: 1MiB
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: connection_payload: 1MiB is too small; a client may send a single 32MiB request, so a connection must be able to hold at least that`,
		},
		{
			name: "connection_payload above the default budget",
			yaml: `
				limits:
				  connection_payload: 512MiB
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: connection_payload: 512MiB is more than payload_budget (256MiB, its default); it is one connection's share of the budget all connections hold together, so it cannot be larger than the budget`,
		},
		{
			name: "connection_payload above the budget given",
			yaml: `
				limits:
				  payload_budget: 64MiB
				  connection_payload: 96MiB
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:3: connection_payload: 96MiB is more than payload_budget (64MiB at line 2); it is one connection's share of the budget all connections hold together, so it cannot be larger than the budget`,
		},
		{
			// The budget's own mistake is reported, not again as the
			// share's.
			name: "connection_payload under a bad budget",
			yaml: `
				limits:
				  payload_budget: 1MiB
				  connection_payload: 64MiB
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: payload_budget: 1MiB is too small; a client may send a single 32MiB request, so the budget must be at least that`,
		},
		{
			name: "negative max_connections_per_client",
			yaml: `
				limits:
				  max_connections: 100
				  max_connections_per_client: -1
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:3: max_connections_per_client: -1 is out of range; want 1 to 100, the max_connections in effect (0 or absent: 25)`,
		},
		{
			name: "max_connections_per_client above max_connections given",
			yaml: `
				limits:
				  max_connections_per_client: 11
				  max_connections: 10
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: max_connections_per_client: 11 is more than max_connections (10 at line 3); it is one client's share of the connections the server allows in all, so it cannot be larger than that`,
		},
		{
			name: "max_connections_per_client above the default max_connections",
			yaml: `
				limits:
				  max_connections_per_client: 2000
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: max_connections_per_client: 2000 is more than max_connections (1024, its default); it is one client's share of the connections the server allows in all, so it cannot be larger than that`,
		},
		{
			name: "max_connections_per_client under a bad max_connections",
			yaml: `
				limits:
				  max_connections: -5
				  max_connections_per_client: 2000
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: max_connections: -5 is out of range; want 1 to 2147483647 (0 or absent: 1024)`,
		},
		{
			name: "max_connections_per_client not a number",
			yaml: `
				limits:
				  max_connections_per_client: many
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: max_connections_per_client must be a whole number, not "many"`,
		},
		{
			name: "misspelt per-client limit",
			yaml: `
				limits:
				  max_connection_per_client: 8
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: unknown key "max_connection_per_client" in limits (did you mean "max_connections_per_client"?)`,
		},
		{
			name: "unknown limit",
			yaml: `
				limits:
				  max_inflight: 256
				exports:
				  - name: a
				    stack: {memory: {size: 1MiB}}`,
			want: `test.yaml:2: unknown key "max_inflight" in limits (did you mean "max_in_flight"?)`,
		},
	})
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
		`test.yaml:14: unknown kind "disk" (want split, stripe, linear, memory, file, null)`,
	}
	_, err := Parse("test.yaml", []byte(src))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", err, strings.Join(want, "\n"))
	}
}
