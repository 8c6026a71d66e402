package targets

import (
	"bytes"
	"testing"

	"github.com/stackd/stackd/bioset"
)

// TestDirectFillsWhatTheHeadLeaves: both direct-access targets hand fill
// exactly the bytes after the head, in order, and the memory target then
// reads back the head and the filled bytes where they were written.
func TestDirectFillsWhatTheHeadLeaves(t *testing.T) {
	const off, n, headLen = 60 << 10, 200 << 10, 5000 // across four 64 KiB chunks
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for _, dev := range []interface {
		bioset.DirectAccess
		Size() uint64
	}{NewMemory(1<<20, 0), NewNull(1 << 20)} {
		d := dev.Direct()
		rest := data[headLen:]
		err := d.WriteDirect(off, n, data[:headLen], func(dst []byte) error {
			if len(dst) > len(rest) {
				t.Fatalf("%T: fill given %d bytes with %d left", dev, len(dst), len(rest))
			}
			copy(dst, rest)
			rest = rest[len(dst):]
			return nil
		})
		if err != nil || len(rest) != 0 {
			t.Fatalf("%T: WriteDirect: %v, %d bytes not filled", dev, err, len(rest))
		}
		if m, ok := dev.(*Memory); ok {
			got := make([]byte, n)
			var b bioset.Bio
			b.Init(bioset.OpRead, off, n, got, nil)
			m.Submit(nil, &b)
			if !bytes.Equal(got, data) {
				t.Fatal("memory: a direct write reads back different")
			}
		}
	}
}
