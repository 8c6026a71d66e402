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

	"github.com/stackd/stackd/settings"
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
	// host is shared by the stacks of every export: a file backs at
	// most one leg in the whole configuration.
	host stack.Host
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

// add records the problems of a settings decode.
func (d *decoder) add(err error) {
	var l settings.Errors
	if errors.As(err, &l) {
		for _, e := range l {
			d.errorAt(e.Line, "%s", e.Msg)
		}
	}
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
	"export.size": `an export's size is its stack's size; give sizes to the leaf targets`,
}

// mapping checks that n is a mapping (or null, an empty one: "memory:"
// with nothing after it) whose keys are all known, each at most once.
// keyLine is the line of the key n is the value of, for a null n. It
// returns nil, having reported why, if n is not a mapping.
func (d *decoder) mapping(n *yaml.Node, keyLine int, what string, known ...string) *fields {
	n = deref(n)
	f := &fields{what: what, line: n.Line, key: map[string]*yaml.Node{}, val: map[string]*yaml.Node{}}
	if settings.IsNull(n) {
		if keyLine > 0 {
			f.line = keyLine
		}
		return f
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, "%s must be a mapping of keys to values, not %s", what, settings.Describe(n))
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, "%s: a key must be a plain name, not %s", what, settings.Describe(k))
			continue
		}
		name := k.Value
		switch {
		case name == "<<":
			d.errorf(k, "%s: merge keys (<<) are not supported; repeat the keys or use an alias for the whole value", what)
		case !slices.Contains(known, name):
			d.errorf(k, "unknown key %q in %s%s", name, what, settings.Suggest(name, known, keyHints[what+"."+name]))
		case f.key[name] != nil:
			d.errorf(k, "%s: duplicate key %q (first at line %d)", what, name, f.key[name].Line)
		default:
			f.key[name], f.val[name] = k, v
		}
	}
	return f
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// value decodes n into v, one of package settings' value types, naming
// its problem what.
func (d *decoder) value(n *yaml.Node, what string, v any) bool {
	err := settings.Named(n, 0, what, v)
	d.add(err)
	return err == nil
}

func (d *decoder) str(n *yaml.Node, what string) (string, bool) {
	var v settings.String
	ok := d.value(n, what, &v)
	return v.S, ok
}

func (d *decoder) boolean(n *yaml.Node, what string) (bool, bool) {
	var v settings.Bool
	ok := d.value(n, what, &v)
	return v.B, ok
}

func (d *decoder) integer(n *yaml.Node, what string) (int64, bool) {
	var v settings.Int
	ok := d.value(n, what, &v)
	return v.N, ok
}

func (d *decoder) size(n *yaml.Node, what string) (uint64, bool) {
	var v settings.Size
	ok := d.value(n, what, &v)
	return v.Bytes, ok
}

func (d *decoder) duration(n *yaml.Node, what string) (time.Duration, bool) {
	var v settings.Duration
	ok := d.value(n, what, &v)
	return v.D, ok
}

// sequence checks that n is a list.
func (d *decoder) sequence(n *yaml.Node, what string) ([]*yaml.Node, bool) {
	n = deref(n)
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, "%s must be a list (lines starting with \"- \"), not %s", what, settings.Describe(n))
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
			d.errorf(item, "a listener is a mapping with one key, tcp or unix, such as \"- tcp: 127.0.0.1:10809\"; got %s", settings.Describe(item))
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
			d.errorf(k, "unknown listener kind %q%s", k.Value, settings.Suggest(k.Value, []string{"tcp", "unix"}, ""))
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
	if settings.IsNull(deref(v)) {
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
				d.errorf(v, "payload_budget: %s is too large", settings.FormatSize(s))
			case s != 0 && s < MinPayloadBudget:
				d.errorf(v, "payload_budget: %s is too small; a client may send a single %s request, so the budget must be at least that", settings.FormatSize(s), settings.FormatSize(MinPayloadBudget))
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
				d.errorf(v, "connection_payload: %s is too small; a client may send a single %s request, so a connection must be able to hold at least that", settings.FormatSize(s), settings.FormatSize(MinConnectionPayload))
			case !budgetOK:
			case s > budget:
				d.errorf(v, "connection_payload: %s is more than payload_budget (%s); it is one connection's share of the budget all connections hold together, so it cannot be larger than the budget",
					settings.FormatSize(s), inEffect(settings.FormatSize(budget), l.PayloadBudget != 0, f.val["payload_budget"]))
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
			spec, size, known := d.stack(v, f.key["stack"].Line, &exportCtx{name: e.Name, readOnly: e.ReadOnly})
			if known && size > math.MaxInt64 {
				d.errorf(v, "export %q is %s, more than NBD clients can address (8EiB less one byte)", e.Name, settings.FormatSize(size))
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

// stack decodes an export's stack, checks what it needs of the host, and
// returns the Spec, its size and whether that size is known.
func (d *decoder) stack(n *yaml.Node, keyLine int, ex *exportCtx) (stack.Spec, uint64, bool) {
	var spec stack.Spec
	var p settings.Problems
	p.Add(settings.Named(n, keyLine, "stack", &spec))
	spec.Walk(func(s stack.Spec) {
		if r, ok := s.Config.(interface{ ResolvePaths(dir string) }); ok {
			r.ResolvePaths(d.dir)
		}
	})
	d.host.Export, d.host.ReadOnly = ex.name, ex.readOnly
	d.host.CheckHost(spec, &p)
	size, known := spec.CheckSize(&p)
	d.add(p.Err())
	return spec, size, known
}
