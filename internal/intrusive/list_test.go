package intrusive

import (
	"math/rand/v2"
	"slices"
	"testing"
)

type item struct {
	id   int
	link Link[item]
}

type itemList = List[item]

// ids walks l both ways and fails unless the two walks agree with each
// other and with Len.
func ids(t *testing.T, l *itemList) []int {
	t.Helper()
	var fwd []int
	for x := l.Front(); x != nil; x = x.link.Next() {
		fwd = append(fwd, x.id)
		if len(fwd) > l.Len() {
			t.Fatalf("forward walk is longer than Len %d", l.Len())
		}
	}
	var back []int
	for k := l.tail; k != nil; k = k.prev {
		back = append(back, k.elem.id)
		if len(back) > l.Len() {
			t.Fatalf("backward walk is longer than Len %d", l.Len())
		}
	}
	slices.Reverse(back)
	if !slices.Equal(fwd, back) || len(fwd) != l.Len() {
		t.Fatalf("forward %v, backward %v, Len %d", fwd, back, l.Len())
	}
	if l.Empty() != (l.Len() == 0) {
		t.Fatalf("Empty %v with Len %d", l.Empty(), l.Len())
	}
	return fwd
}

// TestListAgainstModel runs random operations on two lists and on two
// slices that model them, and compares them after every step.
func TestListAgainstModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	items := make([]item, 64)
	for i := range items {
		items[i].id = i
	}
	var lists [2]itemList
	var model [2][]int
	on := map[int]int{} // id -> list index
	for step := range 20000 {
		i := rng.IntN(2)
		l, m := &lists[i], &model[i]
		switch op := rng.IntN(7); op {
		case 0, 1: // push an item that is on no list
			x := &items[rng.IntN(len(items))]
			if _, busy := on[x.id]; busy {
				continue
			}
			on[x.id] = i
			if op == 0 {
				l.PushBack(x, &x.link)
				*m = append(*m, x.id)
			} else {
				l.PushFront(x, &x.link)
				*m = append([]int{x.id}, *m...)
			}
		case 2:
			x := l.PopFront()
			if len(*m) == 0 {
				if x != nil {
					t.Fatalf("step %d: PopFront of an empty list gave %d", step, x.id)
				}
				continue
			}
			if x == nil || x.id != (*m)[0] {
				t.Fatalf("step %d: PopFront gave %v, want %d", step, x, (*m)[0])
			}
			*m = (*m)[1:]
			delete(on, x.id)
		case 3: // remove a random element
			if len(*m) == 0 {
				continue
			}
			k := rng.IntN(len(*m))
			x := &items[(*m)[k]]
			l.Remove(&x.link)
			*m = slices.Delete(*m, k, k+1)
			delete(on, x.id)
		case 4, 5: // move the other list onto this one
			o, om := &lists[1-i], &model[1-i]
			for _, id := range *om {
				on[id] = i
			}
			if op == 4 {
				l.PushBackList(o)
				*m = append(*m, *om...)
			} else {
				l.PushFrontList(o)
				*m = append(slices.Clone(*om), *m...)
			}
			*om = nil
		case 6: // take it all and put it back
			taken := l.Take()
			if !l.Empty() || l.Len() != 0 {
				t.Fatalf("step %d: Take left %d", step, l.Len())
			}
			if got := ids(t, &taken); !slices.Equal(got, *m) {
				t.Fatalf("step %d: Take gave %v, want %v", step, got, *m)
			}
			*l = taken
		}
		for j := range lists {
			if got := ids(t, &lists[j]); !slices.Equal(got, model[j]) {
				t.Fatalf("step %d: list %d is %v, want %v", step, j, got, model[j])
			}
		}
	}
}

// TestListRemoveClearsLink: an element taken off a list links to nothing,
// so that a stale pointer cannot walk back into the list.
func TestListRemoveClearsLink(t *testing.T) {
	var l itemList
	a, b, c := &item{id: 1}, &item{id: 2}, &item{id: 3}
	for _, x := range []*item{a, b, c} {
		l.PushBack(x, &x.link)
	}
	l.Remove(&b.link)
	if b.link != (Link[item]{}) {
		t.Fatalf("removed element still links: %+v", b.link)
	}
	if got := ids(t, &l); !slices.Equal(got, []int{1, 3}) {
		t.Fatalf("list is %v, want [1 3]", got)
	}
}

func TestListDoesNotAllocate(t *testing.T) {
	var l, o itemList
	items := make([]item, 8)
	allocs := testing.AllocsPerRun(100, func() {
		for i := range items {
			l.PushBack(&items[i], &items[i].link)
		}
		o.PushFrontList(&l)
		taken := o.Take()
		for x := taken.PopFront(); x != nil; x = taken.PopFront() {
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations a run, want 0", allocs)
	}
}
