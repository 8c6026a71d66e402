package settings

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"
)

// The value types below each decode one YAML scalar and keep its Pos.

// Pos is where a value was: Line is 0 when the value was not given or
// could not be decoded, and Bad says which: given, but not decoded (its
// problem is reported already).
type Pos struct {
	Line int
	Bad  bool
}

func (p *Pos) pos() *Pos { return p }

// decodeScalar sets *v to what parse makes of n, with n's line; or, when
// parse fails, to the zero value marked Bad.
func decodeScalar[T any, P interface {
	*T
	pos() *Pos
}](v P, n *yaml.Node, parse func(*yaml.Node) (T, error)) error {
	x, err := parse(n) // the zero value when it fails
	*v = x
	p := P(v).pos()
	p.Bad = err != nil
	if err == nil {
		p.Line = n.Line
	}
	return err
}

// Size is a number of bytes: a YAML integer, or a string ParseSize
// accepts ("256MiB").
type Size struct {
	Bytes uint64
	Pos
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *Size) UnmarshalYAML(n *yaml.Node) error { return decodeScalar(s, n, parseSizeNode) }

func parseSizeNode(n *yaml.Node) (Size, error) {
	if n.Kind == yaml.ScalarNode {
		switch n.ShortTag() {
		case "!!int":
			var u uint64
			if err := n.Decode(&u); err == nil {
				return Size{Bytes: u}, nil
			}
			var i int64
			if err := n.Decode(&i); err == nil && i < 0 {
				return Size{}, Invalid(n, ": %s: a size cannot be negative", n.Value)
			}
			return Size{}, Invalid(n, ": %s is too large", n.Value)
		case "!!str", "!!float":
			b, err := ParseSize(n.Value)
			if err != nil {
				return Size{}, Invalid(n, ": %v", err)
			}
			return Size{Bytes: b}, nil
		}
	}
	return Size{}, Invalid(n, " must be a size such as 4096 or 256MiB, not %s", Describe(n))
}

// Duration is a non-negative time.ParseDuration string ("10s", "1ms").
type Duration struct {
	D time.Duration
	Pos
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	return decodeScalar(d, n, func(n *yaml.Node) (Duration, error) {
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!str" && n.ShortTag() != "!!int") {
			return Duration{}, Invalid(n, " must be a duration such as 10s or 1ms, not %s", Describe(n))
		}
		t, err := time.ParseDuration(n.Value)
		switch {
		case err != nil:
			return Duration{}, Invalid(n, ": %q is not a duration; want a number and a unit such as 10s, 1ms or 250us", n.Value)
		case t < 0:
			return Duration{}, Invalid(n, ": %s: a duration cannot be negative", n.Value)
		}
		return Duration{D: t}, nil
	})
}

// Int is a YAML integer.
type Int struct {
	N int64
	Pos
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (i *Int) UnmarshalYAML(n *yaml.Node) error {
	return decodeTagged(i, n, "!!int", func(v *Int) any { return &v.N }, "a whole number")
}

// Float is a YAML number, integer or not ("1", "0.25").
type Float struct {
	F float64
	Pos
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (f *Float) UnmarshalYAML(n *yaml.Node) error {
	return decodeScalar(f, n, func(n *yaml.Node) (Float, error) {
		var x Float
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!float" && n.ShortTag() != "!!int") ||
			n.Decode(&x.F) != nil || math.IsNaN(x.F) || math.IsInf(x.F, 0) {
			return Float{}, Invalid(n, " must be a number such as 0.5, not %s", Describe(n))
		}
		return x, nil
	})
}

// Bool is a YAML boolean.
type Bool struct {
	B bool
	Pos
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *Bool) UnmarshalYAML(n *yaml.Node) error {
	return decodeTagged(b, n, "!!bool", func(v *Bool) any { return &v.B }, "true or false")
}

// decodeTagged decodes n, a scalar of YAML tag tag, into the field of *v
// that field returns; want says what n must be otherwise.
func decodeTagged[T any, P interface {
	*T
	pos() *Pos
}](v P, n *yaml.Node, tag string, field func(P) any, want string) error {
	return decodeScalar(v, n, func(n *yaml.Node) (T, error) {
		var x T
		if n.Kind != yaml.ScalarNode || n.ShortTag() != tag || n.Decode(field(&x)) != nil {
			var zero T
			return zero, Invalid(n, " must be %s, not %s", want, Describe(n))
		}
		return x, nil
	})
}

// String is a YAML string. Numbers and booleans are refused so that a
// value such as `name: 1e3` or `path: no` is not silently read as text.
type String struct {
	S string
	Pos
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *String) UnmarshalYAML(n *yaml.Node) error {
	return decodeScalar(s, n, func(n *yaml.Node) (String, error) {
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
			hint := ""
			if n.Kind == yaml.ScalarNode && !IsNull(n) {
				hint = " (quote it to make it a string)"
			}
			return String{}, Invalid(n, " must be a string, not %s%s", Describe(n), hint)
		}
		return String{S: n.Value}, nil
	})
}

// List is a YAML list of T. Each item decodes itself; a relative problem
// of item i is named by the holding field's item tag and i+1 ("stripe leg
// 2"). Line is the list's.
type List[T any] struct {
	Items []T
	Line  int
	// Bad: given, but not a list.
	Bad bool
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (l *List[T]) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.SequenceNode {
		*l = List[T]{Bad: true}
		return Invalid(n, " must be a list (lines starting with \"- \"), not %s", Describe(n))
	}
	var p Problems
	items := make([]T, len(n.Content))
	for i, item := range n.Content {
		if err := decodeValue(item, &items[i]); err != nil {
			var sub Problems
			sub.Add(err)
			for _, e := range sub.list {
				if e.relative && e.index == 0 {
					e.index = i + 1
				}
			}
			p.list = append(p.list, sub.list...)
		}
	}
	*l = List[T]{Items: items, Line: n.Line}
	return p.Err()
}

// IsNull reports whether n is YAML's null: "key:" with nothing after it.
func IsNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// Describe names what a node is, for "want X, not Y" messages.
func Describe(n *yaml.Node) string {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
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

// String forms, for `stackd check`'s tree.
func (s Size) String() string     { return FormatSize(s.Bytes) }
func (d Duration) String() string { return d.D.String() }
func (i Int) String() string      { return fmt.Sprint(i.N) }
func (f Float) String() string    { return strconv.FormatFloat(f.F, 'g', -1, 64) }

// Word returns s as one word of a line, quoted when it would not read as
// one.
func Word(s string) string {
	if s == "" || strings.ContainsAny(s, `"(),=`) || strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || !unicode.IsPrint(r)
	}) {
		return strconv.Quote(s)
	}
	return s
}
