package stack

import "github.com/stackd/stackd/settings"

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

func mirrorSpec(read string, region uint64, pool PoolSpec, legs ...Spec) Spec {
	return Spec{Config: &MirrorConfig{
		Read:       settings.String{S: read},
		Bitmap:     MirrorBitmapConfig{Region: settings.Size{Bytes: region}},
		ResyncRate: settings.String{S: "1TiB/s"},
		Pool:       pool,
		Legs:       settings.List[Spec]{Items: legs},
	}}
}
