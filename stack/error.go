package stack

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"

	"gopkg.in/yaml.v3"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/settings"
)

// ErrorLayer fails chosen requests with one errno and passes every other
// to its leg unchanged: to test what a client, or a layer above, does with
// a failing disk. It follows dm-error (fail everything), dm-dust (fail
// requests that touch chosen bad blocks) and nbdkit's error filter (fail
// a share of requests, by chance). A request is failed when the layer is
// on, its op is one of the chosen, it touches one of the ranges (if any
// are given), and the draw for it falls under the rate.
//
// The request path takes no lock: the switch is an atomic, the draws come
// from an atomic counter, and the counts are atomic adds. A failed bio is
// ended at once with the chosen errno, stored as an error so that ending
// with it converts and allocates nothing (docs/DESIGN.md rule 6); a bio
// that passes is remapped onto the leg, as delay does, so the layer
// allocates no bio and has no pool.
type ErrorLayer struct {
	FaultStats
	leg   Device
	ops   opSet
	errno error // a syscall.Errno
	// ranges are sorted and neither overlap nor touch (see mergeRanges),
	// so that one binary search finds whether a bio touches any; nil:
	// requests anywhere fail.
	ranges []ByteRange
	// always: the rate is 1, and no draw is needed. Otherwise a request
	// fails when its draw is under threshold (rate × 2⁶⁴).
	always    bool
	threshold uint64
	seed      uint64
	draws     atomic.Uint64
	on        atomic.Bool
}

// ErrorOptions choose what an ErrorLayer fails.
type ErrorOptions struct {
	// Ops are the ops to fail; none: every op.
	Ops []bioset.Op
	// Errno is the error the chosen requests get; 0: EIO.
	Errno syscall.Errno
	// Rate is the chance that a chosen request fails, from 0 (never) to
	// 1 (every one).
	Rate float64
	// Ranges, if any, limit the failures to requests that touch one of
	// them (at least one byte in common); a FLUSH, which has no range,
	// then never fails.
	Ranges []ByteRange
	// Seed starts the sequence of draws, so that a run can be replayed:
	// the same requests in the same order meet the same failures.
	Seed uint64
}

// ByteRange is Length bytes from Offset.
type ByteRange struct{ Offset, Length uint64 }

// opSet is a set of ops, one bit each.
type opSet uint8

func (s opSet) has(op bioset.Op) bool { return s&(1<<op) != 0 }

// NewErrorLayer returns an error layer over leg, switched on.
func NewErrorLayer(leg Device, o ErrorOptions) *ErrorLayer {
	e := &ErrorLayer{leg: leg, errno: syscall.EIO, ranges: mergeRanges(o.Ranges), seed: o.Seed}
	if o.Errno != 0 {
		e.errno = o.Errno
	}
	for _, op := range o.Ops {
		e.ops |= 1 << op
	}
	if len(o.Ops) == 0 {
		e.ops = ^opSet(0)
	}
	switch {
	case o.Rate >= 1:
		e.always = true
	case o.Rate > 0:
		// Below 1, rate × 2⁶⁴ is at most 2⁶⁴ − 2¹¹: it fits.
		e.threshold = uint64(math.Ldexp(o.Rate, 64))
	}
	e.on.Store(true)
	return e
}

// mergeRanges sorts rs and joins the ranges that overlap or touch.
func mergeRanges(rs []ByteRange) []ByteRange {
	if len(rs) == 0 {
		return nil
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b ByteRange) int {
		switch {
		case a.Offset < b.Offset:
			return -1
		case a.Offset > b.Offset:
			return 1
		}
		return 0
	})
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if r.Offset <= last.Offset+last.Length {
			last.Length = max(last.Length, r.Offset+r.Length-last.Offset)
			continue
		}
		out = append(out, r)
	}
	return out
}

func (e *ErrorLayer) Size() uint64      { return e.leg.Size() }
func (e *ErrorLayer) Caps() bioset.Caps { return e.leg.Caps() }
func (e *ErrorLayer) Close() error      { return nil }

// Submit implements bioset.Queue.
func (e *ErrorLayer) Submit(s *bioset.Submitter, b *bioset.Bio) {
	if e.fails(b) {
		e.failed.Add(1)
		b.End(e.errno)
		return
	}
	remap(s, b, e.leg, b.Offset)
}

// fails decides b's fate. The draw comes last, so that only chosen
// requests use up draws: a replay with the same seed needs only the same
// chosen requests in the same order.
func (e *ErrorLayer) fails(b *bioset.Bio) bool {
	if !e.on.Load() || !e.ops.has(b.Op) || !e.touches(b) {
		return false
	}
	return e.always || drawAt(e.seed, e.draws.Add(1)) < e.threshold
}

// touches reports whether b has a byte in one of the ranges, or there are
// none.
func (e *ErrorLayer) touches(b *bioset.Bio) bool {
	if e.ranges == nil {
		return true
	}
	if !b.Op.HasRange() || b.Length == 0 {
		return false
	}
	// The first range that ends past b's start is the only one that can
	// hold b's first bytes; any later one starts later still.
	i := sort.Search(len(e.ranges), func(i int) bool {
		r := e.ranges[i]
		return r.Offset+r.Length > b.Offset
	})
	return i < len(e.ranges) && e.ranges[i].Offset < b.Offset+b.Length
}

// drawAt is the n-th number of the sequence seed starts: SplitMix64's
// output function over a Weyl sequence, so that any number of goroutines
// can draw with one atomic add and no lock, and a seed replays.
func drawAt(seed, n uint64) uint64 {
	z := seed + n*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// State implements Controlled.
func (e *ErrorLayer) State() any {
	return FaultState{Kind: KindError, Enabled: e.on.Load(), Failed: e.Failed(), Dropped: e.Dropped()}
}

// Act implements Controlled: on and off switch the layer. An error layer
// has no down period, so down-now is refused rather than given a second
// meaning: "on" already fails every chosen request from now on.
func (e *ErrorLayer) Act(action string, leg int) error {
	switch action {
	case ActionOn, ActionOff:
	case ActionDownNow:
		return fmt.Errorf("%w %q: an error layer has no down period; it fails its chosen requests while %q, and none while %q",
			ErrUnknownAction, action, ActionOn, ActionOff)
	default:
		return fmt.Errorf("%w %q for an error layer; want %q or %q", ErrUnknownAction, action, ActionOn, ActionOff)
	}
	if err := checkSelf(KindError, leg); err != nil {
		return err
	}
	e.on.Store(action == ActionOn)
	return nil
}

// KindError is the error layer's kind.
const KindError = "error"

func init() {
	Register(Kind{New: func() Settings { return new(ErrorConfig) }, Rank: 36, Legs: OneLeg, Example: "ops: [write], errno: EIO"})
}

// errnos are the errors an error layer can give: those NBD carries to a
// client that a failing disk could cause.
var errnos = []struct {
	name  string
	errno syscall.Errno
}{
	{"EIO", syscall.EIO}, {"ENOSPC", syscall.ENOSPC}, {"EPERM", syscall.EPERM},
	{"ENOMEM", syscall.ENOMEM}, {"EINVAL", syscall.EINVAL},
}

func errnoNames() []string {
	names := make([]string, len(errnos))
	for i, e := range errnos {
		names[i] = e.name
	}
	return names
}

// opNamed returns the op whose name (as metrics spell it) is name.
func opNamed(name string) (bioset.Op, bool) {
	for _, op := range bioset.Ops() {
		if op.String() == name {
			return op, true
		}
	}
	return 0, false
}

func opNames() []string {
	var names []string
	for _, op := range bioset.Ops() {
		names = append(names, op.String())
	}
	return names
}

// ErrorConfig is the settings of an error node:
//
//	error: {ops: [write, flush], errno: EIO, rate: 1, ranges: [{offset: 1MiB, length: 64KiB}], seed: 1, leg: NODE}
//
// Every setting but the leg is optional; with none, the layer fails
// every request with EIO, as dm-error does.
type ErrorConfig struct {
	// Ops are the ops to fail: read, write, flush, trim, write_zeroes,
	// cache, block_status (absent: every op).
	Ops settings.List[settings.String] `yaml:"ops" item:"op"`
	// Errno is the error the failed requests get: EIO (the default),
	// ENOSPC, EPERM, ENOMEM or EINVAL.
	Errno settings.String `yaml:"errno"`
	// Rate is the chance that a chosen request fails, 0 to 1 (absent: 1,
	// every one).
	Rate settings.Float `yaml:"rate"`
	// Ranges, if given, fail only the requests that touch one of them
	// (bad sectors, as dm-dust has): each an offset and a positive
	// length, inside the leg. A FLUSH touches none.
	Ranges settings.List[RangeSetting] `yaml:"ranges" item:"range"`
	// Seed starts the draws that the rate decides by, so that a run
	// replays (absent: a different seed each start).
	Seed settings.Int `yaml:"seed"`
	// Leg is the one stack node below.
	Leg Leg `yaml:"leg" need:"true"`
}

// RangeSetting is a range of an error layer: {offset: 1MiB, length: 64KiB}.
type RangeSetting struct {
	Offset settings.Size `yaml:"offset" need:"true"`
	Length settings.Size `yaml:"length" need:"true"`
	// Line is the range's, 0 if it could not be decoded.
	Line int
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (r *RangeSetting) UnmarshalYAML(n *yaml.Node) error {
	*r = RangeSetting{}
	if err := settings.Decode(n, n.Line, KindError+" range", r); err != nil {
		return err
	}
	r.Line = n.Line
	return nil
}

func (c *ErrorConfig) Kind() string     { return KindError }
func (c *ErrorConfig) LegSpecs() []Spec { return []Spec{c.Leg.Spec} }

func (c *ErrorConfig) Check(p *settings.Problems) {
	if c.Ops.Line > 0 && len(c.Ops.Items) == 0 {
		p.At(c.Ops.Line, "error ops is empty; omit it to fail every op")
	}
	for _, o := range c.Ops.Items {
		if _, ok := opNamed(o.S); o.Line > 0 && !ok {
			p.At(o.Line, "error ops: unknown op %q%s", o.S, settings.Suggest(o.S, opNames(), ""))
		}
	}
	if e := c.Errno; e.Line > 0 && !slices.Contains(errnoNames(), e.S) {
		p.At(e.Line, "error errno: unknown errno %q%s", e.S, settings.Suggest(e.S, errnoNames(), ""))
	}
	if r := c.Rate; r.Line > 0 && (r.F < 0 || r.F > 1) {
		p.At(r.Line, "error rate: %s is out of range; want 0 to 1 (1: every chosen request)", r)
	}
	if c.Ranges.Line > 0 && len(c.Ranges.Items) == 0 {
		p.At(c.Ranges.Line, "error ranges is empty; omit it to fail requests anywhere")
	}
	for _, r := range c.Ranges.Items {
		switch {
		case r.Line == 0:
		case r.Length.Bytes == 0:
			p.At(r.Length.Line, "error range length must be greater than zero")
		case r.Offset.Bytes+r.Length.Bytes < r.Offset.Bytes:
			p.At(r.Line, "error range %s+%s ends past 16EiB", r.Offset, r.Length)
		}
	}
}

// NodeSize is the leg's; every range must lie inside it.
func (c *ErrorConfig) NodeSize(legs []Sized) (uint64, error) {
	size := legs[0].Bytes
	for _, r := range c.Ranges.Items {
		if r.Line > 0 && r.Offset.Bytes+r.Length.Bytes > size {
			return 0, sizeError(r.Line, "error range %s+%s runs past the end of its leg (line %d), which is %s",
				r.Offset, r.Length, legs[0].Line, settings.FormatSize(size))
		}
	}
	return size, nil
}

// options turns checked settings into ErrorOptions.
func (c *ErrorConfig) options() ErrorOptions {
	o := ErrorOptions{Rate: 1, Seed: rand.Uint64()}
	for _, s := range c.Ops.Items {
		op, _ := opNamed(s.S)
		o.Ops = append(o.Ops, op)
	}
	for _, e := range errnos {
		if e.name == c.Errno.S {
			o.Errno = e.errno
		}
	}
	if c.Rate.Line > 0 {
		o.Rate = c.Rate.F
	}
	for _, r := range c.Ranges.Items {
		o.Ranges = append(o.Ranges, ByteRange{r.Offset.Bytes, r.Length.Bytes})
	}
	if c.Seed.Line > 0 {
		o.Seed = uint64(c.Seed.N)
	}
	return o
}

func (c *ErrorConfig) Build(legs []Device, _ BuildContext) (Device, error) {
	return NewErrorLayer(legs[0], c.options()), nil
}

func (c *ErrorConfig) Describe() []string {
	var words []string
	if len(c.Ops.Items) > 0 {
		var ops []string
		for _, o := range c.Ops.Items {
			ops = append(ops, o.S)
		}
		words = append(words, "ops="+strings.Join(ops, ","))
	}
	errno := "EIO"
	if c.Errno.S != "" {
		errno = c.Errno.S
	}
	words = append(words, "errno="+errno)
	if c.Rate.Line > 0 {
		words = append(words, "rate="+c.Rate.String())
	}
	if len(c.Ranges.Items) > 0 {
		var rs []string
		for _, r := range c.Ranges.Items {
			rs = append(rs, r.Offset.String()+"+"+r.Length.String())
		}
		words = append(words, "ranges="+strings.Join(rs, ","))
	}
	if c.Seed.Line > 0 {
		words = append(words, "seed="+c.Seed.String())
	}
	return words
}
