package control

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/stackd/stackd/settings"
)

// FormatStatus writes st as `stackd status` prints it: the server's
// figures, then each export's tree in the shape of `stackd check`'s, one
// node a line with its kind, size, pool and live state, and its path (for
// `stackd leg` and `stackd fault`) in a column on the right:
//
//	server: 1 connection, payload 0B of 256MiB in use
//	default (1GiB, default)
//	  split 1GiB requests=12 pool=0/1024 punted=0 rescued=0  default/split
//	    mirror 1GiB requests=12 pool=0/1024 punted=0 rescued=0  default/split/mirror
//	      memory 1GiB requests=12 [in_sync]                  default/split/mirror/leg0
//	      memory 1GiB requests=3 [resyncing 12.5% resync=256MiB/s]  default/split/mirror/leg1
//
// A node's state is printed in the order its fields come, as words:
// key=value, a field named "state" or "percent" by its value alone. A state with a
// "legs" list of one entry per leg has each entry printed beside its leg,
// in brackets, rather than on the layer's line. Numbers are shown in
// units by their key: "percent" as a percentage, "…_bytes" as a size,
// "…_bytes_per_second" as a rate, each with the suffix dropped.
func FormatStatus(w io.Writer, st Status) {
	var lines [][2]string // the words, and the path
	if s := st.Server; s != nil {
		conns := "connections"
		if s.ConnectionsOpen == 1 {
			conns = "connection"
		}
		line := fmt.Sprintf("server: %d %s, payload %s of %s in use", s.ConnectionsOpen, conns,
			humanBytes(float64(s.PayloadInUseBytes)), humanBytes(float64(s.PayloadCapacityBytes)))
		if s.ConnectionsRejected > 0 {
			line += fmt.Sprintf(", %d connections rejected", s.ConnectionsRejected)
		}
		lines = append(lines, [2]string{line, ""})
	}
	for _, e := range st.Exports {
		attrs := []string{settings.FormatSize(e.Size)}
		if e.Default {
			attrs = append(attrs, "default")
		}
		if e.ReadOnly {
			attrs = append(attrs, "read-only")
		}
		lines = append(lines, [2]string{fmt.Sprintf("%s (%s)", settings.Word(e.Name), strings.Join(attrs, ", ")), ""})
		lines = formatNode(lines, e.Root, 1, nil)
	}
	width := 0
	for _, l := range lines {
		if l[1] != "" {
			width = max(width, len(l[0]))
		}
	}
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l[0])
		if l[1] != "" {
			b.WriteString(strings.Repeat(" ", width-len(l[0])+2))
			b.WriteString(l[1])
		}
		b.WriteByte('\n')
	}
	io.WriteString(w, b.String())
}

// formatNode appends n's line and its legs'; fromParent is what n's
// parent's state says of n, if anything.
func formatNode(lines [][2]string, n NodeStatus, depth int, fromParent []string) [][2]string {
	words := []string{n.Kind, settings.FormatSize(n.Size), fmt.Sprintf("requests=%d", n.Requests)}
	if n.Errors > 0 {
		words = append(words, fmt.Sprintf("errors=%d", n.Errors))
	}
	if p := n.Pool; p != nil {
		words = append(words, fmt.Sprintf("pool=%d/%d", p.InUse, p.Capacity), fmt.Sprintf("punted=%d", p.Punted), fmt.Sprintf("rescued=%d", p.Rescued))
		if p.RescueQueue > 0 {
			words = append(words, fmt.Sprintf("rescue_queue=%d", p.RescueQueue))
		}
		if p.Waits > 0 {
			words = append(words, fmt.Sprintf("waits=%d", p.Waits))
		}
		if !p.Rescuer {
			words = append(words, "rescuer=off")
		}
	}
	var perLeg [][]string
	if n.StateError != "" {
		words = append(words, "state_error="+strconv.Quote(n.StateError))
	} else if len(n.State) > 0 {
		fields, ok := parseObject(n.State)
		if !ok {
			words = append(words, "state="+string(n.State))
		}
		for _, f := range fields {
			if legs, ok := f.val.([]any); ok && f.key == "legs" && len(legs) == len(n.Legs) {
				for _, l := range legs {
					perLeg = append(perLeg, valueWords("", l))
				}
				continue
			}
			words = append(words, fieldWords(f.key, f.val)...)
		}
	}
	if len(fromParent) > 0 {
		words = append(words, "["+strings.Join(fromParent, " ")+"]")
	}
	lines = append(lines, [2]string{strings.Repeat("  ", depth) + strings.Join(words, " "), n.Path})
	for i, l := range n.Legs {
		var mine []string
		if perLeg != nil {
			mine = perLeg[i]
		}
		lines = formatNode(lines, l, depth+1, mine)
	}
	return lines
}

// field is one member of a JSON object, in the order it came.
type field struct {
	key string
	// val is a []field (an object), a []any (an array), a json.Number,
	// a string, a bool or nil.
	val any
}

// parseObject decodes a JSON object keeping the order of its members,
// which encoding/json's maps would lose: a state's author orders its
// fields to be read that way.
func parseObject(data []byte) ([]field, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := parseValue(dec)
	obj, ok := v.([]field)
	return obj, err == nil && ok
}

func parseValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch tok {
	case json.Delim('{'):
		var obj []field
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return nil, err
			}
			v, err := parseValue(dec)
			if err != nil {
				return nil, err
			}
			obj = append(obj, field{key: k.(string), val: v})
		}
		_, err := dec.Token() // '}'
		return obj, err
	case json.Delim('['):
		arr := []any{}
		for dec.More() {
			v, err := parseValue(dec)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		_, err := dec.Token() // ']'
		return arr, err
	}
	return tok, nil
}

// fieldWords is one field as words: nested objects' members under
// dotted keys, arrays in brackets.
func fieldWords(key string, v any) []string {
	switch v := v.(type) {
	case []field:
		var words []string
		for _, f := range v {
			words = append(words, fieldWords(key+"."+f.key, f.val)...)
		}
		return words
	case []any:
		var items []string
		for _, x := range v {
			items = append(items, strings.Join(valueWords("", x), " "))
		}
		return []string{key + "=[" + strings.Join(items, ", ") + "]"}
	}
	base := key[strings.LastIndexByte(key, '.')+1:]
	val := scalar(base, v)
	if base == "state" || base == "percent" {
		return []string{val}
	}
	name := key
	for _, suffix := range []string{"_bytes_per_second", "_bytes", "_percent"} {
		if n, ok := strings.CutSuffix(name, suffix); ok {
			name = n
			break
		}
	}
	return []string{name + "=" + val}
}

// valueWords is a value as words: an object's fields, or the value.
func valueWords(key string, v any) []string {
	if obj, ok := v.([]field); ok {
		var words []string
		for _, f := range obj {
			words = append(words, fieldWords(f.key, f.val)...)
		}
		return words
	}
	return []string{scalar(key, v)}
}

// scalar formats a JSON scalar in the unit its key names.
func scalar(key string, v any) string {
	switch v := v.(type) {
	case json.Number:
		f, err := v.Float64()
		if err != nil {
			return v.String()
		}
		switch {
		case key == "percent" || strings.HasSuffix(key, "_percent"):
			return strconv.FormatFloat(f, 'f', -1, 64) + "%"
		case strings.HasSuffix(key, "_bytes_per_second"):
			return humanBytes(f) + "/s"
		case strings.HasSuffix(key, "_bytes"):
			return humanBytes(f)
		}
		return v.String()
	case string:
		return settings.Word(v)
	case nil:
		return "null"
	}
	return fmt.Sprint(v)
}

// humanBytes is n in the largest binary unit it reaches, to one decimal
// unless whole: figures that change, unlike configured sizes, which
// settings.FormatSize prints exactly.
func humanBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if n == float64(int64(n)) {
		return strconv.FormatInt(int64(n), 10) + units[i]
	}
	return strconv.FormatFloat(n, 'f', 1, 64) + units[i]
}
