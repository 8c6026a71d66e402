package stack

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/settings"
)

// A node kind is described in one place, its own file: a settings struct
// that implements Settings, registered once with Register. Decoding,
// validation, sizing, building and `stackd check`'s tree all go through
// that description, so nothing else in stackd switches on a kind's name.

// Settings is a node kind's settings struct: the value of the kind's key
// in a stack node, decoded by settings.Decode (its fields carry the yaml
// tags), with a doc comment on every field for the reference.
type Settings interface {
	// Kind is the kind's name, the key of its stack nodes.
	Kind() string
	// LegSpecs returns the node's legs, in order; none for a leaf.
	LegSpecs() []Spec
	// Check reports the problems of the settings' own values, at their
	// lines; a value with Line 0 was not given, or not decoded (its
	// problem is reported already), and is not checked. Legs check
	// themselves.
	Check(p *settings.Problems)
	// NodeSize returns the node's size, given its legs' sizes (in LegSpecs
	// order). A problem (legs that do not fit together) is an error
	// with the line of what is wrong; errSizeUnknown says that the size
	// can be learnt only from the host (a file with no size, before
	// CheckHost has looked at it).
	NodeSize(legs []Sized) (uint64, error)
	// Build returns the node's device over its built legs.
	Build(legs []Device, b BuildContext) (Device, error)
	// Describe returns the node's settings as key=value words, for
	// `stackd check`'s tree, which prints them after its kind and size.
	Describe() []string
}

// leaf is embedded in the settings of a leaf kind: it has no legs.
type leaf struct{}

func (leaf) LegSpecs() []Spec { return nil }

// Kind registers a node kind.
type Kind struct {
	// New returns zero settings, to decode a node into.
	New func() Settings
	// Rank orders the kinds in lists shown to users: layers first, from
	// the top of a typical stack down, then leaves.
	Rank int
	// Legs is how many legs the kind's nodes have.
	Legs LegShape
	// Example is the settings of a typical node of a kind with one leg,
	// without the leg, for hints ("max_bytes: 1MiB").
	Example string
}

// LegShape is how many legs a kind's nodes have.
type LegShape int

const (
	// NoLegs: a leaf.
	NoLegs LegShape = iota
	// OneLeg: a single leg, the key "leg", which metric paths name by its
	// kind ("default/split/stripe") rather than by its number
	// ("default/stripe/leg0").
	OneLeg
	// ManyLegs: a list of legs, the key "legs".
	ManyLegs
)

var kinds = map[string]Kind{}

// Register adds a kind; each kind's file calls it from an init function.
func Register(k Kind) {
	name := k.New().Kind()
	if _, dup := kinds[name]; dup {
		panic("stack: kind " + name + " registered twice")
	}
	kinds[name] = k
}

// Kinds returns the names of the registered kinds, in rank order.
func Kinds() []string {
	names := make([]string, 0, len(kinds))
	for name := range kinds {
		names = append(names, name)
	}
	// By rank, and by name between kinds of one rank, so that the order
	// is the same every time (the registry is a map).
	slices.SortFunc(names, func(a, b string) int {
		if d := kinds[a].Rank - kinds[b].Rank; d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	return names
}

// Spec describes a stack as a tree: one node, whose settings hold its
// legs. Build turns it into running devices.
type Spec struct {
	// Config is the node's settings; its Kind names the kind.
	Config Settings
	// Line is the line of the node in its configuration (0 for a Spec
	// made in Go).
	Line int
	// bad: a problem was found in the node or below it; its size is
	// then unknown, so that the layers above skip the checks that need
	// it rather than report one mistake twice.
	bad bool
}

// Kind returns the name of the node's kind.
func (s Spec) Kind() string {
	if s.Config == nil {
		return ""
	}
	return s.Config.Kind()
}

// UnmarshalYAML decodes a stack node: a mapping with exactly one key, its
// kind, whose value holds the kind's settings.
func (s *Spec) UnmarshalYAML(n *yaml.Node) error {
	*s = Spec{Line: n.Line, bad: true}
	if n.Kind != yaml.MappingNode {
		return settings.Invalid(n, " must be a stack node, a mapping with one key naming its kind such as \"memory: {size: 1GiB}\"; got %s", settings.Describe(n))
	}
	switch len(n.Content) / 2 {
	case 0:
		return settings.Invalid(n, " has no kind; want one of %s", strings.Join(Kinds(), ", "))
	case 1:
	default:
		var names []string
		for i := 0; i < len(n.Content); i += 2 {
			names = append(names, n.Content[i].Value)
		}
		return settings.Invalid(n, " has %d keys (%s); a stack node has exactly one, its kind (put legs under \"leg:\" or \"legs:\")",
			len(names), strings.Join(names, ", "))
	}
	k, v := n.Content[0], n.Content[1]
	for k.Kind == yaml.AliasNode {
		k = k.Alias
	}
	kind, ok := kinds[k.Value]
	if !ok {
		var p settings.Problems
		p.At(k.Line, "unknown kind %q%s", k.Value, settings.Suggest(k.Value, Kinds(), ""))
		return p.Err()
	}
	var p settings.Problems
	s.Config = kind.New()
	p.Add(settings.DecodeHinted(v, k.Line, k.Value, s.Config, func(key string) string { return layerHint(k.Value, key) }))
	s.Config.Check(&p)
	s.bad = p.Len() > 0
	return p.Err()
}

// layerHint explains an unknown key of a kind's node. "leg" and "legs"
// are the other shape's key. The name of a layer with one leg is a
// setting that the kind may once have had (as leaves had delay), or a
// layer written inside the node it should sit above: the layer goes above
// the node, with the node as its leg.
func layerHint(kind, key string) string {
	switch shape := kinds[kind].Legs; {
	case key == "legs" && shape == OneLeg:
		return fmt.Sprintf(`%s has exactly one leg: write "leg:" and a single stack node`, kind)
	case key == "leg" && shape == ManyLegs:
		return fmt.Sprintf(`%s takes a list: write "legs:"`, kind)
	}
	k, ok := kinds[key]
	if !ok || k.Legs != OneLeg {
		return ""
	}
	return fmt.Sprintf("%s is a layer, not a setting of %s: put the %s under one, as in %s: {%s, leg: {%s: {…}}}",
		key, kind, kind, key, k.Example, kind)
}

// Leg is the single leg of a layer such as split: a stack node, and not
// a list of them.
type Leg struct{ Spec }

// UnmarshalYAML implements yaml.Unmarshaler.
func (l *Leg) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.SequenceNode {
		l.Spec = Spec{Line: n.Line, bad: true}
		return settings.Invalid(n, " must be a single stack node, not a list; a $WHAT has exactly one leg")
	}
	return l.Spec.UnmarshalYAML(n)
}

// Sized is a leg's size and line, for Settings.NodeSize.
type Sized struct {
	Bytes uint64
	Line  int
}

// errSizeUnknown is Settings.NodeSize's answer when only the host knows.
var errSizeUnknown = errors.New("size unknown until the host is checked")

// hostSized is what a leaf whose size the host can tell (a file, an rbd
// image, a remote export) learns of it in its host check, for NodeSize.
type hostSized struct {
	size   uint64 // the size the host check learnt
	known  bool   // the host check learnt size
	failed bool   // the host check found a problem: the size is unknown
}

// nodeSize is the node's size: the configured one if given (0: none),
// else what the host check learnt.
func (h *hostSized) nodeSize(configured uint64) (uint64, error) {
	switch {
	case h.failed:
		return 0, errSizeUnknown
	case configured != 0:
		return configured, nil
	case h.known:
		return h.size, nil
	}
	return 0, errSizeUnknown
}

// Size returns the size in bytes of the device s describes, and false
// when it is unknown (after a problem, or before CheckHost for a file
// with no size).
func (s Spec) Size() (uint64, bool) { return s.size(nil) }

// CheckSize is Size, reporting to p why the legs of a node do not fit
// together (a stripe's legs of different sizes, say), at most once for
// each node.
func (s Spec) CheckSize(p *settings.Problems) (uint64, bool) { return s.size(p) }

func (s Spec) size(p *settings.Problems) (uint64, bool) {
	if s.bad || s.Config == nil {
		return 0, false
	}
	legs := s.Config.LegSpecs()
	sized := make([]Sized, len(legs))
	known := true
	for i, l := range legs {
		n, ok := l.size(p)
		sized[i] = Sized{Bytes: n, Line: l.Line}
		known = known && ok
	}
	if !known {
		return 0, false
	}
	n, err := s.Config.NodeSize(sized)
	if err != nil {
		if p != nil && err != errSizeUnknown {
			p.Add(err)
		}
		return 0, false
	}
	return n, true
}

// Walk calls f for s and every node below it, parents first.
func (s Spec) Walk(f func(Spec)) {
	if s.Config == nil {
		return // not decoded
	}
	f(s)
	for _, l := range s.Config.LegSpecs() {
		l.Walk(f)
	}
}

// BuildContext is what Settings.Build gets besides the legs.
type BuildContext struct {
	// Path names the node, as Node.Path.
	Path string
	// ReadOnly: the export is read-only (BuildOptions.ReadOnly).
	ReadOnly bool
	// Log is where a node logs what the operator should know, such as
	// a mirror leg's state changes (BuildOptions.Logger, or
	// slog.Default()).
	Log *slog.Logger
}

// PoolSpec sizes a layer's BioSet: `pool: {capacity: 1024, rescuer: true}`.
type PoolSpec struct {
	// Capacity in bios, 1 to MaxPoolCapacity (absent:
	// DefaultPoolCapacity).
	Capacity settings.Int `yaml:"capacity" label:"pool capacity"`
	// Rescuer turns the layer's rescuer on (absent: on). Off only to
	// demonstrate the deadlock the rescuer prevents.
	Rescuer settings.Bool `yaml:"rescuer" label:"pool rescuer"`
}

// DefaultPoolCapacity is a layer's pool size when the Spec gives none: large
// enough that a 32 MiB request through a 64 KiB-chunk stripe (512 children)
// rarely waits, small enough to stay a bound (a bio is 168 bytes on
// amd64).
const DefaultPoolCapacity = 1024

// MaxPoolCapacity bounds a layer's pool: beyond a million bios a pool is
// no longer a meaningful bound.
const MaxPoolCapacity = 1 << 20

// Check reports a capacity out of range.
func (ps PoolSpec) Check(p *settings.Problems) {
	if c := ps.Capacity; c.Line > 0 && (c.N < 1 || c.N > MaxPoolCapacity) {
		p.At(c.Line, "pool capacity: %d is out of range; want 1 to %d bios (absent: %d)", c.N, MaxPoolCapacity, DefaultPoolCapacity)
	}
}

func (ps PoolSpec) capacity() int {
	if ps.Capacity.N == 0 {
		return DefaultPoolCapacity
	}
	return int(ps.Capacity.N)
}

func (ps PoolSpec) noRescuer() bool { return ps.Rescuer.Line != 0 && !ps.Rescuer.B }

// Options returns the BioSet options of the layer at path.
func (ps PoolSpec) Options(path string) bioset.Options {
	return bioset.Options{Name: path, Capacity: ps.capacity(), NoRescuer: ps.noRescuer()}
}

// describe returns the pool's words for the tree.
func (ps PoolSpec) describe() []string {
	words := []string{"pool=" + strconv.Itoa(ps.capacity())}
	if ps.noRescuer() {
		words = append(words, "rescuer=off")
	}
	return words
}

// blockSize is the unit of NBD I/O stackd serves: offsets, lengths and the
// sizes and boundaries of layers are multiples of it.
const blockSize = 512

// checkBlocks reports a size that is not a positive multiple of 512.
func checkBlocks(p *settings.Problems, what string, v settings.Size) {
	switch {
	case v.Line == 0:
	case v.Bytes == 0:
		p.At(v.Line, "%s must be greater than zero", what)
	case v.Bytes%blockSize != 0:
		p.At(v.Line, "%s: %s is not a multiple of %d bytes", what, v, blockSize)
	}
}

// checkLegCount reports a list of legs shorter than min.
func checkLegCount(p *settings.Problems, kind string, legs settings.List[Spec], min int) {
	if legs.Line == 0 || len(legs.Items) >= min {
		return
	}
	noun := "legs"
	if min == 1 {
		noun = "leg"
	}
	p.At(legs.Line, "%s needs at least %d %s, has %d", kind, min, noun, len(legs.Items))
}

// checkEqualLegs reports the first leg whose size differs from the
// first's, for the kinds whose legs must be the same size.
func checkEqualLegs(kind string, legs []Sized) error {
	for i := 1; i < len(legs); i++ {
		if legs[i].Bytes != legs[0].Bytes {
			return sizeError(legs[i].Line, "%s leg %d is %s but leg 1 (line %d) is %s; the legs of a %s must be the same size",
				kind, i+1, settings.FormatSize(legs[i].Bytes), legs[0].Line, settings.FormatSize(legs[0].Bytes), kind)
		}
	}
	return nil
}

func sizeError(line int, format string, args ...any) error {
	return &settings.Error{Line: line, Msg: fmt.Sprintf(format, args...)}
}
