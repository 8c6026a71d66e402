package stack

import (
	"sync"
	"syscall"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/settings"
)

// Delay holds each bio for a latency chosen by its op before passing it,
// unchanged, to its leg, like dm-delay: to model a slow disk or a distant
// one, and to keep requests in flight for as long as a test needs.
//
// The latency is counted from a bio's arrival, so it models latency and
// not a throughput cap: a burst of any size completes about one latency
// after it arrived, as on a device with a deep queue.
//
// No goroutine waits per bio. Submit puts the bio in a heap ordered by the
// time it is due and returns at once (docs/DESIGN.md rule 8); one worker
// goroutine sleeps until the earliest is due and submits the due bios to
// the leg on a Submitter of its own, like a rescuer. The heap grows rather
// than blocks, and is bounded anyway by the bounded pools every bio in it
// came from (rule 7). The delay allocates no bio: it remaps each one to its
// leg, whose completion goes up the chain as if the delay were not there,
// so End is untouched (rule 6).
type Delay struct {
	leg     Device
	latency [bioset.NumOps]time.Duration

	mu      sync.Mutex
	pending []delayed // a min-heap by due
	closed  bool
	// wake tells the worker that the earliest due time moved earlier, or
	// that the delay is closing. A buffered slot: a send never waits, and
	// one pending wake-up is as good as many.
	wake chan struct{}
	done chan struct{}
}

type delayed struct {
	due time.Time
	b   *bioset.Bio
}

// DelayLatencies are a Delay's latencies by op: FLUSH, READ, WRITE, and
// every other op (TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS).
type DelayLatencies struct {
	Read, Write, Flush, Other time.Duration
}

// NewDelay returns a delay over leg.
func NewDelay(leg Device, l DelayLatencies) *Delay {
	d := &Delay{leg: leg, wake: make(chan struct{}, 1), done: make(chan struct{})}
	for _, op := range bioset.Ops() {
		switch op {
		case bioset.OpRead:
			d.latency[op] = l.Read
		case bioset.OpWrite:
			d.latency[op] = l.Write
		case bioset.OpFlush:
			d.latency[op] = l.Flush
		default:
			d.latency[op] = l.Other
		}
	}
	go d.run()
	return d
}

func (d *Delay) Size() uint64      { return d.leg.Size() }
func (d *Delay) Caps() bioset.Caps { return d.leg.Caps() }

// Close stops the worker. It comes after the last bio, so nothing is
// pending; a bio that is anyway is ended with ESHUTDOWN rather than left
// without an End.
func (d *Delay) Close() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.signal()
	<-d.done
	return nil
}

// Submit implements bioset.Queue.
func (d *Delay) Submit(s *bioset.Submitter, b *bioset.Bio) {
	lat := d.latency[b.Op]
	if lat <= 0 {
		remap(s, b, d.leg, b.Offset)
		return
	}
	due := time.Now().Add(lat)
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		b.End(syscall.ESHUTDOWN) // a caller bug; never leave a bio hanging
		return
	}
	d.push(delayed{due: due, b: b})
	earliest := d.pending[0].b == b
	d.mu.Unlock()
	if earliest {
		d.signal()
	}
}

func (d *Delay) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// run is the worker: it submits each bio once it is due.
func (d *Delay) run() {
	defer close(d.done)
	var s bioset.Submitter
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		d.mu.Lock()
		now := time.Now()
		for len(d.pending) > 0 && !d.pending[0].due.After(now) {
			b := d.pop()
			d.mu.Unlock()
			// The leg may allocate from its own pool and wait there;
			// the bios still pending wait with it, as a rescuer's do,
			// and that wait ends (docs/DESIGN.md rule 5).
			remap(&s, b, d.leg, b.Offset)
			d.mu.Lock()
		}
		if d.closed {
			for len(d.pending) > 0 {
				d.pop().End(syscall.ESHUTDOWN)
			}
			d.mu.Unlock()
			return
		}
		wait := time.Duration(-1)
		if len(d.pending) > 0 {
			wait = d.pending[0].due.Sub(now)
		}
		d.mu.Unlock()
		if wait < 0 {
			<-d.wake
			continue
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-d.wake:
			timer.Stop()
		}
	}
}

// push and pop keep pending a binary min-heap by due, by hand rather than
// with container/heap, whose interface would allocate for every bio.
func (d *Delay) push(x delayed) {
	h := append(d.pending, x)
	for i := len(h) - 1; i > 0; {
		parent := (i - 1) / 2
		if !h[i].due.Before(h[parent].due) {
			break
		}
		h[i], h[parent] = h[parent], h[i]
		i = parent
	}
	d.pending = h
}

func (d *Delay) pop() *bioset.Bio {
	h := d.pending
	top := h[0].b
	last := len(h) - 1
	h[0] = h[last]
	h[last] = delayed{} // pin no bio once it is gone
	h = h[:last]
	for i := 0; ; {
		least, l, r := i, 2*i+1, 2*i+2
		if l < len(h) && h[l].due.Before(h[least].due) {
			least = l
		}
		if r < len(h) && h[r].due.Before(h[least].due) {
			least = r
		}
		if least == i {
			break
		}
		h[i], h[least] = h[least], h[i]
		i = least
	}
	d.pending = h
	return top
}

// KindDelay is the delay layer's kind.
const KindDelay = "delay"

func init() {
	Register(Kind{New: func() Settings { return new(DelayConfig) }, Rank: 35, Legs: OneLeg, Example: "read: 1ms, write: 1ms"})
}

// DelayConfig is the settings of a delay node:
//
//	delay: {read: 1ms, write: 1ms, flush: 0s, other: 0s, leg: NODE}
//
// Each latency is optional (absent: none), a duration such as 1ms.
type DelayConfig struct {
	// Read delays READ.
	Read settings.Duration `yaml:"read"`
	// Write delays WRITE.
	Write settings.Duration `yaml:"write"`
	// Flush delays FLUSH.
	Flush settings.Duration `yaml:"flush"`
	// Other delays every other op: TRIM, WRITE_ZEROES, CACHE and
	// BLOCK_STATUS.
	Other settings.Duration `yaml:"other"`
	// Leg is the one stack node below.
	Leg Leg `yaml:"leg" need:"true"`
}

func (c *DelayConfig) Kind() string                          { return KindDelay }
func (c *DelayConfig) LegSpecs() []Spec                      { return []Spec{c.Leg.Spec} }
func (c *DelayConfig) Check(p *settings.Problems)            {}
func (c *DelayConfig) NodeSize(legs []Sized) (uint64, error) { return legs[0].Bytes, nil }
func (c *DelayConfig) latencies() DelayLatencies {
	return DelayLatencies{c.Read.D, c.Write.D, c.Flush.D, c.Other.D}
}
func (c *DelayConfig) Build(legs []Device, _ BuildContext) (Device, error) {
	return NewDelay(legs[0], c.latencies()), nil
}

func (c *DelayConfig) Describe() []string {
	var words []string
	for _, v := range []struct {
		key string
		d   settings.Duration
	}{{"read", c.Read}, {"write", c.Write}, {"flush", c.Flush}, {"other", c.Other}} {
		if v.d.D != 0 {
			words = append(words, v.key+"="+v.d.String())
		}
	}
	return words
}
