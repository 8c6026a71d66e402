package bioset

// Submitter runs bios through a stack. It is the Go form of the kernel's
// current->bio_list: Go has no goroutine-local storage, so every goroutine
// that submits (a connection's reader, a rescuer, a test) owns one Submitter
// and passes it down explicitly. A Submitter must not be shared between
// goroutines.
//
// docs/DESIGN.md rule 1, recursion becomes iteration: a bio submitted while a Queue's
// Submit is running on this Submitter is only queued; it is handled after
// that Submit returns. However deep the stack, the Go stack stays one Submit
// deep, and a layer that splits a 2 GiB TRIM into thousands of pieces does
// not recurse thousands of times.
//
// docs/DESIGN.md rule 2, depth-first order: after a Submit returns, the bios it produced
// for other (lower) devices go first, then those for the same device (a
// requeued remainder), then those that were pending before it ran. Lower
// devices thus finish a piece before the layer above produces the next one,
// which keeps the number of bios a layer has outstanding small.
type Submitter struct {
	active bool
	// lists[0] holds the bios queued by the Submit now running; lists[1]
	// the bios that were pending when it started. Both are searched when a
	// BioSet punts to its rescuer.
	lists [2]bioList
}

// Submit hands b to b.Dev. Called from outside any Submit, it runs until b
// and every bio produced while handling it have been passed to their
// devices; called from inside one (a layer submitting a child or requeueing
// a remainder), it only queues b.
func (s *Submitter) Submit(b *Bio) {
	if b.Dev == nil {
		panic("bioset: bio submitted without a device")
	}
	if s.active {
		s.lists[0].PushBack(b, &b.link)
		return
	}
	s.active = true
	for b != nil {
		dev := b.Dev
		s.lists[1] = s.lists[0].Take()

		dev.Submit(s, b)

		var lower, same bioList
		for c := s.lists[0].PopFront(); c != nil; c = s.lists[0].PopFront() {
			if c.Dev == dev {
				same.PushBack(c, &c.link)
			} else {
				lower.PushBack(c, &c.link)
			}
		}
		s.lists[0].PushBackList(&lower)
		s.lists[0].PushBackList(&same)
		s.lists[0].PushBackList(&s.lists[1])
		b = s.lists[0].PopFront()
	}
	s.active = false
}

// pending reports whether bios are queued on s but not yet handed to their
// devices: the condition under which blocking in Alloc could deadlock.
func (s *Submitter) pending() bool {
	return s != nil && s.active && (!s.lists[0].Empty() || !s.lists[1].Empty())
}

// takeFrom moves the queued bios that were allocated from bs onto out and
// returns how many it moved; the rest stay queued in their order.
func (s *Submitter) takeFrom(bs *BioSet, out *bioList, foreignToo bool) int {
	moved := 0
	for i := range s.lists {
		var keep bioList
		for b := s.lists[i].PopFront(); b != nil; b = s.lists[i].PopFront() {
			if b.pool == bs || foreignToo {
				out.PushBack(b, &b.link)
				moved++
			} else {
				keep.PushBack(b, &b.link)
			}
		}
		s.lists[i] = keep
	}
	return moved
}
