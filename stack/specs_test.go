package stack

import (
	"time"

	"github.com/stackd/stackd/settings"
)

// Specs made in Go, as the tests build them: the settings of each kind
// with no lines.

func splitSpec(maxBytes, boundary uint64, pool PoolSpec, leg Spec) Spec {
	return Spec{Config: &SplitConfig{MaxBytes: settings.Size{Bytes: maxBytes}, Boundary: settings.Size{Bytes: boundary}, Pool: pool, Leg: Leg{leg}}}
}

func stripeSpec(chunk uint64, pool PoolSpec, legs ...Spec) Spec {
	return Spec{Config: &StripeConfig{Chunk: settings.Size{Bytes: chunk}, Pool: pool, Legs: settings.List[Spec]{Items: legs}}}
}

func linearSpec(pool PoolSpec, legs ...Spec) Spec {
	return Spec{Config: &LinearConfig{Pool: pool, Legs: settings.List[Spec]{Items: legs}}}
}

func memorySpec(size, chunk uint64) Spec {
	return Spec{Config: &MemoryConfig{Size: settings.Size{Bytes: size}, Chunk: settings.Size{Bytes: chunk}}}
}

func fileSpec(path string, size uint64) Spec {
	return Spec{Config: &FileConfig{Path: settings.String{S: path}, Size: settings.Size{Bytes: size}}}
}

func poolOf(capacity int) PoolSpec { return PoolSpec{Capacity: settings.Int{N: int64(capacity)}} }

func delaySpec(l DelayLatencies, leg Spec) Spec {
	return Spec{Config: &DelayConfig{
		Read: settings.Duration{D: l.Read}, Write: settings.Duration{D: l.Write},
		Flush: settings.Duration{D: l.Flush}, Other: settings.Duration{D: l.Other}, Leg: Leg{leg},
	}}
}

// given marks a setting as written in a configuration, where a kind
// tells a value given from an absent one by its line.
var given = settings.Pos{Line: 1}

// errorSpec is an error node with every setting given.
func errorSpec(o ErrorOptions, leg Spec) Spec {
	c := &ErrorConfig{
		Rate: settings.Float{F: o.Rate, Pos: given}, Seed: settings.Int{N: int64(o.Seed), Pos: given},
		Errno: settings.String{S: "EIO", Pos: given}, Leg: Leg{leg},
	}
	for _, e := range errnos {
		if e.errno == o.Errno {
			c.Errno.S = e.name
		}
	}
	for _, op := range o.Ops {
		c.Ops.Items = append(c.Ops.Items, settings.String{S: op.String(), Pos: given})
	}
	for _, r := range o.Ranges {
		c.Ranges.Items = append(c.Ranges.Items, RangeSetting{
			Offset: settings.Size{Bytes: r.Offset, Pos: given}, Length: settings.Size{Bytes: r.Length, Pos: given}, Line: 1})
	}
	return Spec{Config: c}
}

// flakeySpec is a flakey node on the clock now (nil: the real one).
func flakeySpec(o FlakeyOptions, leg Spec) Spec {
	c := FlakeyConfig{
		Up: settings.Duration{D: o.Up, Pos: given}, Down: settings.Duration{D: o.Down, Pos: given},
		Mode: settings.String{S: o.Mode.String(), Pos: given}, Leg: Leg{leg},
	}
	if o.Now == nil {
		return Spec{Config: &c}
	}
	return Spec{Config: &clockedFlakeyConfig{c, o.Now}}
}

// clockedFlakeyConfig builds a flakey node on a clock of the test's.
type clockedFlakeyConfig struct {
	FlakeyConfig
	now func() time.Time
}

func (c *clockedFlakeyConfig) Build(legs []Device, _ BuildContext) (Device, error) {
	return NewFlakey(legs[0], FlakeyOptions{Up: c.Up.D, Down: c.Down.D, Mode: c.mode(), Now: c.now})
}

func mirrorSpec(read string, region uint64, pool PoolSpec, legs ...Spec) Spec {
	return Spec{Config: &MirrorConfig{
		Read:       settings.String{S: read},
		Bitmap:     MirrorBitmapConfig{Region: settings.Size{Bytes: region}},
		ResyncRate: settings.String{S: "1TiB/s"},
		Pool:       pool,
		Legs:       settings.List[Spec]{Items: legs},
	}}
}
