package bioset

import (
	"bytes"
	"sync"
	"testing"
)

// lendingRead returns a top READ bio of length bytes at device offset off,
// with a loan table, and its buffer.
func lendingRead(off, length uint64) (*Bio, *Loans, []byte) {
	buf := make([]byte, length)
	b := new(Bio)
	b.Init(OpRead, off, length, buf, nil)
	b.TopOffset = off
	l := NewLoans(8)
	b.SetLoans(l)
	return b, l, buf
}

// TestLendPlacesPieces: pieces lent by the top bio and by split children
// land at their position in the top buffer, and Sorted returns them in
// buffer order whatever order they were lent in.
func TestLendPlacesPieces(t *testing.T) {
	pool := New(Options{Name: "lend", Capacity: 4, NoRescuer: true})
	defer pool.Close()
	top, l, buf := lendingRead(1<<20, 100)

	// Split off 30 bytes, then 20: children at top positions 0 and 30,
	// the remainder (the top bio itself) at 50.
	front := pool.Split(nil, top, 30)
	mid := pool.Split(nil, top, 20)
	a, b, c := []byte("AAAAAAAAAA"), []byte("BBBBB"), []byte("CCCCCCCCCCCC")
	for _, lend := range []struct {
		bio  *Bio
		at   uint64
		data []byte
	}{{top, 10, c}, {front, 5, a}, {mid, 0, b}} {
		if !lend.bio.Lend(lend.at, lend.data) {
			t.Fatalf("loan at %d of bio at top offset %d refused", lend.at, lend.bio.TopOffset)
		}
	}
	got := l.Sorted()
	want := []Loan{{Pos: 5, Data: a}, {Pos: 30, Data: b}, {Pos: 60, Data: c}}
	if len(got) != len(want) {
		t.Fatalf("%d loans, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Pos != want[i].Pos || !bytes.Equal(got[i].Data, want[i].Data) {
			t.Fatalf("loan %d: at %d %q, want at %d %q", i, got[i].Pos, got[i].Data, want[i].Pos, want[i].Data)
		}
	}
	for i := range buf {
		if buf[i] != 0 {
			t.Fatalf("lending wrote into the buffer at %d", i)
		}
	}
	front.End(nil)
	mid.End(nil)
	l.Reset()
	if len(l.Sorted()) != 0 || l.buf != nil {
		t.Fatal("Reset left loans or the buffer behind")
	}
}

// TestLendRefuses: every case where the piece must be copied instead.
func TestLendRefuses(t *testing.T) {
	p := []byte("xxxx")

	var noTable Bio
	noTable.Init(OpRead, 0, 8, make([]byte, 8), nil)
	if noTable.Lend(0, p) {
		t.Error("lent to a bio without a loan table")
	}

	top, _, _ := lendingRead(0, 8)
	top.Op = OpWrite
	if top.Lend(0, p) {
		t.Error("lent to a WRITE")
	}

	top, l, _ := lendingRead(0, 8)
	if top.Lend(5, p) || top.Lend(9, nil) || top.Lend(0, nil) {
		t.Error("lent a piece that runs past the bio, or an empty one")
	}

	// A child whose buffer is a copy, not a sub-slice of the top buffer:
	// a layer that broke the invariant gets copies, not misplaced data.
	pool := New(Options{Name: "lend", Capacity: 1, NoRescuer: true})
	defer pool.Close()
	child := pool.Child(nil, top)
	child.Offset, child.Length, child.TopOffset = 4, 4, 4
	child.Buf = make([]byte, 4)
	if child.Lend(0, p) {
		t.Error("lent to a child whose buffer is not the top buffer's")
	}
	child.Buf = top.Buf[4:8]
	child.TopOffset = 2 // wrong: its bytes are the top's from 4
	if child.Lend(0, p) {
		t.Error("lent to a child whose TopOffset does not match its buffer")
	}
	child.TopOffset = 4
	if !child.Lend(0, p) {
		t.Error("refused a loan to a well-formed child")
	}
	child.End(nil)
	if n := len(l.Sorted()); n != 1 {
		t.Fatalf("%d loans recorded, want the one taken", n)
	}
}

// TestLendTableFull: leaves lending from many goroutines at once fill the
// table exactly; later loans are refused, and no slot is written twice.
func TestLendTableFull(t *testing.T) {
	const slots = 32
	const pieces = 4 * slots
	top, _, _ := lendingRead(0, pieces)
	l := NewLoans(slots)
	top.SetLoans(l)
	var wg sync.WaitGroup
	var mu sync.Mutex
	taken := 0
	for i := range pieces {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if top.Lend(uint64(i), []byte{byte(i)}) {
				mu.Lock()
				taken++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if taken != slots {
		t.Fatalf("%d loans taken, want %d", taken, slots)
	}
	got := l.Sorted()
	if len(got) != slots {
		t.Fatalf("Sorted returned %d loans, want %d", len(got), slots)
	}
	for i, g := range got {
		if byte(g.Pos) != g.Data[0] || (i > 0 && g.Pos <= got[i-1].Pos) {
			t.Fatalf("loan %d: %+v (after %+v)", i, g, got[max(i-1, 0)])
		}
	}
}
