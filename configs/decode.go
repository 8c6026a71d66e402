package configs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/stackd/stackd/stack"
)

// decoder walks the YAML node tree, building a Config and collecting every
// problem it finds with the line it is on. It keeps going after a problem
// so that one run of `stackd check` reports them all; a value that could
// not be decoded is left zero, and checks that depend on it are skipped
// rather than reported twice.
type decoder struct {
	file string
	// dir anchors relative file paths; "" means the working directory.
	dir  string
	errs []*Error
	// files lists each file target's first use, so that a file backs at
	// most one leg in the whole configuration.
	files []fileUse
}

type fileUse struct {
	path   string
	line   int
	export string
	stat   fileStat
}

func newDecoder(source string) *decoder {
	d := &decoder{file: source}
	if !strings.HasPrefix(source, "<") {
		d.dir = filepath.Dir(source)
	}
	return d
}

func (d *decoder) errorAt(line int, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	d.errorAt(n.Line, format, args...)
}

func (d *decoder) err() error {
	if len(d.errs) == 0 {
		return nil
	}
	sort.SliceStable(d.errs, func(i, j int) bool { return d.errs[i].Line < d.errs[j].Line })
	errs := make([]error, len(d.errs))
	for i, e := range d.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// config decodes a whole file.
func (d *decoder) config(data []byte) *Config {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			d.errorAt(1, "the configuration is empty; it needs at least an exports list")
		} else {
			d.yamlError(err, data)
		}
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		line := extra.Line
		if len(extra.Content) > 0 {
			line = extra.Content[0].Line
		}
		d.errorAt(line, "a second YAML document; a configuration is a single document")
	case err != io.EOF:
		d.yamlError(err, data)
		return nil
	}
	if len(doc.Content) == 0 {
		d.errorAt(1, "the configuration is empty; it needs at least an exports list")
		return nil
	}

	c := &Config{
		Listeners:      []Listener{{Network: "tcp", Address: DefaultListenAddress}},
		MetricsAddress: DefaultMetricsAddress,
	}
	root := doc.Content[0]
	f := d.mapping(root, 0, "the configuration", "listen", "metrics", "limits", "exports")
	if f == nil {
		return c
	}
	if v := f.val["listen"]; v != nil {
		c.Listeners = d.listeners(v)
	}
	if v := f.val["metrics"]; v != nil {
		c.MetricsAddress = d.metrics(v, f.key["metrics"].Line)
	}
	if v := f.val["limits"]; v != nil {
		c.Limits = d.limits(v, f.key["limits"].Line)
	}
	if v := f.need(d, "exports"); v != nil {
		c.Exports = d.exports(v)
	}
	return c
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
var yamlAnchor = regexp.MustCompile(`^yaml: unknown anchor '(.*)' referenced$`)

// unquotedIPv6 matches a line on which YAML took an IPv6 address in
// brackets for the start of a list.
var unquotedIPv6 = regexp.MustCompile(`^\s*(-\s*)?(tcp|address):\s*\[[0-9a-fA-F]*:`)

// lineOf returns the text of a 1-based line of data.
func lineOf(data []byte, line int) []byte {
	for ; line > 1; line-- {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return nil
		}
		data = data[i+1:]
	}
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		data = data[:i]
	}
	return data
}

// yamlError turns a yaml.v3 syntax error into an *Error with a line.
func (d *decoder) yamlError(err error, data []byte) {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		// yaml.v3 numbers parser (as opposed to scanner) errors from 0:
		// it reports the 0-based line of the construct that failed.
		if strings.HasPrefix(m[2], "did not find expected ") && !strings.Contains(m[2], "expected whitespace") &&
			!strings.Contains(m[2], "expected comment") && !strings.Contains(m[2], "expected alphabetic") {
			line++
		}
		msg := m[2]
		if unquotedIPv6.Match(lineOf(data, line)) {
			msg += "; quote an IPv6 address, as in tcp: \"[::1]:10809\""
		}
		d.errorAt(line, "%s", msg)
		return
	}
	if m := yamlAnchor.FindStringSubmatch(msg); m != nil {
		// The composer reports no line; find the alias in the text.
		line := 1
		if i := bytes.Index(data, []byte("*"+m[1])); i >= 0 {
			line += bytes.Count(data[:i], []byte("\n"))
		}
		d.errorAt(line, "unknown anchor %q referenced", m[1])
		return
	}
	// yaml.v3 leaves out the line when the problem is on the first one.
	d.errorAt(1, "%s", strings.TrimPrefix(msg, "yaml: "))
}

// fields is a decoded YAML mapping whose keys have been checked.
type fields struct {
	what string
	// line to report a missing key at: the mapping's own.
	line int
	key  map[string]*yaml.Node
	val  map[string]*yaml.Node
}

// need returns the value of a required key, reporting its absence.
func (f *fields) need(d *decoder, key string) *yaml.Node {
	if v := f.val[key]; v != nil {
		return v
	}
	d.errorAt(f.line, "%s needs %q", f.what, key)
	return nil
}

// keyHints explain unknown keys that are a likely confusion rather than a
// typo.
var keyHints = map[string]string{
	"split.legs":  `split has exactly one leg: write "leg:" and a single stack node`,
	"stripe.leg":  `stripe takes a list: write "legs:"`,
	"linear.leg":  `linear takes a list: write "legs:"`,
	"export.size": `an export's size is its stack's size; give sizes to the leaf targets`,
}

// mapping checks that n is a mapping (or null, an empty one: "memory:"
// with nothing after it) whose keys are all known, each at most once.
// keyLine is the line of the key n is the value of, for a null n. It
// returns nil, having reported why, if n is not a mapping.
func (d *decoder) mapping(n *yaml.Node, keyLine int, what string, known ...string) *fields {
	n = deref(n)
	f := &fields{what: what, line: n.Line, key: map[string]*yaml.Node{}, val: map[string]*yaml.Node{}}
	if isNull(n) {
		if keyLine > 0 {
			f.line = keyLine
		}
		return f
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, "%s must be a mapping of keys to values, not %s", what, describe(n))
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, "%s: a key must be a plain name, not %s", what, describe(k))
			continue
		}
		name := k.Value
		switch {
		case name == "<<":
			d.errorf(k, "%s: merge keys (<<) are not supported; repeat the keys or use an alias for the whole value", what)
		case !slices.Contains(known, name):
			d.errorf(k, "unknown key %q in %s%s", name, what, suggest(name, known, keyHints[what+"."+name]))
		case f.key[name] != nil:
			d.errorf(k, "%s: duplicate key %q (first at line %d)", what, name, f.key[name].Line)
		default:
			f.key[name], f.val[name] = k, v
		}
	}
	return f
}

// suggest returns a parenthesised hint for an unknown name: the given
// hint, else the closest known name, else the list of known names.
func suggest(name string, known []string, hint string) string {
	if hint != "" {
		return "; " + hint
	}
	best, bestDist := "", 3
	for _, k := range known {
		if dist := editDistance(strings.ToLower(name), k); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return " (want " + strings.Join(known, ", ") + ")"
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what a node is, for "want X, not Y" messages.
func describe(n *yaml.Node) string {
	n = deref(n)
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "empty"
		case "!!bool":
			return n.Value
		case "!!int", "!!float":
			return "the number " + n.Value
		default:
			return strconv.Quote(n.Value)
		}
	}
	return "an unexpected YAML node"
}

// str decodes a string. Numbers and booleans are refused so that a value
// such as `name: 1e3` or `path: no` is not silently read as text.
func (d *decoder) str(n *yaml.Node, what string) (string, bool) {
	n = deref(n)
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		hint := ""
		if n.Kind == yaml.ScalarNode && !isNull(n) {
			hint = " (quote it to make it a string)"
		}
		d.errorf(n, "%s must be a string, not %s%s", what, describe(n), hint)
		return "", false
	}
	return n.Value, true
}

func (d *decoder) boolean(n *yaml.Node, what string) (bool, bool) {
	n = deref(n)
	var b bool
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
		d.errorf(n, "%s must be true or false, not %s", what, describe(n))
		return false, false
	}
	return b, true
}

func (d *decoder) integer(n *yaml.Node, what string) (int64, bool) {
	n = deref(n)
	var i int64
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil {
		d.errorf(n, "%s must be a whole number, not %s", what, describe(n))
		return 0, false
	}
	return i, true
}

// size decodes a size: a YAML integer (bytes) or a string ParseSize
// accepts.
func (d *decoder) size(n *yaml.Node, what string) (uint64, bool) {
	n = deref(n)
	if n.Kind == yaml.ScalarNode {
		switch n.ShortTag() {
		case "!!int":
			var u uint64
			if err := n.Decode(&u); err == nil {
				return u, true
			}
			var i int64
			if err := n.Decode(&i); err == nil && i < 0 {
				d.errorf(n, "%s: %s: a size cannot be negative", what, n.Value)
				return 0, false
			}
			d.errorf(n, "%s: %s is too large", what, n.Value)
			return 0, false
		case "!!str", "!!float":
			s, err := ParseSize(n.Value)
			if err != nil {
				d.errorf(n, "%s: %v", what, err)
				return 0, false
			}
			return s, true
		}
	}
	d.errorf(n, "%s must be a size such as 4096 or 256MiB, not %s", what, describe(n))
	return 0, false
}

// duration decodes a non-negative time.ParseDuration string.
func (d *decoder) duration(n *yaml.Node, what string) (time.Duration, bool) {
	n = deref(n)
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!str" && n.ShortTag() != "!!int") {
		d.errorf(n, "%s must be a duration such as 10s or 1ms, not %s", what, describe(n))
		return 0, false
	}
	t, err := time.ParseDuration(n.Value)
	if err != nil {
		d.errorf(n, "%s: %q is not a duration; want a number and a unit such as 10s, 1ms or 250us", what, n.Value)
		return 0, false
	}
	if t < 0 {
		d.errorf(n, "%s: %s: a duration cannot be negative", what, n.Value)
		return 0, false
	}
	return t, true
}

// sequence checks that n is a list.
func (d *decoder) sequence(n *yaml.Node, what string) ([]*yaml.Node, bool) {
	n = deref(n)
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, "%s must be a list (lines starting with \"- \"), not %s", what, describe(n))
		return nil, false
	}
	return n.Content, true
}

// maxUnixPath is the longest socket path Linux accepts: sun_path holds 108
// bytes including the terminating NUL.
const maxUnixPath = 107

func (d *decoder) listeners(n *yaml.Node) []Listener {
	items, ok := d.sequence(n, "listen")
	if !ok {
		return nil
	}
	if len(items) == 0 {
		d.errorf(n, "listen is an empty list; name at least one listener, or leave listen out for the default %s", DefaultListenAddress)
		return nil
	}
	var ls []Listener
	seen := map[Listener]int{}
	for _, item := range items {
		item = deref(item)
		if item.Kind != yaml.MappingNode || len(item.Content) != 2 {
			d.errorf(item, "a listener is a mapping with one key, tcp or unix, such as \"- tcp: 127.0.0.1:10809\"; got %s", describe(item))
			continue
		}
		k, v := deref(item.Content[0]), item.Content[1]
		l := Listener{Network: k.Value}
		switch k.Value {
		case "tcp":
			if deref(v).Kind == yaml.SequenceNode {
				d.errorf(v, "tcp address must be a string; quote an IPv6 address, as in tcp: \"[::1]:10809\"")
				continue
			}
			addr, ok := d.str(v, "tcp address")
			if !ok {
				continue
			}
			if err := checkHostPort(addr); err != nil {
				d.errorf(v, "tcp address %q: %v", addr, err)
				continue
			}
			l.Address = addr
		case "unix":
			path, ok := d.str(v, "unix socket path")
			if !ok {
				continue
			}
			switch {
			case path == "":
				d.errorf(v, "unix socket path must not be empty")
				continue
			case len(path) > maxUnixPath:
				d.errorf(v, "unix socket path is %d bytes long; Linux allows at most %d", len(path), maxUnixPath)
				continue
			}
			l.Address = path
		default:
			d.errorf(k, "unknown listener kind %q%s", k.Value, suggest(k.Value, []string{"tcp", "unix"}, ""))
			continue
		}
		if first, dup := seen[l]; dup {
			d.errorf(v, "listener %s %s is already listed at line %d", l.Network, l.Address, first)
			continue
		}
		seen[l] = v.Line
		ls = append(ls, l)
	}
	return ls
}

// checkHostPort accepts host:port with a numeric port; the host may be
// empty (all interfaces).
func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return fmt.Errorf("want host:port: %s", ae.Err)
		}
		return err
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

func (d *decoder) metrics(n *yaml.Node, keyLine int) string {
	f := d.mapping(n, keyLine, "metrics", "address")
	if f == nil {
		return ""
	}
	v := f.val["address"]
	if v == nil {
		return DefaultMetricsAddress
	}
	if isNull(deref(v)) {
		return ""
	}
	addr, ok := d.str(v, "metrics address")
	if !ok || addr == "" || addr == "off" {
		return ""
	}
	if err := checkHostPort(addr); err != nil {
		d.errorf(v, "metrics address %q: %v (or \"off\" to serve no metrics)", addr, err)
		return ""
	}
	return addr
}

func (d *decoder) limits(n *yaml.Node, keyLine int) Limits {
	var l Limits
	f := d.mapping(n, keyLine, "limits", "max_connections", "max_connections_per_client", "max_in_flight",
		"payload_budget", "connection_payload", "handshake_timeout", "reply_timeout")
	if f == nil {
		return l
	}
	// maxConnsOK and budgetOK say whether the limits that bound the
	// per-client and per-connection shares are known (given and valid,
	// or absent: the default); if not, the share is not checked against
	// them, so that one mistake is reported once.
	maxConnsOK, budgetOK := true, true
	if v := f.val["max_connections"]; v != nil {
		maxConnsOK = false
		if i, ok := d.integer(v, "max_connections"); ok {
			if i < 0 || i > math.MaxInt32 {
				d.errorf(v, "max_connections: %d is out of range; want 1 to %d (0 or absent: %d)", i, math.MaxInt32, DefaultMaxConnections)
			} else {
				l.MaxConnections = int(i)
				maxConnsOK = true
			}
		}
	}
	if v := f.val["max_in_flight"]; v != nil {
		if i, ok := d.integer(v, "max_in_flight"); ok {
			switch {
			case i == 0:
			case i < MinMaxInFlight:
				d.errorf(v, "max_in_flight: %d is too small; the Linux client keeps up to %d requests in flight on a connection, so the limit must be at least that", i, MinMaxInFlight)
			case i > math.MaxInt32:
				d.errorf(v, "max_in_flight: %d is too large", i)
			default:
				l.MaxInFlight = int(i)
			}
		}
	}
	if v := f.val["payload_budget"]; v != nil {
		budgetOK = false
		if s, ok := d.size(v, "payload_budget"); ok {
			switch {
			case s > math.MaxInt64:
				d.errorf(v, "payload_budget: %s is too large", FormatSize(s))
			case s != 0 && s < MinPayloadBudget:
				d.errorf(v, "payload_budget: %s is too small; a client may send a single %s request, so the budget must be at least that", FormatSize(s), FormatSize(MinPayloadBudget))
			default:
				l.PayloadBudget = int64(s)
				budgetOK = true
			}
		}
	}
	if v := f.val["handshake_timeout"]; v != nil {
		if t, ok := d.duration(v, "handshake_timeout"); ok {
			l.HandshakeTimeout = t
		}
	}
	if v := f.val["reply_timeout"]; v != nil {
		if t, ok := d.duration(v, "reply_timeout"); ok {
			if t != 0 && t < MinReplyTimeout {
				d.errorf(v, "reply_timeout: %s is too short; the server renews a connection's write deadline only once every %s, so the timeout must be at least %s", t, MinReplyTimeout/2, MinReplyTimeout)
			} else {
				l.ReplyTimeout = t
			}
		}
	}
	// The shares are checked against the limits in effect: as given, or
	// their defaults.
	effective := l.WithDefaults()
	if v := f.val["connection_payload"]; v != nil {
		if s, ok := d.size(v, "connection_payload"); ok {
			budget := uint64(effective.PayloadBudget)
			switch {
			case s == 0:
			case s < MinConnectionPayload:
				d.errorf(v, "connection_payload: %s is too small; a client may send a single %s request, so a connection must be able to hold at least that", FormatSize(s), FormatSize(MinConnectionPayload))
			case !budgetOK:
			case s > budget:
				d.errorf(v, "connection_payload: %s is more than payload_budget (%s); it is one connection's share of the budget all connections hold together, so it cannot be larger than the budget",
					FormatSize(s), inEffect(FormatSize(budget), l.PayloadBudget != 0, f.val["payload_budget"]))
			default:
				l.ConnectionPayload = int64(s)
			}
		}
	}
	if v := f.val["max_connections_per_client"]; v != nil {
		if i, ok := d.integer(v, "max_connections_per_client"); ok {
			maxConns := int64(effective.MaxConnections)
			switch {
			case i == 0:
			case i < 0 && maxConnsOK:
				d.errorf(v, "max_connections_per_client: %d is out of range; want 1 to %d, the max_connections in effect (0 or absent: %d)", i, maxConns, effective.MaxConnectionsPerClient)
			case i < 0:
				d.errorf(v, "max_connections_per_client: %d is out of range; want 1 to max_connections", i)
			case !maxConnsOK:
			case i > maxConns:
				d.errorf(v, "max_connections_per_client: %d is more than max_connections (%s); it is one client's share of the connections the server allows in all, so it cannot be larger than that",
					i, inEffect(strconv.FormatInt(maxConns, 10), l.MaxConnections != 0, f.val["max_connections"]))
			default:
				l.MaxConnectionsPerClient = int(i)
			}
		}
	}
	return l
}

// inEffect describes a limit's value in effect, for a message about a
// share it bounds: where it was set (n), or that it is the default.
func inEffect(value string, set bool, n *yaml.Node) string {
	if set {
		return fmt.Sprintf("%s at line %d", value, n.Line)
	}
	return value + ", its default"
}

// exportCtx is what checks deep in a stack need to know of its export.
type exportCtx struct {
	name     string
	readOnly bool
}

func (d *decoder) exports(n *yaml.Node) []Export {
	items, ok := d.sequence(n, "exports")
	if !ok {
		return nil
	}
	if len(items) == 0 {
		d.errorf(n, "exports is an empty list; a configuration needs at least one export")
		return nil
	}
	var (
		exports      []Export
		names        = map[string]int{}
		defaultName  string
		defaultLine  int
		anyDefaulted bool
	)
	for _, item := range items {
		f := d.mapping(item, 0, "export", "name", "description", "default", "read_only", "stack")
		if f == nil {
			continue
		}
		var e Export
		if v := f.need(d, "name"); v != nil {
			if name, ok := d.str(v, "export name"); ok {
				switch {
				case name == "":
					d.errorf(v, "export name must not be empty (a client asking for \"\" gets the default export)")
				case d.checkString(v, "export name", name):
					if first, dup := names[name]; dup {
						d.errorf(v, "export name %q is already used at line %d", name, first)
					} else {
						names[name] = v.Line
					}
				}
				e.Name = name
			}
		}
		if v := f.val["description"]; v != nil {
			if desc, ok := d.str(v, "description"); ok && d.checkString(v, "description", desc) {
				e.Description = desc
			}
		}
		if v := f.val["read_only"]; v != nil {
			e.ReadOnly, _ = d.boolean(v, "read_only")
		}
		if v := f.val["default"]; v != nil {
			anyDefaulted = true
			e.Default, _ = d.boolean(v, "default")
			if e.Default {
				if defaultLine != 0 {
					d.errorf(v, "export %q cannot also be the default: %q at line %d already is", e.Name, defaultName, defaultLine)
					e.Default = false
				} else {
					defaultName, defaultLine = e.Name, v.Line
				}
			}
		}
		if v := f.need(d, "stack"); v != nil {
			spec, size, known := d.node(v, f.key["stack"].Line, "stack", &exportCtx{name: e.Name, readOnly: e.ReadOnly})
			if known && size > math.MaxInt64 {
				d.errorf(v, "export %q is %s, more than NBD clients can address (8EiB less one byte)", e.Name, FormatSize(size))
			}
			e.Stack = spec
		}
		exports = append(exports, e)
	}
	if len(exports) == 1 && !anyDefaulted {
		exports[0].Default = true
	}
	return exports
}

// checkString applies the NBD protocol's rules for strings.
func (d *decoder) checkString(n *yaml.Node, what, s string) bool {
	switch {
	case len(s) > MaxStringLen:
		d.errorf(n, "%s is %d bytes long; NBD allows at most %d", what, len(s), MaxStringLen)
	case strings.ContainsRune(s, 0):
		d.errorf(n, "%s must not contain a NUL character", what)
	case !utf8.ValidString(s):
		d.errorf(n, "%s must be UTF-8", what)
	default:
		return true
	}
	return false
}

var kinds = []string{stack.KindSplit, stack.KindStripe, stack.KindLinear, stack.KindMemory, stack.KindFile, stack.KindNull}

// node decodes a stack node: a mapping with exactly one key, its kind.
// keyLine is the line of the key n is the value of ("stack:", "leg:"),
// what names it in messages. It returns the Spec, the node's size in bytes
// and whether that size is known: false after a problem below, so that the
// layers above skip the checks that need it.
func (d *decoder) node(n *yaml.Node, keyLine int, what string, ex *exportCtx) (stack.Spec, uint64, bool) {
	var spec stack.Spec
	m := deref(n)
	if m.Kind != yaml.MappingNode {
		line := n.Line
		if isNull(m) && keyLine > 0 {
			line = keyLine
		}
		d.errorAt(line, "%s must be a stack node, a mapping with one key naming its kind such as \"memory: {size: 1GiB}\"; got %s", what, describe(m))
		return spec, 0, false
	}
	switch len(m.Content) / 2 {
	case 0:
		d.errorf(m, "%s has no kind; want one of %s", what, strings.Join(kinds, ", "))
		return spec, 0, false
	case 1:
	default:
		var names []string
		for i := 0; i < len(m.Content); i += 2 {
			names = append(names, deref(m.Content[i]).Value)
		}
		d.errorf(m, "%s has %d keys (%s); a stack node has exactly one, its kind (put legs under \"leg:\" or \"legs:\")",
			what, len(names), strings.Join(names, ", "))
		return spec, 0, false
	}
	k, v := deref(m.Content[0]), m.Content[1]
	switch k.Value {
	case stack.KindSplit:
		return d.split(v, k.Line, ex)
	case stack.KindStripe:
		return d.stripe(v, k.Line, ex)
	case stack.KindLinear:
		return d.linear(v, k.Line, ex)
	case stack.KindMemory:
		return d.memory(v, k.Line)
	case stack.KindNull:
		return d.null(v, k.Line)
	case stack.KindFile:
		return d.fileNode(v, k.Line, ex)
	}
	d.errorf(k, "unknown kind %q%s", k.Value, suggest(k.Value, kinds, ""))
	return spec, 0, false
}

// blockSize is the unit of NBD I/O stackd serves: offsets, lengths and the
// sizes and boundaries of layers are multiples of it.
const blockSize = 512

// minMemoryChunk is the smallest memory allocation chunk: a page.
const minMemoryChunk = 4 << 10

func (d *decoder) pool(f *fields) stack.PoolSpec {
	var p stack.PoolSpec
	v := f.val["pool"]
	if v == nil {
		return p
	}
	pf := d.mapping(v, f.key["pool"].Line, f.what+" pool", "capacity", "rescuer")
	if pf == nil {
		return p
	}
	if c := pf.val["capacity"]; c != nil {
		if i, ok := d.integer(c, "pool capacity"); ok {
			if i < 1 || i > MaxPoolCapacity {
				d.errorf(c, "pool capacity: %d is out of range; want 1 to %d bios (absent: %d)", i, MaxPoolCapacity, stack.DefaultPoolCapacity)
			} else {
				p.Capacity = int(i)
			}
		}
	}
	if r := pf.val["rescuer"]; r != nil {
		if on, ok := d.boolean(r, "pool rescuer"); ok {
			p.NoRescuer = !on
		}
	}
	return p
}

// blocks decodes an optional size that must be a positive multiple of
// 512, reporting "KIND KEY: …".
func (d *decoder) blocks(f *fields, key string, required bool) (uint64, bool) {
	what := f.what + " " + key
	var v *yaml.Node
	if required {
		v = f.need(d, key)
	} else {
		v = f.val[key]
	}
	if v == nil {
		return 0, !required
	}
	s, ok := d.size(v, what)
	switch {
	case !ok:
		return 0, false
	case s == 0:
		d.errorf(v, "%s must be greater than zero", what)
		return 0, false
	case s%blockSize != 0:
		d.errorf(v, "%s: %s is not a multiple of %d bytes", what, FormatSize(s), blockSize)
		return 0, false
	}
	return s, true
}

func (d *decoder) split(n *yaml.Node, keyLine int, ex *exportCtx) (stack.Spec, uint64, bool) {
	spec := stack.Spec{Kind: stack.KindSplit}
	f := d.mapping(n, keyLine, "split", "max_bytes", "boundary", "pool", "leg")
	if f == nil {
		return spec, 0, false
	}
	spec.MaxBytes, _ = d.blocks(f, "max_bytes", true)
	if v := f.val["boundary"]; v != nil {
		// 0 is allowed: no boundary.
		if b, ok := d.size(v, "split boundary"); ok {
			if b%blockSize != 0 {
				d.errorf(v, "split boundary: %s is not a multiple of %d bytes (0: no boundary)", FormatSize(b), blockSize)
			} else {
				spec.Boundary = b
			}
		}
	}
	spec.Pool = d.pool(f)
	v := f.need(d, "leg")
	if v == nil {
		return spec, 0, false
	}
	if deref(v).Kind == yaml.SequenceNode {
		d.errorf(v, "split leg must be a single stack node, not a list; a split has exactly one leg")
		return spec, 0, false
	}
	leg, size, known := d.node(v, f.key["leg"].Line, "split leg", ex)
	spec.Legs = []stack.Spec{leg}
	return spec, size, known
}

// legs decodes a layer's list of legs. It returns their specs, sizes, the
// node of each leg (for messages) and whether every size is known.
func (d *decoder) legs(f *fields, min int, ex *exportCtx) ([]stack.Spec, []uint64, []*yaml.Node, bool) {
	v := f.need(d, "legs")
	if v == nil {
		return nil, nil, nil, false
	}
	items, ok := d.sequence(v, f.what+" legs")
	if !ok {
		return nil, nil, nil, false
	}
	if len(items) < min {
		noun := "legs"
		if min == 1 {
			noun = "leg"
		}
		d.errorAt(listLine(v, f.key["legs"].Line), "%s needs at least %d %s, has %d", f.what, min, noun, len(items))
		return nil, nil, nil, false
	}
	specs := make([]stack.Spec, len(items))
	sizes := make([]uint64, len(items))
	allKnown := true
	for i, item := range items {
		var known bool
		specs[i], sizes[i], known = d.node(item, 0, fmt.Sprintf("%s leg %d", f.what, i+1), ex)
		allKnown = allKnown && known
	}
	return specs, sizes, items, allKnown
}

// listLine is where to report a problem with a list as a whole: its
// first line, or its key's when it is empty ("legs: []").
func listLine(v *yaml.Node, keyLine int) int {
	if v = deref(v); len(v.Content) == 0 || v.Style&yaml.FlowStyle != 0 {
		return keyLine
	}
	return v.Line
}

func (d *decoder) stripe(n *yaml.Node, keyLine int, ex *exportCtx) (stack.Spec, uint64, bool) {
	spec := stack.Spec{Kind: stack.KindStripe}
	f := d.mapping(n, keyLine, "stripe", "chunk", "pool", "legs")
	if f == nil {
		return spec, 0, false
	}
	chunk, chunkOK := d.blocks(f, "chunk", true)
	spec.Chunk = chunk
	spec.Pool = d.pool(f)
	legs, sizes, nodes, known := d.legs(f, 2, ex)
	spec.Legs = legs
	if !known || !chunkOK {
		return spec, 0, false
	}
	for i := 1; i < len(sizes); i++ {
		if sizes[i] != sizes[0] {
			d.errorf(nodes[i], "stripe leg %d is %s but leg 1 (line %d) is %s; the legs of a stripe must be the same size",
				i+1, FormatSize(sizes[i]), nodes[0].Line, FormatSize(sizes[0]))
			return spec, 0, false
		}
	}
	if sizes[0] < chunk {
		d.errorf(nodes[0], "stripe legs are %s, smaller than the %s chunk; each leg must hold at least one chunk",
			FormatSize(sizes[0]), FormatSize(chunk))
		return spec, 0, false
	}
	per := sizes[0] - sizes[0]%chunk
	total, overflow := mulOverflows(per, uint64(len(sizes)))
	if overflow {
		d.errorf(nodes[0], "stripe is larger than 16EiB")
		return spec, 0, false
	}
	return spec, total, true
}

func mulOverflows(a, b uint64) (uint64, bool) {
	if a != 0 && b > math.MaxUint64/a {
		return 0, true
	}
	return a * b, false
}

func (d *decoder) linear(n *yaml.Node, keyLine int, ex *exportCtx) (stack.Spec, uint64, bool) {
	spec := stack.Spec{Kind: stack.KindLinear}
	f := d.mapping(n, keyLine, "linear", "pool", "legs")
	if f == nil {
		return spec, 0, false
	}
	spec.Pool = d.pool(f)
	legs, sizes, nodes, known := d.legs(f, 1, ex)
	spec.Legs = legs
	if !known {
		return spec, 0, false
	}
	var total uint64
	for i, s := range sizes {
		if total+s < total {
			d.errorf(nodes[i], "linear is larger than 16EiB")
			return spec, 0, false
		}
		total += s
	}
	return spec, total, true
}

func (d *decoder) delay(f *fields) time.Duration {
	if v := f.val["delay"]; v != nil {
		t, _ := d.duration(v, f.what+" delay")
		return t
	}
	return 0
}

func (d *decoder) memory(n *yaml.Node, keyLine int) (stack.Spec, uint64, bool) {
	spec := stack.Spec{Kind: stack.KindMemory}
	f := d.mapping(n, keyLine, "memory", "size", "chunk", "delay")
	if f == nil {
		return spec, 0, false
	}
	size, ok := d.blocks(f, "size", true)
	spec.Size = size
	if v := f.val["chunk"]; v != nil {
		if c, good := d.size(v, "memory chunk"); good {
			switch {
			case c&(c-1) != 0 || c == 0:
				d.errorf(v, "memory chunk: %s is not a power of two", FormatSize(c))
			case c < minMemoryChunk:
				d.errorf(v, "memory chunk: %s is smaller than %s, a page", FormatSize(c), FormatSize(minMemoryChunk))
			default:
				spec.Chunk = c
			}
		}
	}
	spec.Delay = d.delay(f)
	return spec, size, ok
}

func (d *decoder) null(n *yaml.Node, keyLine int) (stack.Spec, uint64, bool) {
	spec := stack.Spec{Kind: stack.KindNull}
	f := d.mapping(n, keyLine, "null", "size", "delay")
	if f == nil {
		return spec, 0, false
	}
	size, ok := d.blocks(f, "size", true)
	spec.Size = size
	spec.Delay = d.delay(f)
	return spec, size, ok
}
