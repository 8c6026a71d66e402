package settings

import (
	"fmt"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

// KeyHinter is implemented by settings structs that explain unknown keys
// which are a likely confusion rather than a typo.
type KeyHinter interface {
	KeyHint(key string) string
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// Decode decodes the mapping n into the struct dst points to, one field at
// a time, and returns every problem found (Errors), or nil.
//
// The struct's fields are its keys, named by their yaml tags. Every field
// either decodes itself (implements yaml.Unmarshaler, as the value types
// of this package do) or is a struct, decoded by Decode in turn. Tags:
//
//	yaml:"key"         the key
//	need:"true"        the key is required
//	label:"name"       what problems with the value call it; default
//	                   what and the key ("memory size")
//	item:"noun"        a List's items are called what, noun and their
//	                   number ("stripe leg 2")
//
// A null n (a key with nothing after it) is an empty mapping; keyLine,
// the line of the key n is the value of, is then where a missing key is
// reported. Unknown keys, duplicate keys and merge keys are problems, and
// an unknown key gets a hint: dst's KeyHint, else the closest known key,
// else the list of known keys.
func Decode(n *yaml.Node, keyLine int, what string, dst any) error {
	return DecodeHinted(n, keyLine, what, dst, nil)
}

// DecodeHinted is Decode with one more source of hints for unknown keys,
// asked after dst's KeyHint: hint, if not nil.
func DecodeHinted(n *yaml.Node, keyLine int, what string, dst any, hint func(key string) string) error {
	var p Problems
	n = deref(n)
	line := n.Line
	if IsNull(n) {
		if keyLine > 0 {
			line = keyLine
		}
		n = &yaml.Node{Kind: yaml.MappingNode}
	}
	if n.Kind != yaml.MappingNode {
		p.At(n.Line, "%s must be a mapping of keys to values, not %s", what, Describe(n))
		return p.Err()
	}
	v := reflect.ValueOf(dst).Elem()
	t := v.Type()
	var known []string
	index := map[string]int{}
	for i := range t.NumField() {
		if key := t.Field(i).Tag.Get("yaml"); key != "" {
			known = append(known, key)
			index[key] = i
		}
	}
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.At(k.Line, "%s: a key must be a plain name, not %s", what, Describe(k))
			continue
		}
		name := k.Value
		fi, isField := index[name]
		switch {
		case name == "<<":
			p.At(k.Line, "%s: merge keys (<<) are not supported; repeat the keys or use an alias for the whole value", what)
			continue
		case !isField:
			why := ""
			if h, ok := dst.(KeyHinter); ok {
				why = h.KeyHint(name)
			}
			if why == "" && hint != nil {
				why = hint(name)
			}
			p.At(k.Line, "unknown key %q in %s%s", name, what, Suggest(name, known, why))
			continue
		case seen[name] != nil:
			p.At(k.Line, "%s: duplicate key %q (first at line %d)", what, name, seen[name].Line)
			continue
		}
		seen[name] = k
		f := t.Field(fi)
		subject := f.Tag.Get("label")
		if subject == "" {
			subject = what + " " + name
		}
		ptr := v.Field(fi).Addr()
		if ptr.Type().Implements(unmarshalerType) {
			if err := decodeValue(val, ptr.Interface()); err != nil {
				at := 0
				if IsNull(deref(val)) {
					// "key:" with nothing after it: the problem is
					// on the key's line, whatever line YAML gives
					// the empty value.
					at = k.Line
				}
				p.addNamed(err, subject, what, f.Tag.Get("item"), at)
			}
			continue
		}
		if f.Type.Kind() != reflect.Struct {
			panic(fmt.Sprintf("settings: field %s.%s neither decodes itself nor is a struct", t, f.Name))
		}
		p.Add(Decode(val, k.Line, subject, ptr.Interface()))
	}
	for _, key := range known {
		if seen[key] == nil && t.Field(index[key]).Tag.Get("need") == "true" {
			p.At(line, "%s needs %q", what, key)
		}
	}
	return p.Err()
}

// decodeValue decodes n into v, which decodes itself. It calls v's
// UnmarshalYAML directly, because yaml.v3 does not for a null node (it
// zeroes v), and an empty value must be a problem where one is needed.
func decodeValue(n *yaml.Node, v any) error {
	return v.(yaml.Unmarshaler).UnmarshalYAML(deref(n))
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// Suggest returns a hint for an unknown name: the given hint, else the
// closest known name, else the list of known names. Case is ignored in
// finding the closest, so that "eio" suggests "EIO" as "Read" does "read".
func Suggest(name string, known []string, hint string) string {
	if hint != "" {
		return "; " + hint
	}
	best, bestDist := "", 3
	for _, k := range known {
		if dist := editDistance(strings.ToLower(name), strings.ToLower(k)); dist < bestDist {
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
