package targets

import (
	"bytes"
	"testing"

	"github.com/stackd/stackd/bioset"
)

func TestNull(t *testing.T) {
	n := NewNull(1 << 30)
	defer n.Close()
	if n.Caps() != bioset.CapsAll {
		t.Fatalf("caps %#x", n.Caps())
	}
	write(t, n, 4096, bytes.Repeat([]byte{9}, 8192))
	if got := read(t, n, 4096, 8192); !bytes.Equal(got, make([]byte, 8192)) {
		t.Fatal("null target read back non-zero data")
	}
	for _, op := range []bioset.Op{bioset.OpTrim, bioset.OpWriteZeroes, bioset.OpCache} {
		mustDo(t, n, op, bioset.FlagFUA|bioset.FlagNoHole|bioset.FlagFastZero, 0, 1<<30, nil)
	}
	wantExtents(t, blockStatus(t, n, 100, 1<<30-100, 2, 1<<40), ext(1<<40, 1<<30-100, hz))
	wantExtents(t, blockStatus(t, n, 100, 1000, 0, 0))
	checkOutOfRange(t, n)
}

func TestNullZeroAllocs(t *testing.T) {
	n := NewNull(1 << 30)
	buf := make([]byte, 4096)
	slots := make([]bioset.Extent, 4)
	var b bioset.Bio
	var s bioset.Submitter
	for _, op := range bioset.Ops() {
		allocs := testing.AllocsPerRun(100, func() {
			var p []byte
			if op.HasPayload() {
				p = buf
			}
			b.Init(op, 4096, 4096, p, nopEnd)
			b.Extents = slots
			b.Dev = n
			s.Submit(&b)
		})
		if allocs != 0 || b.Err() != nil {
			t.Errorf("%v: %v allocations, err %v", op, allocs, b.Err())
		}
	}
}
