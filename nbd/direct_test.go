package nbd

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/nbd/wire"
	"github.com/stackd/stackd/targets"
)

// directDev is a memory target that counts how its writes arrive: as WRITE
// bios, or as direct writes (bioset.Direct).
type directDev struct {
	*targets.Memory
	bios, direct atomic.Int64
	offer        bool // whether Direct offers direct access
}

func newDirectDev(size uint64, offer bool) *directDev {
	return &directDev{Memory: targets.NewMemory(size, 64<<10), offer: offer}
}

func (d *directDev) Submit(s *bioset.Submitter, b *bioset.Bio) {
	if b.Op == bioset.OpWrite {
		d.bios.Add(1)
	}
	d.Memory.Submit(s, b)
}

func (d *directDev) Direct() bioset.Direct {
	if !d.offer {
		return nil
	}
	return d
}

func (d *directDev) WriteDirect(off, length uint64, head []byte, fill func([]byte) error) error {
	d.direct.Add(1)
	return d.Memory.WriteDirect(off, length, head, fill)
}

// TestDirectWrites: WRITEs of every shape (inside the reader's buffer,
// across it, across chunks, 3 MiB from the socket) land where they belong
// through direct access, from clients writing at once, and no WRITE bio is
// made; a device without direct access gets bios, as before.
func TestDirectWrites(t *testing.T) {
	const size = 16 << 20
	for _, tc := range []struct {
		name    string
		network string
		offer   bool
	}{
		{"unix", "unix", true},
		{"tcp", "tcp", true},
		{"no-direct", "unix", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := newDirectDev(size, tc.offer)
			ts := startServer(t, oneExport(dev), tc.network)
			model := make([]byte, size)
			rng := rand.New(rand.NewPCG(1, 2))
			lengths := []int{1, 512, 4096, 5000, readBufSize - 28, readBufSize + 1, 64 << 10, 200 << 10, 3 << 20}
			// Each client writes its own quarter, so that the model
			// knows what each byte must end as.
			const clients = 4
			var wg sync.WaitGroup
			var writes atomic.Int64
			for i := range clients {
				cl := ts.dial(t, client.Options{ExportName: "mem"})
				lo := i * size / clients
				var ops []struct {
					off int
					p   []byte
				}
				for _, n := range lengths {
					for range 3 {
						off := lo + rng.IntN(size/clients-n)
						p := make([]byte, n)
						for j := range p {
							p[j] = byte(rng.Uint32())
						}
						copy(model[off:], p)
						ops = append(ops, struct {
							off int
							p   []byte
						}{off, p})
					}
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					for _, op := range ops {
						if err := cl.Write(tctx(t), uint64(op.off), op.p, 0); err != nil {
							t.Errorf("write %d bytes at %d: %v", len(op.p), op.off, err)
							return
						}
						writes.Add(1)
					}
				}()
			}
			wg.Wait()
			cl := ts.dial(t, client.Options{ExportName: "mem"})
			got := make([]byte, 1<<20)
			for off := 0; off < size; off += len(got) {
				if err := cl.Read(tctx(t), uint64(off), got); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, model[off:off+len(got)]) {
					t.Fatalf("data at %d..%d differs from what was written", off, off+len(got))
				}
			}
			bios, direct := dev.bios.Load(), dev.direct.Load()
			if tc.offer && (bios != 0 || direct != writes.Load()) {
				t.Errorf("%d WRITE bios and %d direct writes for %d WRITEs; want none and all", bios, direct, writes.Load())
			}
			if !tc.offer && (direct != 0 || bios != writes.Load()) {
				t.Errorf("%d direct writes and %d WRITE bios for %d WRITEs on a device without direct access", direct, bios, writes.Load())
			}
		})
	}
}

// TestDirectWriteCutShort: a client that dies in the middle of a direct
// WRITE's payload loses its connection and nothing else: the server goes
// on serving others, and shuts down cleanly with nothing left in flight.
func TestDirectWriteCutShort(t *testing.T) {
	dev := newDirectDev(8<<20, true)
	obs := &countingObserver{}
	o := oneExport(dev)
	o.Observer = obs
	ts := startServer(t, o, "unix")

	r := dialRaw(t, ts)
	r.start("mem", false, false)
	r.write(requestBytes(wire.CmdWrite, 0, 1, 0, 1<<20, bytes.Repeat([]byte{0xaa}, 300<<10)))
	r.nc.Close()

	cl := ts.dial(t, client.Options{ExportName: "mem"})
	p := bytes.Repeat([]byte{0x55}, 1<<20)
	if err := cl.Write(tctx(t), 2<<20, p, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if err := cl.Read(tctx(t), 2<<20, got); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("after another client's cut-short write: read %v, data equal %v", err, bytes.Equal(got, p))
	}
	waitFor(t, "the cut-short connection to close", func() bool {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		return obs.closed == 1
	})
	// A reply reaches the client just before its request is counted
	// done; a cut-short write counted as started would never be.
	waitFor(t, "every request started to be done (the cut-short write must not count as started)", func() bool {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		return obs.started == obs.done
	})
}

// TestDirectWriteReadOnly: a read-only export over a device with direct
// access still refuses WRITEs, and its memory is untouched.
func TestDirectWriteReadOnly(t *testing.T) {
	dev := newDirectDev(1<<20, true)
	o := oneExport(dev)
	o.Exports[0].ReadOnly = true
	ts := startServer(t, o, "unix")
	r := dialRaw(t, ts)
	r.start("mem", false, false)
	r.request(wire.CmdWrite, 0, 7, 0, 4096, bytes.Repeat([]byte{1}, 4096))
	if code, cookie, _ := r.simple(0); code != wire.EncodeErrno(syscall.EPERM) || cookie != 7 {
		t.Fatalf("WRITE to a read-only export: error %d cookie %d, want EPERM", code, cookie)
	}
	if dev.Allocated() != 0 || dev.direct.Load() != 0 {
		t.Errorf("a refused WRITE reached the device: %d bytes allocated, %d direct writes", dev.Allocated(), dev.direct.Load())
	}
}

// TestDirectWriteInPieces: a direct WRITE whose payload arrives in pieces,
// some after a pause (so that the reader waits for them), lands whole: a
// payload that fits the reader's buffer, read into it, and one that does
// not, read into the device.
func TestDirectWriteInPieces(t *testing.T) {
	dev := newDirectDev(4<<20, true)
	ts := startServer(t, oneExport(dev), "unix")
	r := dialRaw(t, ts)
	r.start("mem", false, false)
	for i, n := range []int{8 << 10, 1 << 20} {
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(j*13 + i)
		}
		off := uint64(i) << 20
		msg := requestBytes(wire.CmdWrite, 0, uint64(i), off, uint32(n), p)
		from := 0
		for _, to := range []int{wire.RequestHeaderLen + 100, wire.RequestHeaderLen + n/2, len(msg)} {
			if from > 0 {
				time.Sleep(20 * time.Millisecond) // the reader runs out of bytes here
			}
			r.write(msg[from:to])
			from = to
		}
		if code, cookie, _ := r.simple(0); code != 0 || cookie != uint64(i) {
			t.Fatalf("write of %d bytes in pieces: error %d cookie %d", n, code, cookie)
		}
		r.request(wire.CmdRead, 0, 100+uint64(i), off, uint32(n), nil)
		if code, _, got := r.simple(n); code != 0 || !bytes.Equal(got, p) {
			t.Fatalf("write of %d bytes in pieces reads back different (error %d)", n, code)
		}
	}
	if dev.direct.Load() != 2 || dev.bios.Load() != 0 {
		t.Errorf("%d direct writes and %d WRITE bios, want 2 and none", dev.direct.Load(), dev.bios.Load())
	}
}
