// Package settings decodes YAML into typed settings structs and keeps the
// line of every value, so that a problem found while decoding, or later
// while checking a value against its neighbours, can be reported as
// FILE:LINE: reason. Package stack declares each node kind's settings with
// these types; package configs decodes the rest of a configuration with
// them and turns the problems into messages that name the file.
//
// Decoding never stops at the first problem: every value that can be
// decoded is, and every problem is collected, so that one run of
// `stackd check` reports them all. A value that could not be decoded is
// left with Line 0, as if absent, and its problem is already reported:
// checks of that value skip it rather than report it twice.
package settings

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is one problem at a line of a configuration (1-based; 0 when the
// problem has no line).
//
// A problem found by a value's own decoder (a Size that is not a size) is
// phrased to follow the value's name, which only the mapping holding the
// value knows ("memory size" + " must be greater than zero"): it is
// relative until Decode prefixes the name, and Msg starts with the rest of
// the sentence.
type Error struct {
	Line int
	Msg  string
	// relative: Msg still lacks its subject. index > 0: the problem is
	// with item index of a list, which names it after the list's item tag.
	relative bool
	index    int
}

func (e *Error) Error() string {
	if e.Line <= 0 {
		return e.Msg
	}
	return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
}

// Invalid returns a relative problem with the value n: its message, the
// format, follows the value's name, so it starts with " must…" or ": …".
func Invalid(n *yaml.Node, format string, args ...any) error {
	return &Error{Line: n.Line, Msg: fmt.Sprintf(format, args...), relative: true}
}

// Errors is several problems; Problems.Err returns one.
type Errors []*Error

func (l Errors) Error() string {
	msgs := make([]string, len(l))
	for i, e := range l {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Problems collects the problems of a decode.
type Problems struct {
	list Errors
}

// At records a problem at line.
func (p *Problems) At(line int, format string, args ...any) {
	p.list = append(p.list, &Error{Line: line, Msg: fmt.Sprintf(format, args...)})
}

// Add records err: an *Error, a List, or any other error (at no line).
func (p *Problems) Add(err error) {
	var l Errors
	var e *Error
	switch {
	case err == nil:
	case errors.As(err, &l):
		p.list = append(p.list, l...)
	case errors.As(err, &e):
		p.list = append(p.list, e)
	default:
		p.list = append(p.list, &Error{Msg: err.Error()})
	}
}

// addNamed records err, naming what it is about when the problem is
// relative to a value (see Error): subject for the value itself, or for
// item i of a list, item and its number after what. A relative problem
// moves to line at, unless at is 0.
func (p *Problems) addNamed(err error, subject, what, item string, at int) {
	var sub Problems
	sub.Add(err)
	for _, e := range sub.list {
		if e.relative {
			name := subject
			if e.index > 0 && item != "" {
				name = what + " " + item + " " + strconv.Itoa(e.index)
			}
			e.Msg = name + strings.ReplaceAll(e.Msg, "$WHAT", what)
			e.relative, e.index = false, 0
			if at > 0 {
				e.Line = at
			}
		}
		p.list = append(p.list, e)
	}
}

// Len returns how many problems have been recorded.
func (p *Problems) Len() int { return len(p.list) }

// Err returns the problems as Errors in line order (problems on one line
// in the order found), or nil if there are none.
func (p *Problems) Err() error {
	if len(p.list) == 0 {
		return nil
	}
	l := append(Errors(nil), p.list...)
	sort.SliceStable(l, func(i, j int) bool { return l[i].Line < l[j].Line })
	return l
}

// Named decodes n into v (a pointer to a value whose type decodes itself)
// and returns the problems, a relative one named subject. keyLine is the
// line of the key n is the value of: where a problem with a null n is
// reported.
func Named(n *yaml.Node, keyLine int, subject string, v any) error {
	var p Problems
	if err := decodeValue(n, v); err != nil {
		at := 0
		if IsNull(deref(n)) {
			at = keyLine
		}
		p.addNamed(err, subject, subject, "", at)
	}
	return p.Err()
}
