package stack

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/bits"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/internal/intrusive"
	"github.com/stackd/stackd/settings"
)

// Mirror is RAID1 over legs of equal size, after Linux md raid1 and
// dm-raid1: every write goes to every leg that has the data, a read to one
// of them, and a leg that fails is set aside (faulty) while the others
// serve. A write-intent bitmap remembers the regions that may differ
// between the legs, so that a leg that comes back, or a restart after a
// crash, copies only those (resync). docs/DESIGN.md, "Mirror", gives the
// orderings and why they hold; the comments here say where each is kept.
//
// Children are not chained to their parent: a chained child's error
// becomes its parent's, and a mirror must be able to lose a leg's answer
// and still succeed. So each child carries its request's mirrorIO and its
// leg in Private, ends through the mirror's own endIO, which notes the leg's
// answer and frees the child, and the last child of a request ends the
// parent with the mirror's verdict.
//
// Two goroutines of the mirror's own do what completion may not (it must
// neither allocate nor wait: docs/DESIGN.md rule 6) and what Submit may
// not (it waits for nothing but Alloc: rule 8): the worker (work) writes
// the bitmap file, submits the writes whose bits became durable or whose
// region was unlocked, retries failed reads on another leg, logs leg state
// changes and clears idle bits; the resyncer (resync) copies dirty regions
// to legs that are behind. Both allocate only from the mirror's pool and
// submit on Submitters of their own, like a rescuer.
type Mirror struct {
	layer
	path       string
	log        *slog.Logger
	legs       []mirrorLeg
	policy     readPolicy
	region     uint64
	regions    int
	rate       uint64 // resync bytes a second
	clearEvery time.Duration
	file       *bitmapFile // nil: the bitmap is in memory only

	// insync and writable are the legs in_sync, and in_sync or
	// resyncing, as bit masks: read without the lock on the request
	// path, changed only under mu.
	insync   atomic.Uint64
	writable atomic.Uint64
	rr       atomic.Uint64 // round-robin's turn

	// The completion functions and the ios, bound and pooled once, so that
	// a request allocates nothing in steady state.
	readEnd, writeEnd func(*bioset.Bio)
	ios               sync.Pool

	mu sync.Mutex
	// dirty: regions that may differ between the legs, or that a write in
	// flight may leave different. A bit is set before any write to its
	// region is submitted, and cleared only when every leg is in_sync and
	// no write to the region has been seen for one whole clearing
	// interval (touched).
	dirty    regionBits
	touched  regionBits
	inflight []uint32 // writes admitted, and not yet ended, per region
	// durable: the bits the file holds as dirty (with a file). A write is
	// submitted only when all its regions are durable; a bit becomes
	// durable when the worker has written and synced its block.
	durable      regionBits
	changed      map[int]struct{} // blocks of bits to write at the next flush
	headerGen    uint64           // leg state changes made
	headerSynced uint64           // of those, what the file holds
	events       uint64           // the file header's events count

	locked      int       // the region the resyncer copies, or -1
	lockDrained sync.Cond // the resyncer waits on it for locked's writes to end
	blocked     ioList    // writes waiting for the locked region
	awaitFlush  ioList    // writes waiting for their bits to be durable
	awaitHeader ioList    // ends waiting for a leg's failure to be durable
	work        ioList    // for the worker: stage says what to do

	changes []legChange // for the worker to log; see noteChange
	dropped int         // changes not logged for want of room

	resyncing   bool   // a pass is running
	restart     bool   // a leg joined the pass: start again from region 0
	cursor      int    // the pass's next region
	resyncDone  uint64 // bytes copied, over all passes
	resyncStart time.Time
	resyncPass  uint64 // bytes copied in this pass
	passTargets uint64 // the legs this pass copies to

	closed     bool
	crashed    bool
	wake       chan struct{}
	resyncWake chan struct{}
	stop       chan struct{}
	wg         sync.WaitGroup
}

// mirrorMaxLegs bounds a mirror's legs, which it keeps as bits of a
// uint64 mask and as bytes of the bitmap header.
const mirrorMaxLegs = 32

type legState uint8

const (
	legInSync legState = iota
	legFaulty
	legResyncing
)

var legStateNames = [...]string{"in_sync", "faulty", "resyncing"}

func (s legState) String() string { return legStateNames[s] }

// MirrorLegStates lists the states a mirror leg can be in, for metrics.
func MirrorLegStates() []string { return legStateNames[:] }

type mirrorLeg struct {
	dev     Device
	state   legState // guarded by Mirror.mu
	pending atomic.Int64
	// retried counts the reads that failed on this leg and were tried on
	// another.
	retried atomic.Uint64
	// resynced counts the bytes the resyncer wrote to this leg.
	resynced atomic.Uint64
}

type legChange struct {
	leg      int
	from, to legState
	reason   string
	err      error // what failed the leg, or nil
}

// writeFailed are failLeg's reasons for the ops a mirror writes with.
var writeFailed = [bioset.NumOps]string{
	bioset.OpWrite:       "a write failed",
	bioset.OpTrim:        "a trim failed",
	bioset.OpWriteZeroes: "a write_zeroes failed",
	bioset.OpFlush:       "a flush failed",
}

type readPolicy uint8

const (
	readRoundRobin readPolicy = iota
	readFirst
	readLeastPending
)

var readPolicyNames = [...]string{"round-robin", "first", "least-pending"}

func parseReadPolicy(s string) (readPolicy, bool) {
	if s == "" {
		return readRoundRobin, true
	}
	for i, n := range readPolicyNames {
		if n == s {
			return readPolicy(i), true
		}
	}
	return 0, false
}

// mirrorIO is one client request while the mirror serves it.
type mirrorIO struct {
	parent  *bioset.Bio
	link    intrusive.Link[mirrorIO] // on one of the mirror's ioLists
	stage   ioStage
	lo, hi  int // regions a write covers; hi < lo for none (FLUSH)
	pending atomic.Int32
	ok      atomic.Uint64
	errno   atomic.Uint32
	tried   uint64 // a read's legs tried so far
	leg     int    // a read's next leg
	gen     uint64 // the header generation an end waits for
	// legs are what the children's Private point to: the request and the
	// child's leg. The layers below may remap a child's Dev, so the leg
	// cannot be found from it; and pointing into io allocates nothing.
	legs [mirrorMaxLegs]legRef
}

type legRef struct {
	io  *mirrorIO
	leg int
}

// ref is what a child of io to leg carries in Private.
func (io *mirrorIO) ref(leg int) *legRef {
	r := &io.legs[leg]
	r.io, r.leg = io, leg
	return r
}

type ioStage uint8

const (
	stageAdmit ioStage = iota // run admission again (the region was unlocked)
	stageRetry                // submit the read to io.leg
)

// ioList is an intrusive list of mirrorIOs: queueing never allocates.
type ioList = intrusive.List[mirrorIO]

// MirrorOptions configure NewMirror.
type MirrorOptions struct {
	// Read is the read policy: "round-robin" (absent), "first" or
	// "least-pending".
	Read string
	// Region is the bitmap's unit (absent: DefaultMirrorRegion).
	Region uint64
	// BitmapPath is the bitmap file; "" keeps the bitmap in memory.
	BitmapPath string
	// ResyncRate caps the resync in bytes a second (absent:
	// DefaultResyncRate).
	ResyncRate uint64
	// ClearInterval is how often idle bits are cleared, md's
	// daemon_sleep (absent: DefaultClearInterval; negative: never, for
	// tests that clear by hand).
	ClearInterval time.Duration
	Pool          bioset.Options
	// Log receives the legs' state changes (absent: slog.Default()).
	Log *slog.Logger
	// ReadOnly: the mirror serves a read-only export, whose legs are
	// opened read-only. It takes them as they are: every leg in sync,
	// nothing to resync, and no bitmap file, which it could not keep.
	ReadOnly bool
}

// The mirror's defaults.
const (
	DefaultMirrorRegion  = 64 << 10
	DefaultResyncRate    = 256 << 20
	DefaultClearInterval = 5 * time.Second
	// maxMirrorRegions bounds the bitmap's memory: about 4.4 bytes a
	// region (a counter and three bits), so at most about 300 MiB.
	maxMirrorRegions = 1 << 26
)

// NewMirror returns a mirror over legs of equal size. With no record of
// the legs (no bitmap file, or a new one), leg 0 is taken as the data and
// every other leg resyncs from it in the background; with a bitmap file,
// the legs it says are behind resync its dirty regions, and after a crash
// (the file not marked clean) every leg but the first in sync does.
func NewMirror(legs []Device, o MirrorOptions) (*Mirror, error) {
	if len(legs) < 2 || len(legs) > mirrorMaxLegs {
		return nil, fmt.Errorf("mirror: %d legs; want 2 to %d", len(legs), mirrorMaxLegs)
	}
	size := legs[0].Size()
	for i, l := range legs {
		if l.Size() != size {
			return nil, fmt.Errorf("mirror: leg %d is %d bytes, leg 0 is %d: legs must be of equal size", i, l.Size(), size)
		}
	}
	policy, ok := parseReadPolicy(o.Read)
	if !ok {
		return nil, fmt.Errorf("mirror: unknown read policy %q", o.Read)
	}
	o.Region = cmp.Or(o.Region, DefaultMirrorRegion)
	o.ResyncRate = cmp.Or(o.ResyncRate, DefaultResyncRate)
	o.ClearInterval = cmp.Or(o.ClearInterval, DefaultClearInterval)
	o.Log = cmp.Or(o.Log, slog.Default())
	regions := int((size + o.Region - 1) / o.Region)
	if regions > maxMirrorRegions {
		return nil, fmt.Errorf("mirror: %d regions of %d bytes; at most %d: use a larger region", regions, o.Region, maxMirrorRegions)
	}
	m := &Mirror{
		layer:      layer{size: size, caps: legCaps(legs)},
		path:       o.Pool.Name,
		log:        o.Log.With("layer", o.Pool.Name),
		legs:       make([]mirrorLeg, len(legs)),
		policy:     policy,
		region:     o.Region,
		regions:    regions,
		rate:       o.ResyncRate,
		clearEvery: o.ClearInterval,
		dirty:      newRegionBits(regions),
		touched:    newRegionBits(regions),
		inflight:   make([]uint32, regions),
		changed:    map[int]struct{}{},
		locked:     -1,
		changes:    make([]legChange, 0, 4*len(legs)),
		wake:       make(chan struct{}, 1),
		resyncWake: make(chan struct{}, 1),
		stop:       make(chan struct{}),
	}
	m.lockDrained.L = &m.mu
	m.ios.New = func() any { return new(mirrorIO) }
	m.readEnd, m.writeEnd = m.endRead, m.endWrite
	for i, l := range legs {
		m.legs[i].dev = l
	}
	states := make([]legState, len(legs))
	if !o.ReadOnly {
		var err error
		if states, err = m.openRecord(o.BitmapPath, size); err != nil {
			return nil, err
		}
	}
	for i, st := range states {
		m.legs[i].state = st
		if st != legInSync {
			m.log.Info("mirror leg behind at start", "leg", i, "state", st.String())
		}
	}
	m.updateMasks()
	m.pool = bioset.New(o.Pool)
	m.wg.Add(2)
	go m.run()
	go m.resync()
	m.kick()
	return m, nil
}

// openRecord reads, or starts, the record of which legs and regions are
// behind, and returns the legs' states to start with.
func (m *Mirror) openRecord(path string, size uint64) ([]legState, error) {
	states := make([]legState, len(m.legs))
	everything := func() []legState {
		// No record: leg 0 is the data, the others copy all of it.
		for r := range m.regions {
			m.dirty.set(r)
		}
		for i := 1; i < len(states); i++ {
			states[i] = legResyncing
		}
		return states
	}
	if path == "" {
		return everything(), nil
	}
	bf, h, bits, fresh, err := openBitmapFile(path, size, m.region, m.regions, len(m.legs))
	if err != nil {
		return nil, err
	}
	m.file = bf
	m.durable = newRegionBits(m.regions)
	if fresh {
		everything()
	} else {
		copy(m.dirty, bits)
		m.events = h.events
		source := -1
		for i, st := range h.legs {
			if st == legInSync && source < 0 {
				source = i
				continue
			}
			if st != legInSync || !h.clean {
				// Behind (the file says so), or perhaps behind
				// (a crash may have left a write on some legs
				// only): copy the dirty regions from the source.
				states[i] = legResyncing
			}
		}
		if source < 0 {
			bf.close()
			return nil, fmt.Errorf("mirror bitmap %s: no leg is in sync; remove the file to resync every leg from leg 0", path)
		}
	}
	// The file now says: not clean (until Close), these states, these
	// bits. Written before the first request, so Build may wait for it.
	copy(m.durable, m.dirty)
	m.events++
	if err := bf.writeBlocks(m.dirty, allBlocks(m.regions)); err == nil {
		err = bf.writeHeader(m.header(states, false))
	}
	if err != nil {
		bf.close()
		return nil, fmt.Errorf("mirror bitmap %s: %w", path, err)
	}
	return states, nil
}

func allBlocks(regions int) []int {
	n := bitmapBytes(regions) / bitmapBlock
	blocks := make([]int, n)
	for i := range blocks {
		blocks[i] = i
	}
	return blocks
}

func (m *Mirror) header(states []legState, clean bool) bitmapHeader {
	return bitmapHeader{events: m.events, size: m.size, region: m.region, regions: uint64(m.regions), clean: clean, legs: states}
}

// updateMasks recomputes insync and writable from the legs' states.
// Called with mu held, or before the mirror runs.
func (m *Mirror) updateMasks() {
	var in, w uint64
	for i := range m.legs {
		switch m.legs[i].state {
		case legInSync:
			in |= 1 << i
			w |= 1 << i
		case legResyncing:
			w |= 1 << i
		}
	}
	m.insync.Store(in)
	m.writable.Store(w)
}

func (m *Mirror) signal() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *Mirror) kick() {
	select {
	case m.resyncWake <- struct{}{}:
	default:
	}
}

func (m *Mirror) getIO(b *bioset.Bio) *mirrorIO {
	io := m.ios.Get().(*mirrorIO)
	io.parent = b
	return io
}

// putIO returns io to the pool once its parent has ended.
func (m *Mirror) putIO(io *mirrorIO) {
	*io = mirrorIO{}
	m.ios.Put(io)
}

// Submit implements bioset.Queue.
func (m *Mirror) Submit(s *bioset.Submitter, b *bioset.Bio) {
	switch b.Op {
	case bioset.OpRead:
		io := m.getIO(b)
		leg := m.pickRead(0)
		io.tried = 1 << leg
		m.sendRead(s, io, leg)
	case bioset.OpBlockStatus, bioset.OpCache:
		// From one in-sync leg, remapped: an error goes up as it is.
		remap(s, b, m.legs[m.pickRead(0)].dev, b.Offset)
	default: // WRITE, TRIM, WRITE_ZEROES, FLUSH
		io := m.getIO(b)
		io.hi = -1
		if b.Op.HasRange() {
			io.lo = int(b.Offset / m.region)
			io.hi = int((b.Offset + max(b.Length, 1) - 1) / m.region)
		}
		m.mu.Lock()
		now := m.admit(io)
		m.mu.Unlock()
		if now {
			m.sendWrite(s, io)
		}
	}
}

// pickRead returns an in-sync leg not in tried, by the read policy, or -1.
// There is always an in-sync leg (the last one is never failed), so with
// nothing tried it never returns -1.
func (m *Mirror) pickRead(tried uint64) int {
	mask := m.insync.Load() &^ tried
	if mask == 0 {
		return -1
	}
	switch m.policy {
	case readFirst:
		return bits.TrailingZeros64(mask)
	case readLeastPending:
		best, least := -1, int64(0)
		for i := range m.legs {
			if mask&(1<<i) == 0 {
				continue
			}
			if p := m.legs[i].pending.Load(); best < 0 || p < least {
				best, least = i, p
			}
		}
		return best
	}
	n := uint64(len(m.legs))
	start := m.rr.Add(1) % n
	for k := range n {
		if i := (start + k) % n; mask&(1<<i) != 0 {
			return int(i)
		}
	}
	return -1
}

// sendRead submits io's read to leg.
func (m *Mirror) sendRead(s *bioset.Submitter, io *mirrorIO, leg int) {
	b := io.parent
	c := m.pool.Alloc(s)
	c.Op, c.Flags = b.Op, b.Flags
	m.fill(c, b, leg)
	c.Private = io.ref(leg)
	c.SetEndIO(m.readEnd)
	m.legs[leg].pending.Add(1)
	s.Submit(c)
}

// fill points child c at leg, for the whole of b. The buffer is b's
// (docs/DESIGN.md rule 9). c is not chained, so a leaf under it cannot
// find the top bio's loan table and copies rather than lends: a read
// retried on another leg must not leave in the reply memory that the
// failed leg lent.
func (m *Mirror) fill(c, b *bioset.Bio, leg int) {
	c.Dev = m.legs[leg].dev
	c.Offset, c.Length, c.TopOffset = b.Offset, b.Length, b.TopOffset
	if b.Op.HasPayload() {
		c.Buf = b.Buf[:b.Length:b.Length]
	}
}

// endRead is a read child's completion. It runs inside End (rule 6): a
// retry needs a new child, and allocating one here could wait for a bio
// that only this goroutine would free, so the retry goes to the worker.
func (m *Mirror) endRead(c *bioset.Bio) {
	ref := c.Private.(*legRef)
	io, leg := ref.io, ref.leg
	err := c.Err()
	m.pool.Free(c)
	m.legs[leg].pending.Add(-1)
	if err == nil {
		io.parent.End(nil)
		m.putIO(io)
		return
	}
	m.failLeg(leg, "a read failed", err)
	next := m.pickRead(io.tried)
	if next < 0 {
		io.parent.End(err) // no leg could answer
		m.putIO(io)
		return
	}
	m.legs[leg].retried.Add(1)
	io.tried |= 1 << next
	io.leg, io.stage = next, stageRetry
	m.mu.Lock()
	m.work.PushBack(io, &io.link)
	m.mu.Unlock()
	m.signal()
}

// admit readies a write (or FLUSH) for its children, with mu held, and
// reports whether the caller may send them now. Otherwise io is queued:
// on blocked, while the resyncer copies one of its regions, or on
// awaitFlush, until the bits of its regions are durable in the file; the
// worker sends it later. Either way Submit returns at once (rule 8).
//
// The bits are set here, before any child exists: the ordering the
// bitmap needs (a bit on disk before the write it covers reaches a leg).
func (m *Mirror) admit(io *mirrorIO) bool {
	if io.hi >= io.lo && m.locked >= io.lo && m.locked <= io.hi {
		m.blocked.PushBack(io, &io.link)
		return false
	}
	need := false
	for r := io.lo; r <= io.hi; r++ {
		m.inflight[r]++
		m.touched.set(r)
		if !m.dirty.has(r) {
			m.dirty.set(r)
			m.noteChanged(r)
		}
		if m.file != nil && !m.durable.has(r) {
			need = true
		}
	}
	if need {
		m.awaitFlush.PushBack(io, &io.link)
		m.signal()
		return false
	}
	return true
}

// noteChanged marks the file's block that holds region r's bit for the
// next flush; with the bitmap in memory there is nothing to write.
func (m *Mirror) noteChanged(r int) {
	if m.file != nil {
		m.changed[r/(bitmapBlock*8)] = struct{}{}
	}
}

// sendWrite submits io's write to every writable leg: those in sync and
// those resyncing, which must not fall behind again in regions the
// resyncer has passed.
func (m *Mirror) sendWrite(s *bioset.Submitter, io *mirrorIO) {
	b := io.parent
	targets := m.writable.Load()
	// One reference per child and one for this loop, so that children
	// that end before the loop does (with the rescuer) cannot end b.
	io.pending.Store(int32(bits.OnesCount64(targets)) + 1)
	for i := range m.legs {
		if targets&(1<<i) == 0 {
			continue
		}
		// docs/DESIGN.md rule 4: each child is submitted before the
		// next is allocated, so the rescuer can take it if the pool is
		// empty when the next one is.
		c := m.pool.Alloc(s)
		c.Op, c.Flags = b.Op, b.Flags // FUA passes down to every leg
		m.fill(c, b, i)
		c.Private = io.ref(i)
		c.SetEndIO(m.writeEnd)
		s.Submit(c)
	}
	m.childDone(io)
}

// endWrite is a write child's completion (rule 6: no allocation, no wait).
func (m *Mirror) endWrite(c *bioset.Bio) {
	ref := c.Private.(*legRef)
	io, leg := ref.io, ref.leg
	err := c.Err()
	m.pool.Free(c)
	if err != nil {
		io.errno.CompareAndSwap(0, uint32(bioset.Errno(err)))
		m.failLeg(leg, writeFailed[io.parent.Op], err)
	} else {
		io.ok.Or(1 << leg)
	}
	m.childDone(io)
}

func (m *Mirror) childDone(io *mirrorIO) {
	if io.pending.Add(-1) == 0 {
		m.endWriteIO(io)
	}
}

// endWriteIO ends a write once every leg has answered: it succeeds if a
// leg that took it is in sync now. Such a leg holds the write whether it
// was in sync or resyncing when the write was sent (it received it
// either way); a leg failed meanwhile, by an error or by the operator,
// does not count, since reads no longer go to it. Counting the legs in
// sync at the send instead would fail a write whose only in-sync leg the
// operator failed after a resync had finished on another that took it.
//
// When a leg's state changed and the bitmap file does not say so yet,
// the end waits for the worker to record it: otherwise a crash could
// bring a leg that missed this write back as in sync, and the resync
// after it copy its stale data over the acknowledged write (md waits for
// its superblock likewise).
func (m *Mirror) endWriteIO(io *mirrorIO) {
	var err error
	if io.ok.Load()&m.insync.Load() == 0 {
		err = syscall.Errno(io.errno.Load())
		if err == syscall.Errno(0) {
			err = syscall.EIO
		}
	}
	m.mu.Lock()
	for r := io.lo; r <= io.hi; r++ {
		m.inflight[r]--
		if r == m.locked && m.inflight[r] == 0 {
			m.lockDrained.Broadcast()
		}
	}
	if m.file != nil && m.headerSynced < m.headerGen {
		io.gen = m.headerGen
		if err != nil {
			io.errno.Store(uint32(bioset.Errno(err)))
		} else {
			io.errno.Store(0)
		}
		m.awaitHeader.PushBack(io, &io.link)
		m.mu.Unlock()
		m.signal()
		return
	}
	m.mu.Unlock()
	io.parent.End(err)
	m.putIO(io)
}

// failLeg marks leg faulty after an error, unless it is the last leg in
// sync: that one stays, and the error goes up to the client instead, as md
// never fails its last working disk. It runs in completion: a short lock,
// and the logging is left to the worker.
func (m *Mirror) failLeg(leg int, reason string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.legs[leg].state
	if st == legFaulty || (st == legInSync && bits.OnesCount64(m.insync.Load()) == 1) {
		return
	}
	m.setStateErr(leg, legFaulty, reason, err)
}

// setState changes a leg's state, with mu held, and queues the change for
// the worker to log and record.
func (m *Mirror) setState(leg int, to legState, reason string) {
	m.setStateErr(leg, to, reason, nil)
}

// setStateErr is setState for a change an error caused. It runs in
// completion too: reason is a constant and err the bio's, so that nothing
// is formatted, and so allocated, before the worker logs it.
func (m *Mirror) setStateErr(leg int, to legState, reason string, err error) {
	from := m.legs[leg].state
	m.legs[leg].state = to
	m.updateMasks()
	m.headerGen++
	if len(m.changes) < cap(m.changes) {
		m.changes = append(m.changes, legChange{leg: leg, from: from, to: to, reason: reason, err: err})
	} else {
		m.dropped++
	}
	m.signal()
}

// run is the worker.
func (m *Mirror) run() {
	defer m.wg.Done()
	var s bioset.Submitter
	var tick <-chan time.Time
	if m.clearEvery > 0 {
		t := time.NewTicker(m.clearEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-m.wake:
		case <-tick:
			m.clearIdle()
		case <-m.stop:
			m.workOnce(&s)
			return
		}
		m.workOnce(&s)
	}
}

// workOnce does everything the worker has been asked to.
func (m *Mirror) workOnce(s *bioset.Submitter) {
	m.mu.Lock()
	changes := append([]legChange(nil), m.changes...)
	m.changes = m.changes[:0]
	dropped := m.dropped
	m.dropped = 0
	m.mu.Unlock()
	for _, c := range changes {
		args := []any{"leg", c.leg, "from", c.from.String(), "to", c.to.String(), "reason", c.reason}
		if c.err != nil {
			args = append(args, "err", c.err)
		}
		m.log.Warn("mirror leg state changed", args...)
	}
	if dropped > 0 {
		m.log.Warn("mirror leg state changes not logged", "count", dropped)
	}
	if m.file != nil {
		m.syncHeader()
		m.flushBits(s)
	}
	m.mu.Lock()
	work := m.work.Take()
	m.mu.Unlock()
	for io := work.PopFront(); io != nil; io = work.PopFront() {
		switch io.stage {
		case stageRetry:
			// The leg picked in completion may have been failed since:
			// pick again among the legs in sync and not yet tried.
			leg := io.leg
			if m.insync.Load()&(1<<leg) == 0 {
				if leg = m.pickRead(io.tried); leg < 0 {
					io.parent.End(syscall.EIO)
					m.putIO(io)
					continue
				}
				io.tried |= 1 << leg
			}
			m.sendRead(s, io, leg)
		case stageAdmit:
			m.mu.Lock()
			now := m.admit(io)
			m.mu.Unlock()
			if now {
				m.sendWrite(s, io)
			}
		}
	}
}

// syncHeader records the legs' states in the file when they changed, and
// then ends the writes that waited for it.
func (m *Mirror) syncHeader() {
	m.mu.Lock()
	gen := m.headerGen
	if m.headerSynced >= gen {
		m.mu.Unlock()
		return
	}
	m.events++
	h := m.header(m.states(), false)
	m.mu.Unlock()
	err := m.file.writeHeader(h)
	m.mu.Lock()
	if err != nil {
		m.log.Error("mirror bitmap: writing the header", "path", m.file.path, "err", err)
	} else {
		m.headerSynced = gen
	}
	var done, keep ioList
	for io := m.awaitHeader.PopFront(); io != nil; io = m.awaitHeader.PopFront() {
		if io.gen <= m.headerSynced || err != nil {
			done.PushBack(io, &io.link)
		} else {
			keep.PushBack(io, &io.link)
		}
	}
	m.awaitHeader = keep
	m.mu.Unlock()
	for io := done.PopFront(); io != nil; io = done.PopFront() {
		var e error
		if n := io.errno.Load(); n != 0 {
			e = syscall.Errno(n)
		} else if err != nil {
			e = syscall.EIO // the failure could not be recorded
		}
		io.parent.End(e)
		m.putIO(io)
	}
}

func (m *Mirror) states() []legState {
	st := make([]legState, len(m.legs))
	for i := range m.legs {
		st[i] = m.legs[i].state
	}
	return st
}

// flushBits writes the changed blocks of bits and makes them durable, then
// sends the writes that waited for them: however many writes set bits
// since the last flush, they wait for one fdatasync together (md batches
// its bitmap updates the same way, at unplug).
func (m *Mirror) flushBits(s *bioset.Submitter) {
	m.mu.Lock()
	if len(m.changed) == 0 && m.awaitFlush.Empty() {
		m.mu.Unlock()
		return
	}
	snap := append(regionBits(nil), m.dirty...)
	blocks := make([]int, 0, len(m.changed))
	for blk := range m.changed {
		blocks = append(blocks, blk)
	}
	clear(m.changed)
	// A bit this write clears is not durable from now on: a write
	// admitted while the block is on its way must wait for the next flush
	// rather than trust the old block.
	for i := range m.durable {
		m.durable[i] &= snap[i]
	}
	waiting := m.awaitFlush.Take()
	m.mu.Unlock()
	err := m.file.writeBlocks(snap, blocks)
	m.mu.Lock()
	if err != nil {
		m.log.Error("mirror bitmap: writing the bits", "path", m.file.path, "err", err)
		for _, blk := range blocks {
			m.changed[blk] = struct{}{}
		}
	} else {
		copy(m.durable, snap)
	}
	m.mu.Unlock()
	for io := waiting.PopFront(); io != nil; io = waiting.PopFront() {
		if err != nil {
			// The intent could not be made durable: fail the
			// write rather than risk a crash that forgets it.
			m.mu.Lock()
			for r := io.lo; r <= io.hi; r++ {
				m.inflight[r]--
				if r == m.locked && m.inflight[r] == 0 {
					m.lockDrained.Broadcast()
				}
			}
			m.mu.Unlock()
			io.parent.End(syscall.EIO)
			m.putIO(io)
			continue
		}
		m.sendWrite(s, io)
	}
}

// clearIdle is one pass of the lazy clearing, md's bitmap daemon: a dirty
// region with no write in flight is cleared if no write touched it since
// the previous pass, so a bit outlives its last write by one to two
// intervals, and a region written steadily keeps its bit (and costs no
// bitmap write per request). Nothing is cleared while a leg is not in
// sync: the bits are then what the leg will need.
func (m *Mirror) clearIdle() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.insync.Load() != 1<<len(m.legs)-1 {
		return
	}
	for w, word := range m.dirty {
		for word != 0 {
			r := w*64 + bits.TrailingZeros64(word)
			word &= word - 1
			switch {
			case m.inflight[r] > 0:
			case m.touched.has(r):
				m.touched.unset(r)
			default:
				m.dirty.unset(r)
				m.noteChanged(r)
			}
		}
	}
	if m.file != nil && len(m.changed) > 0 {
		m.signal()
	}
}

// resync is the resyncer: each pass copies every dirty region, in order,
// from an in-sync leg to the legs resyncing, and then makes them in sync.
func (m *Mirror) resync() {
	defer m.wg.Done()
	var s bioset.Submitter
	buf := make([]byte, m.region)
	cp := &regionCopy{m: m}
	cp.end = cp.done
	for {
		select {
		case <-m.stop:
			return
		case <-m.resyncWake:
		}
		for m.resyncPassOnce(&s, cp, buf) {
		}
	}
}

// resyncPassOnce runs one pass if a leg is resyncing; it reports whether
// another should follow at once.
func (m *Mirror) resyncPassOnce(s *bioset.Submitter, cp *regionCopy, buf []byte) bool {
	m.mu.Lock()
	targets := m.writable.Load() &^ m.insync.Load()
	if targets == 0 || m.closed {
		m.mu.Unlock()
		return false
	}
	m.resyncing, m.restart, m.cursor = true, false, 0
	m.passTargets = targets
	m.resyncStart, m.resyncPass = time.Now(), 0
	m.mu.Unlock()
	m.log.Info("mirror resync started", "legs", legList(targets))
	for {
		m.mu.Lock()
		r := m.dirty.next(m.cursor)
		if m.restart || m.closed || r < 0 {
			break
		}
		m.lockRegion(r)
		targets = m.writable.Load() &^ m.insync.Load() & m.passTargets
		source := bits.TrailingZeros64(m.insync.Load())
		m.mu.Unlock()
		var n uint64
		if targets != 0 {
			n = cp.copy(s, r, source, targets, buf)
		}
		m.mu.Lock()
		m.unlockRegion()
		m.cursor = r + 1
		m.resyncDone += n
		m.resyncPass += n
		elapsed := time.Since(m.resyncStart)
		pass := m.resyncPass
		m.mu.Unlock()
		m.signal()
		if targets == 0 {
			m.mu.Lock()
			break
		}
		// The rate cap: sleep until this pass's bytes are due.
		if due := time.Duration(float64(pass) / float64(m.rate) * float64(time.Second)); due > elapsed {
			select {
			case <-m.stop:
			case <-time.After(due - elapsed):
			}
		}
	}
	// mu is held here.
	if !m.restart && !m.closed && m.caps&bioset.CapFlush != 0 {
		// The copies are not durable until the legs flush them: a
		// FLUSH acknowledged once a leg is in sync must cover what the
		// resync wrote there too.
		targets := m.writable.Load() &^ m.insync.Load() & m.passTargets
		m.mu.Unlock()
		for i := range m.legs {
			if targets&(1<<i) == 0 {
				continue
			}
			if err := cp.submit(s, bioset.OpFlush, i, 0, 0, nil); err != nil {
				m.failLeg(i, "a resync flush failed", err)
			}
		}
		m.mu.Lock()
	}
	again := m.restart
	done := !m.restart && !m.closed
	if done {
		for i := range m.legs {
			if m.passTargets&(1<<i) != 0 && m.legs[i].state == legResyncing {
				m.setState(i, legInSync, "resync complete")
			}
		}
	}
	m.resyncing = false
	passTargets, passBytes := m.passTargets, m.resyncPass
	m.mu.Unlock()
	if done {
		m.log.Info("mirror resync finished", "legs", legList(passTargets), "bytes", passBytes)
	}
	return again
}

// lockRegion locks region r against client writes, with mu held: writes
// to it wait in blocked from now on, and it returns once those already in
// flight there have ended (they may not have reached the source yet).
// Only the resyncer locks, one region at a time.
func (m *Mirror) lockRegion(r int) {
	m.locked = r
	for m.inflight[r] > 0 {
		m.lockDrained.Wait()
	}
}

// unlockRegion unlocks the locked region, with mu held, and hands the
// writes that waited for it to the worker, which admits them again. The
// caller signals the worker once it has let go of mu.
func (m *Mirror) unlockRegion() {
	m.locked = -1
	for io := m.blocked.PopFront(); io != nil; io = m.blocked.PopFront() {
		io.stage = stageAdmit
		m.work.PushBack(io, &io.link)
	}
}

func legList(mask uint64) string {
	var legs []string
	for i := range 64 {
		if mask&(1<<i) != 0 {
			legs = append(legs, strconv.Itoa(i))
		}
	}
	return strings.Join(legs, ",")
}

// regionCopy is the resyncer's copy of one region: one read from the
// source, then one write to each target, waited for in turn. Its bios are
// the mirror's (rule 3), allocated on the resyncer's own Submitter, which
// waits for them outside any Submit: like a rescuer, it may wait in Alloc,
// and that wait ends (rule 5).
type regionCopy struct {
	m    *Mirror
	wg   sync.WaitGroup
	end  func(*bioset.Bio)
	errs atomic.Uint32 // the first error
}

func (cp *regionCopy) done(c *bioset.Bio) {
	if err := c.Err(); err != nil {
		cp.errs.CompareAndSwap(0, uint32(bioset.Errno(err)))
	}
	cp.m.pool.Free(c)
	cp.wg.Done()
}

// submit runs one bio to leg and waits for it.
func (cp *regionCopy) submit(s *bioset.Submitter, op bioset.Op, leg int, off, n uint64, buf []byte) error {
	c := cp.m.pool.Alloc(s)
	c.Op, c.Dev = op, cp.m.legs[leg].dev
	c.Offset, c.Length, c.TopOffset = off, n, off
	if op.HasPayload() {
		c.Buf = buf
	}
	cp.errs.Store(0)
	cp.wg.Add(1)
	c.SetEndIO(cp.end)
	s.Submit(c)
	cp.wg.Wait()
	if e := cp.errs.Load(); e != 0 {
		return syscall.Errno(e)
	}
	return nil
}

// copy copies region r from source to the targets and returns the bytes
// copied. A region that reads as zeroes is written as WRITE_ZEROES where
// the target can, so that resyncing an empty memory leg allocates nothing.
func (cp *regionCopy) copy(s *bioset.Submitter, r, source int, targets uint64, buf []byte) uint64 {
	m := cp.m
	off := uint64(r) * m.region
	n := min(m.region, m.size-off)
	buf = buf[:n]
	if err := cp.submit(s, bioset.OpRead, source, off, n, buf); err != nil {
		m.failLeg(source, "a resync read failed", err)
		if m.insync.Load()&(1<<source) != 0 {
			// The last leg in sync cannot read it: the legs behind
			// cannot be made whole, so they stay faulty.
			m.mu.Lock()
			for i := range m.legs {
				if targets&(1<<i) != 0 && m.legs[i].state == legResyncing {
					m.setState(i, legFaulty, fmt.Sprintf("resync source leg %d cannot read region %d: %v", source, r, err))
				}
			}
			m.mu.Unlock()
		}
		return 0
	}
	zero := m.caps&bioset.CapWriteZeroes != 0 && allZero(buf)
	var copied uint64
	for i := range m.legs {
		if targets&(1<<i) == 0 {
			continue
		}
		var err error
		if zero {
			err = cp.submit(s, bioset.OpWriteZeroes, i, off, n, nil)
		} else {
			err = cp.submit(s, bioset.OpWrite, i, off, n, buf)
		}
		if err != nil {
			m.failLeg(i, "a resync write failed", err)
			continue
		}
		m.legs[i].resynced.Add(n)
		copied = n
	}
	return copied
}

func allZero(p []byte) bool {
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

// Close stops the mirror's goroutines and, with a bitmap file, records a
// clean stop: bits of regions every leg holds are cleared, and the header
// says clean, so the next start resyncs only legs that were behind.
func (m *Mirror) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	close(m.stop)
	m.lockDrained.Broadcast()
	m.wg.Wait()
	var err error
	if m.file != nil && !m.crashed {
		m.mu.Lock()
		if m.insync.Load() == 1<<len(m.legs)-1 {
			clear(m.dirty)
		}
		m.events++
		h := m.header(m.states(), true)
		m.mu.Unlock()
		if err = m.file.writeBlocks(m.dirty, allBlocks(m.regions)); err == nil {
			err = m.file.writeHeader(h)
		}
	}
	if m.file != nil {
		err = errors.Join(err, m.file.close())
	}
	m.pool.Close()
	return err
}

// abandon stops the mirror as a crash would: the file is left as it is.
func (m *Mirror) abandon() {
	m.crashed = true
	m.Close()
}

// MirrorState is a mirror's live state, for `stackd status` and metrics.
type MirrorState struct {
	Read         string           `json:"read"`
	Bitmap       string           `json:"bitmap"` // the file, or "memory"
	RegionBytes  uint64           `json:"region_bytes"`
	DirtyRegions int              `json:"dirty_regions"`
	Legs         []MirrorLegState `json:"legs"`
	Resync       MirrorResync     `json:"resync"`
}

// Synced reports whether every leg is in sync and no resync runs.
func (s MirrorState) Synced() bool {
	for _, l := range s.Legs {
		if l.State != legInSync.String() {
			return false
		}
	}
	return !s.Resync.Active
}

// MirrorLegState is one leg's part of MirrorState.
type MirrorLegState struct {
	Leg   int    `json:"leg"`
	State string `json:"state"`
	// Percent and RateBytes describe a resyncing leg's progress.
	Percent           float64 `json:"percent,omitempty"`
	RateBytes         uint64  `json:"rate_bytes_per_second,omitempty"`
	ResyncedBytes     uint64  `json:"resynced_bytes"`
	RemainingBytes    uint64  `json:"remaining_bytes"`
	ReadErrorsRetried uint64  `json:"read_errors_retried"`
}

// MirrorResync is the resync's progress.
type MirrorResync struct {
	Active         bool   `json:"active"`
	DoneBytes      uint64 `json:"done_bytes"`
	RemainingBytes uint64 `json:"remaining_bytes"`
	RateBytes      uint64 `json:"rate_bytes_per_second"`
	LimitBytes     uint64 `json:"limit_bytes_per_second"`
}

// MirrorState returns the mirror's state, taken under its lock.
func (m *Mirror) MirrorState() MirrorState {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := MirrorState{
		Read:         readPolicyNames[m.policy],
		Bitmap:       "memory",
		RegionBytes:  m.region,
		DirtyRegions: m.dirty.countFrom(0),
		Resync:       MirrorResync{Active: m.resyncing, DoneBytes: m.resyncDone, LimitBytes: m.rate},
	}
	if m.file != nil {
		st.Bitmap = m.file.path
	}
	var rate uint64
	if m.resyncing {
		st.Resync.RemainingBytes = m.remainingLocked()
		if secs := time.Since(m.resyncStart).Seconds(); secs > 0 {
			rate = uint64(float64(m.resyncPass) / secs)
		}
		st.Resync.RateBytes = rate
	}
	for i := range m.legs {
		l := &m.legs[i]
		ls := MirrorLegState{Leg: i, State: l.state.String(), ResyncedBytes: l.resynced.Load(), ReadErrorsRetried: l.retried.Load()}
		switch {
		case l.state == legResyncing && m.resyncing && m.passTargets&(1<<i) != 0:
			ls.RemainingBytes = m.remainingLocked()
			if total := m.resyncPass + ls.RemainingBytes; total > 0 {
				ls.Percent = float64(m.resyncPass) * 100 / float64(total)
			}
			ls.RateBytes = rate
		case l.state != legInSync:
			// Behind by the dirty regions: what a resync would copy.
			ls.RemainingBytes = m.dirtyBytesFrom(0)
		}
		st.Legs = append(st.Legs, ls)
	}
	return st
}

// remainingLocked is what the running pass has left: the dirty regions
// from its cursor on.
func (m *Mirror) remainingLocked() uint64 { return m.dirtyBytesFrom(m.cursor) }

// dirtyBytesFrom is the bytes of the dirty regions from region r on (the
// last region may be short).
func (m *Mirror) dirtyBytesFrom(r int) uint64 {
	n := uint64(m.dirty.countFrom(r)) * m.region
	if last := uint64(m.regions) * m.region; last > m.size && r <= m.regions-1 && m.dirty.has(m.regions-1) {
		n -= last - m.size
	}
	return n
}

// State implements Controlled.
func (m *Mirror) State() any { return m.MirrorState() }

// Act implements Controlled: "fail" sets a leg aside as if it had failed;
// "restore" brings a faulty leg back, resyncing the regions it missed.
func (m *Mirror) Act(action string, leg int) error {
	if action != "fail" && action != "restore" {
		return fmt.Errorf("mirror: %w %q; a mirror leg takes fail or restore", ErrUnknownAction, action)
	}
	if leg < 0 || leg >= len(m.legs) {
		return fmt.Errorf("mirror: %s needs a leg, 0 to %d", action, len(m.legs)-1)
	}
	m.mu.Lock()
	st := m.legs[leg].state
	switch {
	case action == "fail" && st == legFaulty:
		m.mu.Unlock()
		return fmt.Errorf("mirror: leg %d is faulty already", leg)
	case action == "fail" && st == legInSync && bits.OnesCount64(m.insync.Load()) == 1:
		m.mu.Unlock()
		return fmt.Errorf("mirror: leg %d is the last leg in sync; failing it would fail the mirror", leg)
	case action == "fail":
		m.setState(leg, legFaulty, "failed by the operator")
	case st == legInSync:
		m.mu.Unlock()
		return fmt.Errorf("mirror: leg %d is in sync; there is nothing to restore", leg)
	case st == legResyncing:
		m.mu.Unlock()
		return fmt.Errorf("mirror: leg %d is resyncing already", leg)
	default:
		m.setState(leg, legResyncing, "restored by the operator")
		if m.resyncing {
			m.restart = true
		}
	}
	m.mu.Unlock()
	m.kick()
	return nil
}

// KindMirror is the mirror layer's kind.
const KindMirror = "mirror"

func init() {
	Register(Kind{New: func() Settings { return new(MirrorConfig) }, Rank: 15, Legs: ManyLegs})
}

// MirrorConfig is the settings of a mirror node:
//
//	mirror: {read: round-robin, bitmap: {path: …, region: 64KiB}, resync_rate: 256MiB/s, pool: {…}, legs: [NODE, NODE, …]}
type MirrorConfig struct {
	// Read picks the leg a read goes to: round-robin (absent), first
	// (the first leg in sync) or least-pending (the leg with the fewest
	// reads in flight).
	Read settings.String `yaml:"read" label:"mirror read"`
	// Bitmap is the write-intent bitmap.
	Bitmap MirrorBitmapConfig `yaml:"bitmap"`
	// ResyncRate caps the resync, in bytes a second: a size and "/s",
	// such as 256MiB/s (absent: 256MiB/s).
	ResyncRate settings.String `yaml:"resync_rate" label:"mirror resync_rate"`
	Pool       PoolSpec        `yaml:"pool"`
	// Legs are 2 to 32 stack nodes of the same size, each holding all of
	// the mirror's data.
	Legs settings.List[Spec] `yaml:"legs" need:"true" item:"leg"`
}

// MirrorBitmapConfig is a mirror's bitmap: `bitmap: {path: …, region: 64KiB}`.
type MirrorBitmapConfig struct {
	// Path is the bitmap file, which makes the bitmap survive a restart
	// (absent: in memory only, and every start resyncs every leg from leg
	// 0). A relative path is relative to the configuration's directory.
	// A read-only export's mirror takes its legs as they are and keeps
	// no bitmap.
	Path settings.String `yaml:"path" label:"mirror bitmap path"`
	// Region is how much one bit covers: a positive multiple of 512
	// (absent: 64KiB).
	Region settings.Size `yaml:"region" label:"mirror bitmap region"`
}

func (c *MirrorConfig) Kind() string     { return KindMirror }
func (c *MirrorConfig) LegSpecs() []Spec { return c.Legs.Items }

func (c *MirrorConfig) Check(p *settings.Problems) {
	if r := c.Read; r.Line > 0 {
		if _, ok := parseReadPolicy(r.S); !ok {
			p.At(r.Line, "mirror read: unknown policy %q%s", r.S, settings.Suggest(r.S, readPolicyNames[:], ""))
		}
	}
	if c.Bitmap.Path.Line > 0 && c.Bitmap.Path.S == "" {
		p.At(c.Bitmap.Path.Line, "mirror bitmap path must not be empty (leave it out to keep the bitmap in memory)")
	}
	checkBlocks(p, "mirror bitmap region", c.Bitmap.Region)
	if r := c.ResyncRate; r.Line > 0 {
		if _, err := parseRate(r.S); err != nil {
			p.At(r.Line, "mirror resync_rate: %v", err)
		}
	}
	c.Pool.Check(p)
	checkLegCount(p, KindMirror, c.Legs, 2)
	if l := c.Legs; l.Line > 0 && len(l.Items) > mirrorMaxLegs {
		p.At(l.Line, "mirror has %d legs; at most %d", len(l.Items), mirrorMaxLegs)
	}
}

// parseRate parses a rate such as 256MiB/s into bytes a second.
func parseRate(s string) (uint64, error) {
	size, ok := strings.CutSuffix(strings.TrimSpace(s), "/s")
	if !ok {
		return 0, fmt.Errorf("%q is not a rate; want a size a second such as 256MiB/s", s)
	}
	n, err := settings.ParseSize(strings.TrimSpace(size))
	if err != nil {
		return 0, fmt.Errorf("%q: %v", s, err)
	}
	if n == 0 {
		return 0, fmt.Errorf("%q: the rate must be greater than zero", s)
	}
	return n, nil
}

func (c *MirrorConfig) region() uint64 {
	if c.Bitmap.Region.Bytes == 0 {
		return DefaultMirrorRegion
	}
	return c.Bitmap.Region.Bytes
}

func (c *MirrorConfig) NodeSize(legs []Sized) (uint64, error) {
	if len(legs) < 2 {
		return 0, errSizeUnknown // reported by Check
	}
	if err := checkEqualLegs(KindMirror, legs); err != nil {
		return 0, err
	}
	if r := c.region(); (legs[0].Bytes+r-1)/r > maxMirrorRegions {
		line := c.Bitmap.Region.Line
		if line == 0 {
			line = c.Legs.Line
		}
		return 0, sizeError(line, "mirror of %s in regions of %s has more than %d regions; use a larger bitmap region",
			settings.FormatSize(legs[0].Bytes), settings.FormatSize(r), maxMirrorRegions)
	}
	return legs[0].Bytes, nil
}

// ResolvePaths makes the bitmap path absolute, as a file target's path.
func (c *MirrorConfig) ResolvePaths(dir string) { resolvePath(&c.Bitmap.Path, dir) }

// checkHost checks that the bitmap file can be used: an existing one is a
// bitmap stackd can read, a missing one can be created. It changes
// nothing. A read-only export's mirror keeps no bitmap (MirrorOptions).
func (c *MirrorConfig) checkHost(h *Host, p *settings.Problems, bad bool) {
	path, line := c.Bitmap.Path.S, c.Bitmap.Path.Line
	if line == 0 || path == "" || h.ReadOnly {
		return
	}
	st, used := h.claim(path, line)
	switch {
	case used != nil:
		p.At(line, "mirror bitmap %s is already used at line %d (export %q); a file can serve only one leg or bitmap", path, used.line, used.export)
	case bad:
	case errors.Is(st.err, fs.ErrNotExist):
		if err := canCreate(path); err != nil {
			p.At(line, "mirror bitmap %s does not exist, and %v", path, err)
		}
	case st.err != nil:
		p.At(line, "mirror bitmap %s: %s", path, reason(st.err))
	case !st.info.Mode().IsRegular():
		p.At(line, "mirror bitmap %s is not a regular file", path)
	default:
		if err := readBitmapHeader(path); err != nil {
			p.At(line, "%v", err)
		}
	}
}

func (c *MirrorConfig) options(b BuildContext) MirrorOptions {
	rate, _ := parseRate(c.ResyncRate.S)
	return MirrorOptions{
		Read:       c.Read.S,
		Region:     c.Bitmap.Region.Bytes,
		BitmapPath: c.Bitmap.Path.S,
		ResyncRate: rate,
		Pool:       c.Pool.Options(b.Path),
		Log:        b.Log,
		ReadOnly:   b.ReadOnly,
	}
}

func (c *MirrorConfig) Build(legs []Device, b BuildContext) (Device, error) {
	return NewMirror(legs, c.options(b))
}

func (c *MirrorConfig) Describe() []string {
	read := c.Read.S
	if read == "" {
		read = readPolicyNames[readRoundRobin]
	}
	bitmap := "memory"
	if c.Bitmap.Path.S != "" {
		bitmap = settings.Word(c.Bitmap.Path.S)
	}
	rate := settings.FormatSize(DefaultResyncRate) + "/s"
	if c.ResyncRate.S != "" {
		rate = c.ResyncRate.S
	}
	words := []string{"legs=" + strconv.Itoa(len(c.Legs.Items)), "read=" + read, "bitmap=" + bitmap,
		"region=" + settings.FormatSize(c.region()), "resync_rate=" + settings.Word(rate)}
	return append(words, c.Pool.describe()...)
}
