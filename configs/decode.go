package configs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/stack"
)

// The shape of a configuration file, decoded by settings.Decode: each
// value keeps its line, for the checks that relate values to each other.
type fileSettings struct {
	Listen  settings.List[listenerSetting] `yaml:"listen" label:"listen"`
	Metrics metricsSettings                `yaml:"metrics" label:"metrics"`
	Limits  limitsSettings                 `yaml:"limits" label:"limits"`
	Control controlPath                    `yaml:"control" label:"control"`
	Exports settings.List[exportSettings]  `yaml:"exports" label:"exports" need:"true"`
	TLS     tlsSettings                    `yaml:"tls" label:"tls"`
}

// offable is a string setting that "off", "" or an empty value turns
// off.
type offable struct {
	settings.String
	off bool
}

// decode decodes n, a setting called what.
func (o *offable) decode(n *yaml.Node, what string) error {
	if settings.IsNull(n) {
		*o = offable{off: true}
		return nil
	}
	if err := settings.Named(n, 0, what, &o.String); err != nil {
		return err
	}
	o.off = o.S == "" || o.S == "off"
	return nil
}

// controlPath is the control socket's path, or off for none.
type controlPath struct{ offable }

func (c *controlPath) UnmarshalYAML(n *yaml.Node) error {
	if err := c.decode(n, "control socket path"); err != nil || c.off {
		return err
	}
	var p settings.Problems
	checkUnixPath(&p, c.Line, "control socket path", c.S)
	return p.Err()
}

type metricsSettings struct {
	Address metricsAddress `yaml:"address"`
}

// metricsAddress is host:port, or off for no metrics.
type metricsAddress struct{ offable }

func (m *metricsAddress) UnmarshalYAML(n *yaml.Node) error {
	if err := m.decode(n, "metrics address"); err != nil || m.off {
		return err
	}
	if err := checkHostPort(m.S); err != nil {
		return settings.Invalid(n, " %q: %v (or \"off\" to serve no metrics)", m.S, err)
	}
	return nil
}

type limitsSettings struct {
	MaxConnections          settings.Int      `yaml:"max_connections" label:"max_connections"`
	MaxConnectionsPerClient settings.Int      `yaml:"max_connections_per_client" label:"max_connections_per_client"`
	MaxInFlight             settings.Int      `yaml:"max_in_flight" label:"max_in_flight"`
	PayloadBudget           settings.Size     `yaml:"payload_budget" label:"payload_budget"`
	ConnectionPayload       settings.Size     `yaml:"connection_payload" label:"connection_payload"`
	HandshakeTimeout        settings.Duration `yaml:"handshake_timeout" label:"handshake_timeout"`
	ReplyTimeout            settings.Duration `yaml:"reply_timeout" label:"reply_timeout"`
}

type exportSettings struct {
	Name        settings.String `yaml:"name" label:"export name" need:"true"`
	Description settings.String `yaml:"description" label:"description"`
	Default     settings.Bool   `yaml:"default" label:"default"`
	ReadOnly    settings.Bool   `yaml:"read_only" label:"read_only"`
	Stack       stack.Spec      `yaml:"stack" label:"stack" need:"true"`
	// TLS is "required" (only over TLS) or "optional" (the default).
	TLS   settings.String             `yaml:"tls" label:"export tls"`
	Allow settings.List[allowSetting] `yaml:"allow" label:"export allow"`
	// line is the export's; stackLine its stack's, for problems with
	// the stack as a whole.
	line, stackLine int
}

func (e *exportSettings) UnmarshalYAML(n *yaml.Node) error {
	e.line = n.Line
	err := settings.Decode(n, 0, "export", e)
	e.stackLine = e.Stack.Line
	return err
}

// KeyHint implements settings.KeyHinter.
func (e *exportSettings) KeyHint(key string) string {
	if key == "size" {
		return "an export's size is its stack's size; give sizes to the leaf targets"
	}
	return ""
}

// listenerSetting is one item of listen: a mapping with one key, the
// network, whose value is the address.
type listenerSetting struct {
	Listener
	line int
}

// listenerAllow decodes a listener's allow list, a list of CIDR prefixes
// (or bare addresses).
func listenerAllow(p *settings.Problems, key, val *yaml.Node) []netip.Prefix {
	var cidrs settings.List[settings.String]
	if err := settings.Named(val, key.Line, "listener allow", &cidrs); err != nil {
		p.Add(err)
		return nil
	}
	if len(cidrs.Items) == 0 {
		p.At(key.Line, "listener allow is an empty list, which would refuse everyone; leave it out to admit every address")
	}
	var allow []netip.Prefix
	for _, c := range cidrs.Items {
		pfx, err := parseCIDR(c.S)
		if err != nil {
			p.At(c.Line, "listener allow %q: %v", c.S, err)
			continue
		}
		allow = append(allow, pfx)
	}
	return allow
}

// maxUnixPath is the longest socket path Linux accepts: sun_path holds 108
// bytes including the terminating NUL.
const maxUnixPath = 107

func (l *listenerSetting) UnmarshalYAML(n *yaml.Node) error {
	var p settings.Problems
	if n.Kind != yaml.MappingNode || len(n.Content) < 2 {
		p.At(n.Line, "a listener is a mapping with one key, tcp or unix, such as \"- tcp: 127.0.0.1:10809\", and an optional allow list; got %s", settings.Describe(n))
		return p.Err()
	}
	// One key names the network (tcp or unix); allow is the only other.
	var k, v *yaml.Node
	var allow []netip.Prefix
	allowLine := 0
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		switch {
		case key.Value == "allow" && allowLine == 0:
			allowLine = key.Line
			allow = listenerAllow(&p, key, val)
		case k == nil:
			k, v = key, val
		case key.Value == "allow":
			p.At(key.Line, "a listener has one allow list")
		default:
			p.At(n.Line, "a listener is a mapping with one key, tcp or unix, such as \"- tcp: 127.0.0.1:10809\", and an optional allow list; got a mapping with %s and %s", k.Value, key.Value)
		}
	}
	if k == nil {
		p.At(n.Line, "a listener needs a tcp or unix key beside its allow list")
	}
	if p.Len() > 0 {
		return p.Err()
	}
	var addr settings.String
	switch k.Value {
	case "tcp":
		if v.Kind == yaml.SequenceNode {
			p.At(v.Line, "tcp address must be a string; quote an IPv6 address, as in tcp: \"[::1]:10809\"")
			return p.Err()
		}
		if err := settings.Named(v, k.Line, "tcp address", &addr); err != nil {
			return err
		}
		if err := checkHostPort(addr.S); err != nil {
			p.At(addr.Line, "tcp address %q: %v", addr.S, err)
			return p.Err()
		}
	case "unix":
		if err := settings.Named(v, k.Line, "unix socket path", &addr); err != nil {
			return err
		}
		if allowLine != 0 {
			p.At(allowLine, "a unix socket's clients have no address for a listener's allow list; give the exports allow lists of unix_uid or unix_gid")
		}
		checkUnixPath(&p, addr.Line, "unix socket path", addr.S)
		if p.Len() > 0 {
			return p.Err()
		}
	default:
		p.At(k.Line, "unknown listener kind %q%s", k.Value, settings.Suggest(k.Value, []string{"tcp", "unix"}, ""))
		return p.Err()
	}
	*l = listenerSetting{Listener: Listener{Network: k.Value, Address: addr.S, Allow: allow}, line: addr.Line}
	return nil
}

// checkUnixPath checks a socket path for what bind(2) accepts.
func checkUnixPath(p *settings.Problems, line int, what, path string) {
	switch {
	case path == "":
		p.At(line, "%s must not be empty", what)
	case len(path) > maxUnixPath:
		p.At(line, "%s is %d bytes long; Linux allows at most %d", what, len(path), maxUnixPath)
	}
}

// Bounds on what a configuration may describe, so that a small file
// cannot make stackd decode, check or build without end.
const (
	// MaxYAMLNodes bounds the YAML nodes of a configuration once its
	// aliases are expanded: an alias repeats its anchor's whole value,
	// so nested aliases grow a file exponentially (ten levels of ten
	// make 10^10 nodes of a 2 KiB file). Counted before decoding, in
	// time proportional to the file.
	MaxYAMLNodes = 1 << 17
	// MaxStackNodes bounds the nodes of all stacks together; each layer
	// allocates a pool of bios when it is built.
	MaxStackNodes = 4096
	// MaxStackDepth bounds the depth of a stack, counting its top node.
	MaxStackDepth = 32
)

// decoder decodes a configuration and collects every problem it finds
// with the line it is on. It keeps going after a problem so that one run
// of `stackd check` reports them all.
type decoder struct {
	file string
	// dir anchors relative file paths; "" means the working directory.
	dir   string
	errs  []*Error
	warns []*Error
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

// add records the problems of a settings decode or check.
func (d *decoder) add(err error) {
	var l settings.Errors
	if errors.As(err, &l) {
		for _, e := range l {
			d.errorAt(e.Line, "%s", e.Msg)
		}
	}
}

// warnAt records a warning: a problem that does not stop the
// configuration from being served.
func (d *decoder) warnAt(line int, format string, args ...any) {
	d.warns = append(d.warns, &Error{File: d.file, Line: line, Msg: fmt.Sprintf(format, args...)})
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

// config decodes and checks a whole file.
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
	root := doc.Content[0]
	if !d.bounded(root) {
		return nil
	}
	var fs fileSettings
	d.add(settings.Decode(root, 0, "the configuration", &fs))
	c := &Config{
		Listeners:      d.listeners(fs.Listen),
		MetricsAddress: DefaultMetricsAddress,
		Limits:         d.limits(fs.Limits),
		Exports:        d.exports(fs.Exports),
		TLS:            d.tls(&fs.TLS),
	}
	if a := fs.Metrics.Address; a.off {
		c.MetricsAddress = ""
	} else if a.Line > 0 {
		c.MetricsAddress = a.S
	}
	c.Control = d.control(fs.Control, fs.Listen)
	d.checkStacks(c)
	d.checkTLSNeeds(c, fs.Exports)
	return c
}

// checkTLSNeeds checks that what the exports ask of TLS is configured: a
// TLS-only export needs a tls section whose mode is not off, and a
// client_cert rule needs tls.client_ca, without which no certificate is
// verified and such a rule could match no one.
func (d *decoder) checkTLSNeeds(c *Config, es settings.List[exportSettings]) {
	for _, x := range es.Items {
		if v := x.TLS; v.Line > 0 && v.S == "required" && c.TLS == nil {
			d.errorAt(v.Line, "export %q: tls: required needs a tls section (cert, key) with a mode other than off", x.Name.S)
		}
		for _, a := range x.Allow.Items {
			switch a.rule.Kind {
			case nbd.AllowCertDNS, nbd.AllowCertCN, nbd.AllowCertSPKI:
				if c.TLS == nil || c.TLS.ClientCA == "" {
					d.errorAt(a.line, "export %q: a client_cert rule needs tls.client_ca, which verifies the certificates it names", x.Name.S)
				}
			}
		}
	}
}

// bounded reports whether root stays within MaxYAMLNodes once its
// aliases are expanded. Each node's expanded count is computed once and
// remembered, so the count takes time proportional to the file, however
// much the aliases would expand it.
func (d *decoder) bounded(root *yaml.Node) bool {
	memo := map[*yaml.Node]int{}
	var count func(n *yaml.Node) int
	count = func(n *yaml.Node) int {
		if c, ok := memo[n]; ok {
			return c
		}
		c := 1
		if n.Kind == yaml.AliasNode {
			c = count(n.Alias)
		}
		for _, child := range n.Content {
			c = min(c+count(child), MaxYAMLNodes+1)
		}
		memo[n] = c
		return c
	}
	if count(root) <= MaxYAMLNodes {
		return true
	}
	// Report the first alias whose expansion crosses the bound, walking
	// the file in order: the place to look.
	line, total := root.Line, 0
	var walk func(n *yaml.Node) bool
	walk = func(n *yaml.Node) bool {
		if n.Kind == yaml.AliasNode {
			total += count(n)
			line = n.Line
			return total > MaxYAMLNodes
		}
		total++
		for _, child := range n.Content {
			if walk(child) {
				return true
			}
		}
		return false
	}
	walk(root)
	d.errorAt(line, "the configuration is more than %d YAML nodes once its aliases are expanded (an alias repeats its anchor's whole value); "+
		"a stack that large is a mistake: use fewer nested aliases", MaxYAMLNodes)
	return false
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

func (d *decoder) listeners(ls settings.List[listenerSetting]) []Listener {
	switch {
	case ls.Line == 0 && !ls.Bad:
		return []Listener{{Network: "tcp", Address: DefaultListenAddress}}
	case ls.Line == 0:
		return nil
	case len(ls.Items) == 0:
		d.errorAt(ls.Line, "listen is an empty list; name at least one listener, or leave listen out for the default %s", DefaultListenAddress)
		return nil
	}
	var out []Listener
	seen := map[[2]string]int{}
	for _, l := range ls.Items {
		if l.line == 0 {
			continue // not decoded
		}
		key := [2]string{l.Network, l.Address}
		if first, dup := seen[key]; dup {
			d.errorAt(l.line, "listener %s %s is already listed at line %d", l.Network, l.Address, first)
			continue
		}
		seen[key] = l.line
		out = append(out, l.Listener)
	}
	return out
}

// control returns the control socket's path, "" for none; a path that is
// also an NBD listener's would have two servers on one socket.
func (d *decoder) control(c controlPath, ls settings.List[listenerSetting]) string {
	if c.off || c.Line == 0 {
		return ""
	}
	for _, l := range ls.Items {
		if l.Network == "unix" && l.Address == c.S {
			d.errorAt(c.Line, "control socket %s is also an NBD listener at line %d; give the control socket a path of its own", c.S, l.line)
			return ""
		}
	}
	return c.S
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

func (d *decoder) limits(ls limitsSettings) Limits {
	var l Limits
	// maxConnsOK and budgetOK say whether the limits that bound the
	// per-client and per-connection shares are known (given and valid,
	// or absent: the default); if not, the share is not checked against
	// them, so that one mistake is reported once.
	maxConnsOK, budgetOK := true, true
	if v := ls.MaxConnections; v.Line > 0 || v.Bad {
		maxConnsOK = false
		if i, ok := v.N, v.Line > 0; ok {
			if i < 0 || i > math.MaxInt32 {
				d.errorAt(v.Line, "max_connections: %d is out of range; want 1 to %d (0 or absent: %d)", i, math.MaxInt32, DefaultMaxConnections)
			} else {
				l.MaxConnections = int(i)
				maxConnsOK = true
			}
		}
	}
	if v := ls.MaxInFlight; v.Line > 0 || v.Bad {
		if i, ok := v.N, v.Line > 0; ok {
			switch {
			case i == 0:
			case i < MinMaxInFlight:
				d.errorAt(v.Line, "max_in_flight: %d is too small; the Linux client keeps up to %d requests in flight on a connection, so the limit must be at least that", i, MinMaxInFlight)
			case i > math.MaxInt32:
				d.errorAt(v.Line, "max_in_flight: %d is too large", i)
			default:
				l.MaxInFlight = int(i)
			}
		}
	}
	if v := ls.PayloadBudget; v.Line > 0 || v.Bad {
		budgetOK = false
		if s, ok := v.Bytes, v.Line > 0; ok {
			switch {
			case s > math.MaxInt64:
				d.errorAt(v.Line, "payload_budget: %s is too large", settings.FormatSize(s))
			case s != 0 && s < MinPayloadBudget:
				d.errorAt(v.Line, "payload_budget: %s is too small; a client may send a single %s request, so the budget must be at least that", settings.FormatSize(s), settings.FormatSize(MinPayloadBudget))
			default:
				l.PayloadBudget = int64(s)
				budgetOK = true
			}
		}
	}
	if v := ls.HandshakeTimeout; v.Line > 0 || v.Bad {
		if t, ok := v.D, v.Line > 0; ok {
			l.HandshakeTimeout = t
		}
	}
	if v := ls.ReplyTimeout; v.Line > 0 || v.Bad {
		if t, ok := v.D, v.Line > 0; ok {
			if t != 0 && t < MinReplyTimeout {
				d.errorAt(v.Line, "reply_timeout: %s is too short; the server renews a connection's write deadline only once every %s, so the timeout must be at least %s", t, MinReplyTimeout/2, MinReplyTimeout)
			} else {
				l.ReplyTimeout = t
			}
		}
	}
	// The shares are checked against the limits in effect: as given, or
	// their defaults.
	effective := l.WithDefaults()
	if v := ls.ConnectionPayload; v.Line > 0 || v.Bad {
		if s, ok := v.Bytes, v.Line > 0; ok {
			budget := uint64(effective.PayloadBudget)
			switch {
			case s == 0:
			case s < MinConnectionPayload:
				d.errorAt(v.Line, "connection_payload: %s is too small; a client may send a single %s request, so a connection must be able to hold at least that", settings.FormatSize(s), settings.FormatSize(MinConnectionPayload))
			case !budgetOK:
			case s > budget:
				d.errorAt(v.Line, "connection_payload: %s is more than payload_budget (%s); it is one connection's share of the budget all connections hold together, so it cannot be larger than the budget",
					settings.FormatSize(s), inEffect(settings.FormatSize(budget), l.PayloadBudget != 0, ls.PayloadBudget.Line))
			default:
				l.ConnectionPayload = int64(s)
			}
		}
	}
	if v := ls.MaxConnectionsPerClient; v.Line > 0 || v.Bad {
		if i, ok := v.N, v.Line > 0; ok {
			maxConns := int64(effective.MaxConnections)
			switch {
			case i == 0:
			case i < 0 && maxConnsOK:
				d.errorAt(v.Line, "max_connections_per_client: %d is out of range; want 1 to %d, the max_connections in effect (0 or absent: %d)", i, maxConns, effective.MaxConnectionsPerClient)
			case i < 0:
				d.errorAt(v.Line, "max_connections_per_client: %d is out of range; want 1 to max_connections", i)
			case !maxConnsOK:
			case i > maxConns:
				d.errorAt(v.Line, "max_connections_per_client: %d is more than max_connections (%s); it is one client's share of the connections the server allows in all, so it cannot be larger than that",
					i, inEffect(strconv.FormatInt(maxConns, 10), l.MaxConnections != 0, ls.MaxConnections.Line))
			default:
				l.MaxConnectionsPerClient = int(i)
			}
		}
	}
	return l
}

// inEffect describes a limit's value in effect, for a message about a
// share it bounds: where it was set (its line), or that it is the default.
func inEffect(value string, set bool, line int) string {
	if set {
		return fmt.Sprintf("%s at line %d", value, line)
	}
	return value + ", its default"
}

func (d *decoder) exports(es settings.List[exportSettings]) []Export {
	if es.Line == 0 {
		return nil
	}
	if len(es.Items) == 0 {
		d.errorAt(es.Line, "exports is an empty list; a configuration needs at least one export")
		return nil
	}
	var (
		exports      []Export
		names        = map[string]int{}
		defaultName  string
		defaultLine  int
		anyDefaulted bool
	)
	for _, x := range es.Items {
		if x.line == 0 {
			continue // not a mapping
		}
		e := Export{Name: x.Name.S, ReadOnly: x.ReadOnly.B, Stack: x.Stack, line: x.stackLine}
		if v := x.TLS; v.Line > 0 {
			switch v.S {
			case "required":
				e.TLSRequired = true
			case "optional":
			default:
				d.errorAt(v.Line, "export tls %q: want required (only over TLS) or optional (as the tls section's mode says)", v.S)
			}
		}
		for _, a := range x.Allow.Items {
			if a.line > 0 {
				e.Allow = append(e.Allow, a.rule)
			}
		}
		if x.Allow.Line > 0 && len(x.Allow.Items) == 0 {
			d.errorAt(x.Allow.Line, "export allow is an empty list, which would refuse everyone; leave it out to admit everyone the listener admits")
		}
		if v := x.Name; v.Line > 0 {
			switch {
			case v.S == "":
				d.errorAt(v.Line, "export name must not be empty (a client asking for \"\" gets the default export)")
			case d.checkString(v.Line, "export name", v.S):
				if first, dup := names[v.S]; dup {
					d.errorAt(v.Line, "export name %q is already used at line %d", v.S, first)
				} else {
					names[v.S] = v.Line
				}
			}
		}
		if v := x.Description; v.Line > 0 && d.checkString(v.Line, "description", v.S) {
			e.Description = v.S
		}
		if v := x.Default; v.Line > 0 || v.Bad {
			anyDefaulted = true
			e.Default = v.B
			if e.Default {
				if defaultLine != 0 {
					d.errorAt(v.Line, "export %q cannot also be the default: %q at line %d already is", e.Name, defaultName, defaultLine)
					e.Default = false
				} else {
					defaultName, defaultLine = e.Name, v.Line
				}
			}
		}
		exports = append(exports, e)
	}
	if len(exports) == 1 && !anyDefaulted {
		exports[0].Default = true
	}
	return exports
}

// checkString applies the NBD protocol's rules for strings.
func (d *decoder) checkString(line int, what, s string) bool {
	switch {
	case len(s) > MaxStringLen:
		d.errorAt(line, "%s is %d bytes long; NBD allows at most %d", what, len(s), MaxStringLen)
	case strings.ContainsRune(s, 0):
		d.errorAt(line, "%s must not contain a NUL character", what)
	case !utf8.ValidString(s):
		d.errorAt(line, "%s must be UTF-8", what)
	default:
		return true
	}
	return false
}

// checkStacks checks the stacks of c as a whole: their bounds, and the
// sizes of their nodes as far as they are known without the host. It
// makes relative file paths absolute.
func (d *decoder) checkStacks(c *Config) {
	nodes := 0
	for _, e := range c.Exports {
		var tooDeep func(s stack.Spec, depth int) bool
		tooDeep = func(s stack.Spec, depth int) bool {
			nodes++
			if depth > MaxStackDepth {
				d.errorAt(s.Line, "export %q: its stack is more than %d nodes deep here", e.Name, MaxStackDepth)
				return true
			}
			if s.Config == nil {
				return false
			}
			for _, l := range s.Config.LegSpecs() {
				if tooDeep(l, depth+1) {
					return true
				}
			}
			return false
		}
		if tooDeep(e.Stack, 1) {
			return
		}
		if nodes > MaxStackNodes {
			d.errorAt(e.Stack.Line, "the stacks have more than %d nodes in all; stackd serves at most that many", MaxStackNodes)
			return
		}
	}
	var p settings.Problems
	for _, e := range c.Exports {
		e.Stack.Walk(func(s stack.Spec) {
			if r, ok := s.Config.(interface{ ResolvePaths(dir string) }); ok {
				r.ResolvePaths(d.dir)
			}
		})
		d.checkSize(&p, e)
	}
	d.add(p.Err())
}

// checkSize checks the sizes in e's stack as far as they are known, and
// that the export is not too large for NBD clients.
func (d *decoder) checkSize(p *settings.Problems, e Export) {
	if size, known := e.Stack.CheckSize(p); known && size > math.MaxInt64 {
		p.At(e.line, "export %q is %s, more than NBD clients can address (8EiB less one byte)", e.Name, settings.FormatSize(size))
	}
}
