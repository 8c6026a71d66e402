package bioset

// A BLOCK_STATUS answer lives in a window of result slots (Bio.Extents). A
// layer that fans a BLOCK_STATUS bio out gives each child part of its own
// window and, once they have all ended, rewrites the window into one answer
// (see Bio.SetGather), with neighbours of equal flags merged into one slot:
// a stripe over four empty legs answers a gigabyte in one slot, not one per
// chunk. These are the pieces every such layer uses, so that the rules of
// what an answer is (below) are written in one place.
//
// An answer, as a reader sees it, is the contiguous run of extents that
// starts at the bio's own offset (in the coordinates of its TopOffset):
// slots of zero length are unused and skipped, the first gap ends the run,
// and nothing past the bio's range counts. A short run is a valid answer
// (NBD lets a reply cover less than was asked); a run that claims bytes
// it was not asked about is not.

// extentRun reads the answer in a window.
type extentRun struct {
	slots    []Extent
	i        int    // next slot to look at
	pos, end uint64 // the run reaches pos; it may reach end at most
}

// next returns the next piece of the run, clipped to the range, or false
// once the run ends.
func (r *extentRun) next() (Extent, bool) {
	for r.pos < r.end && r.i < len(r.slots) {
		e := r.slots[r.i]
		r.i++
		if e.Length == 0 {
			continue
		}
		if e.Offset > r.pos {
			r.end = r.pos // a gap: nothing after it is known to join on
			break
		}
		eEnd := e.Offset + e.Length
		if eEnd < e.Offset {
			eEnd = ^uint64(0)
		}
		if eEnd <= r.pos {
			continue // already covered
		}
		eEnd = min(eEnd, r.end)
		out := Extent{Offset: r.pos, Length: eEnd - r.pos, Flags: e.Flags}
		r.pos = eEnd
		return out, true
	}
	return Extent{}, false
}

// ExtentWriter writes an answer into a window, from its first slot,
// merging each extent into the one before when they join and have the same
// flags, so that an answer costs one slot per change of flags rather than
// one per piece it was gathered from.
type ExtentWriter struct {
	slots []Extent
	room  int // slots it may fill: a prefix of slots
	n     int // slots filled
}

// NewExtentWriter returns a writer that fills at most the first room slots
// of window; Finish clears the rest of window.
func NewExtentWriter(window []Extent, room int) ExtentWriter {
	return ExtentWriter{slots: window, room: min(room, len(window))}
}

// Add appends [off, off+length) with flags. It returns false, recording
// nothing, when the extent needs a slot of its own and none is left: the
// answer then ends where it is, which is still a valid answer.
func (w *ExtentWriter) Add(off, length uint64, flags ExtentFlags) bool {
	if length == 0 {
		return true
	}
	if w.n > 0 {
		last := &w.slots[w.n-1]
		if last.Flags == flags && last.Offset+last.Length == off {
			last.Length += length
			return true
		}
	}
	if w.n == w.room {
		return false
	}
	w.slots[w.n] = Extent{Offset: off, Length: length, Flags: flags}
	w.n++
	return true
}

// Len returns the number of slots filled.
func (w *ExtentWriter) Len() int { return w.n }

// Finish marks every slot after the answer unused, so that a reader of the
// window sees the answer and nothing else.
func (w *ExtentWriter) Finish() { clear(w.slots[w.n:]) }

// CompactExtents rewrites window in place as its answer for [off,
// off+length): the run starting at off, clipped to the range, merged, from
// the first slot, every other slot unused. It returns the number of slots
// the answer takes. Windows that children filled, in order, from disjoint
// consecutive parts of window read as one run where each child's answer
// reaches the next child's start.
//
// In place is safe because the answer never gets ahead of the run it is
// read from: every slot written is at or before the slot just read.
func CompactExtents(window []Extent, off, length uint64) int {
	end := off + length
	if end < off {
		end = ^uint64(0)
	}
	r := extentRun{slots: window, pos: off, end: end}
	w := NewExtentWriter(window, len(window))
	for e, ok := r.next(); ok; e, ok = r.next() {
		w.Add(e.Offset, e.Length, e.Flags)
	}
	w.Finish()
	return w.Len()
}
