// Package intrusive is a doubly linked list whose links live in the
// elements themselves, as the kernel's list_head does.
//
// The request path queues bios, replies, waiters and in-flight requests
// at rates of a million a second, and it may not allocate while doing so
// (docs/DESIGN.md rule 6: end_io neither blocks nor allocates). A list
// that boxes each element (container/list) allocates a node per push; a
// slice grows. An intrusive list allocates nothing: every element carries
// its own Link, so pushing is a few pointer stores, and a whole list moves
// to another in O(1), which lets a queue be taken under its lock and
// walked outside it.
//
// The price is the one the kernel pays: an element is on at most one list
// per Link it carries, and it is the caller's lock, not the list's, that
// makes that so.
package intrusive

// Link is what an element carries for the one list it is on: its
// neighbours' links, and the element itself, so that the list finds the
// element from its link without unsafe pointer arithmetic (the kernel's
// container_of) and without an indirect call. Its zero value is "on no
// list".
type Link[T any] struct {
	next, prev *Link[T]
	elem       *T
}

// List is a list of *T, each linked through a Link it carries. The zero
// value is an empty list. It is not safe for concurrent use.
type List[T any] struct {
	head, tail *Link[T]
	n          int
}

// Len is how many elements the list holds.
func (l *List[T]) Len() int { return l.n }

// Empty reports whether the list holds nothing.
func (l *List[T]) Empty() bool { return l.head == nil }

// Front is the first element, or nil.
func (l *List[T]) Front() *T { return l.head.get() }

// Next is the element after the one whose link is k, or nil.
func (k *Link[T]) Next() *T { return k.next.get() }

func (k *Link[T]) get() *T {
	if k == nil {
		return nil
	}
	return k.elem
}

// PushBack puts x, whose link k is on no list, at the back.
func (l *List[T]) PushBack(x *T, k *Link[T]) { l.insert(x, k, l.tail, nil) }

// PushFront puts x, whose link k is on no list, at the front.
func (l *List[T]) PushFront(x *T, k *Link[T]) { l.insert(x, k, nil, l.head) }

// insert links x between prev and next, neighbours on l (nil at an end).
func (l *List[T]) insert(x *T, k, prev, next *Link[T]) {
	k.elem, k.prev, k.next = x, prev, next
	if prev != nil {
		prev.next = k
	} else {
		l.head = k
	}
	if next != nil {
		next.prev = k
	} else {
		l.tail = k
	}
	l.n++
}

// PopFront takes the first element off the list, or returns nil.
func (l *List[T]) PopFront() *T {
	k := l.head
	if k == nil {
		return nil
	}
	x := k.elem
	l.Remove(k)
	return x
}

// Remove takes the element whose link k is on l off it.
func (l *List[T]) Remove(k *Link[T]) {
	if k.prev != nil {
		k.prev.next = k.next
	} else {
		l.head = k.next
	}
	if k.next != nil {
		k.next.prev = k.prev
	} else {
		l.tail = k.prev
	}
	*k = Link[T]{}
	l.n--
}

// Take moves every element to the list it returns, leaving l empty.
func (l *List[T]) Take() List[T] {
	t := *l
	*l = List[T]{}
	return t
}

// PushBackList moves every element of o, in order, to l's back, leaving o
// empty.
func (l *List[T]) PushBackList(o *List[T]) {
	if o.head == nil {
		return
	}
	if l.tail == nil {
		*l = o.Take()
		return
	}
	l.tail.next = o.head
	o.head.prev = l.tail
	l.tail = o.tail
	l.n += o.n
	*o = List[T]{}
}

// PushFrontList moves every element of o, in order, to l's front, leaving
// o empty.
func (l *List[T]) PushFrontList(o *List[T]) {
	o.PushBackList(l)
	*l = o.Take()
}
