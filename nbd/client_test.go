package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/nbd/client"
	"github.com/stackd/stackd/nbd/wire"
)

// These tests drive the server through package nbd/client, as a real
// client would. The client's own behaviour (cancellation, chunks this
// server never sends, a server that breaks the protocol) is tested in its
// package, against a scripted server.

// TestRoundTrip drives one client connection with many concurrent workers
// against a device that completes bios out of order, over a unix socket
// and over TCP, with simple and structured replies, and checks the device
// against a model.
func TestRoundTrip(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		for _, structured := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/structured=%v", network, structured), func(t *testing.T) {
				testRoundTrip(t, network, structured)
			})
		}
	}
}

func testRoundTrip(t *testing.T, network string, structured bool) {
	const (
		workers = 160 // more than the kernel's 128 in flight
		region  = 64 << 10
		iters   = 8
	)
	dev := newMemDev(workers*region, allCaps)
	dev.maxDelay = 300 * time.Microsecond
	ts := startServer(t, oneExport(dev), network)
	c := ts.dial(t, client.Options{StructuredReplies: structured})
	if c.Structured() != structured {
		t.Fatalf("Structured() = %v", c.Structured())
	}
	if c.Size() != uint64(workers*region) {
		t.Fatalf("Size() = %d", c.Size())
	}
	want := uint16(wire.FlagHasFlags | wire.FlagCanMultiConn | wire.FlagSendFlush | wire.FlagSendFUA | wire.FlagSendTrim |
		wire.FlagSendWriteZeroes | wire.FlagSendFastZero | wire.FlagSendCache)
	if structured {
		want |= wire.FlagSendDF
	}
	if c.Flags() != want {
		t.Fatalf("Flags() = %#x, want %#x", c.Flags(), want)
	}

	ctx := tctx(t)
	models := make([][]byte, workers)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		models[w] = make([]byte, region)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- roundTripWorker(ctx, c, uint64(w*region), models[w], rand.New(rand.NewPCG(uint64(w), 1)), iters)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := dev.snapshot()
	for w := range workers {
		if !bytes.Equal(got[w*region:(w+1)*region], models[w]) {
			t.Fatalf("worker %d: device differs from model", w)
		}
	}
	if m := dev.maxInflight.Load(); m < 2 {
		t.Errorf("at most %d bios in flight: requests were not concurrent", m)
	}
}

// roundTripWorker does random operations on its own region and keeps a
// model of it.
func roundTripWorker(ctx context.Context, c *client.Client, base uint64, model []byte, rng *rand.Rand, iters int) error {
	buf := make([]byte, len(model))
	var seed [32]byte
	be.PutUint64(seed[:], rng.Uint64())
	fill := rand.NewChaCha8(seed)
	for i := range iters {
		off := rng.IntN(len(model) - 1)
		n := 1 + rng.IntN(len(model)-off)
		switch rng.IntN(6) {
		case 0, 1, 2:
			data := buf[:n]
			fill.Read(data)
			var flags uint16
			if i%3 == 0 {
				flags = wire.CmdFlagFUA
			}
			if err := c.Write(ctx, base+uint64(off), data, flags); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			copy(model[off:], data)
		case 3:
			if err := c.WriteZeroes(ctx, base+uint64(off), uint32(n), wire.CmdFlagNoHole); err != nil {
				return fmt.Errorf("write zeroes: %w", err)
			}
			clear(model[off : off+n])
		case 4:
			if err := c.Trim(ctx, base+uint64(off), uint32(n), 0); err != nil {
				return fmt.Errorf("trim: %w", err)
			}
			clear(model[off : off+n]) // the test device zeroes what it trims
		case 5:
			if err := c.Flush(ctx); err != nil {
				return fmt.Errorf("flush: %w", err)
			}
			if err := c.Cache(ctx, base+uint64(off), uint32(n)); err != nil {
				return fmt.Errorf("cache: %w", err)
			}
		}
		got := buf[:n]
		if err := c.Read(ctx, base+uint64(off), got); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if !bytes.Equal(got, model[off:off+n]) {
			return fmt.Errorf("region %#x: read at +%d/%d differs from model", base, off, n)
		}
	}
	return nil
}

// TestManyInFlight holds bios in the device until 200 requests of one
// connection are in flight at once, then completes them in random order.
func TestManyInFlight(t *testing.T) {
	const n = 200
	dev := newMemDev(n*4096, allCaps)
	ts := startServer(t, oneExport(dev), "unix")
	c := ts.dial(t, client.Options{})
	ctx := tctx(t)

	run := func(f func(i int) error) {
		t.Helper()
		dev.gate()
		errs := make(chan error, n)
		for i := range n {
			go func() { errs <- f(i) }()
		}
		if !dev.waitHeld(n, ioTimeout) {
			t.Fatalf("only %d of %d requests reached the device at once", dev.heldCount(), n)
		}
		dev.open()
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
	run(func(i int) error {
		return c.Write(ctx, uint64(i*4096), bytes.Repeat([]byte{byte(i)}, 4096), 0)
	})
	run(func(i int) error {
		b := make([]byte, 4096)
		if err := c.Read(ctx, uint64(i*4096), b); err != nil {
			return err
		}
		if !bytes.Equal(b, bytes.Repeat([]byte{byte(i)}, 4096)) {
			return fmt.Errorf("block %d: wrong data", i)
		}
		return nil
	})
}

func TestStructuredBlockStatus(t *testing.T) {
	const size = 4 << 20
	dev := newMemDev(size, allCaps)
	bare := newMemDev(size, allCaps&^bioset.CapBlockStatus)
	ts := startServer(t, Options{Exports: []ExportConfig{
		{Name: "mem", Device: dev, Default: true},
		{Name: "nostatus", Device: bare},
	}}, "tcp")
	c := ts.dial(t, client.Options{MetaContext: true})
	ctx := tctx(t)
	if !c.Structured() {
		t.Fatal("structured replies not negotiated")
	}

	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10/16)
	if err := c.Write(ctx, 64<<10, data, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, 256<<10, data[:4096], 0); err != nil {
		t.Fatal(err)
	}
	const hz = bioset.ExtentHole | bioset.ExtentZero
	check := func(off uint64, length uint32, reqOne bool, want []bioset.Extent) {
		t.Helper()
		got, err := c.BlockStatus(ctx, off, length, reqOne)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("BlockStatus(%d, %d, %v) = %v, want %v", off, length, reqOne, got, want)
		}
	}
	check(0, size, false, []bioset.Extent{
		{Offset: 0, Length: 64 << 10, Flags: hz},
		{Offset: 64 << 10, Length: 64 << 10},
		{Offset: 128 << 10, Length: 128 << 10, Flags: hz},
		{Offset: 256 << 10, Length: 4096},
		{Offset: 260 << 10, Length: size - 260<<10, Flags: hz},
	})
	check(0, size, true, []bioset.Extent{{Offset: 0, Length: 64 << 10, Flags: hz}})
	check(100<<10, 10<<10, false, []bioset.Extent{{Offset: 100 << 10, Length: 10 << 10}})
	if err := c.Trim(ctx, 64<<10, 64<<10, 0); err != nil {
		t.Fatal(err)
	}
	check(0, 256<<10, false, []bioset.Extent{{Offset: 0, Length: 256 << 10, Flags: hz}})

	// Reads come back as one OFFSET_DATA chunk.
	got := make([]byte, 4096)
	if err := c.Read(ctx, 256<<10, got); err != nil || !bytes.Equal(got, data[:4096]) {
		t.Fatalf("read: %v", err)
	}
	// Errors come back as error chunks with a message.
	err := c.Read(ctx, size-10, got)
	var re *client.RemoteError
	if !errors.As(err, &re) || re.Errno != syscall.EINVAL || re.Message == "" {
		t.Fatalf("read past the end: %v", err)
	}
	if _, err := c.BlockStatus(ctx, size-10, 20, false); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("block status past the end: %v", err)
	}

	// More fragments than the result window: a contiguous prefix.
	for i := uint64(0); i < 600; i += 2 {
		if err := c.Write(ctx, 512<<10+i*4096, data[:4096], 0); err != nil {
			t.Fatal(err)
		}
	}
	ext, err := c.BlockStatus(ctx, 512<<10, 600*4096, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) == 0 || len(ext) > maxExtents {
		t.Fatalf("%d extents", len(ext))
	}
	pos := uint64(512 << 10)
	for i, e := range ext {
		if e.Offset != pos || e.Length == 0 || (i > 0 && e.Flags == ext[i-1].Flags) {
			t.Fatalf("extent %d: %+v (at %d)", i, e, pos)
		}
		pos += e.Length
	}

	// A device without block status: one extent, status 0.
	c2 := ts.dial(t, client.Options{ExportName: "nostatus", MetaContext: true})
	ext, err = c2.BlockStatus(ctx, 4096, 8192, false)
	if err != nil || fmt.Sprint(ext) != fmt.Sprint([]bioset.Extent{{Offset: 4096, Length: 8192}}) {
		t.Fatalf("BlockStatus without device support = %v, %v", ext, err)
	}

	// Without a meta context the client refuses.
	c3 := ts.dial(t, client.Options{StructuredReplies: true})
	if _, err := c3.BlockStatus(ctx, 0, 4096, false); !errors.Is(err, client.ErrNoMetaContext) {
		t.Fatalf("BlockStatus without meta context: %v", err)
	}
}

func TestReadOnlyExport(t *testing.T) {
	dev := newMemDev(1<<20, allCaps)
	o := oneExport(dev)
	o.Exports[0].ReadOnly = true
	ts := startServer(t, o, "unix")
	c := ts.dial(t, client.Options{})
	ctx := tctx(t)
	if c.Flags()&wire.FlagReadOnly == 0 {
		t.Fatalf("flags %#x lack READ_ONLY", c.Flags())
	}
	for name, err := range map[string]error{
		"write":        c.Write(ctx, 0, make([]byte, 4096), 0),
		"trim":         c.Trim(ctx, 0, 4096, 0),
		"write_zeroes": c.WriteZeroes(ctx, 0, 4096, 0),
	} {
		if !errors.Is(err, syscall.EPERM) {
			t.Errorf("%s on a read-only export: %v, want EPERM", name, err)
		}
	}
	if err := c.Read(ctx, 0, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if dev.submitted.Load() != 1 {
		t.Fatalf("%d bios reached the device, want 1 (the read)", dev.submitted.Load())
	}
}

func TestDeviceErrors(t *testing.T) {
	dev := newMemDev(1<<20, allCaps)
	dev.failOp = map[bioset.Op]syscall.Errno{
		bioset.OpFlush: syscall.EDQUOT,  // mapped to ENOSPC
		bioset.OpCache: syscall.ENOTSUP, // passed through
		bioset.OpTrim:  syscall.EBADF,   // not an NBD error: EIO
	}
	ts := startServer(t, oneExport(dev), "unix")
	ctx := tctx(t)
	for _, structured := range []bool{false, true} {
		c := ts.dial(t, client.Options{StructuredReplies: structured})
		if err := c.Flush(ctx); !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("flush: %v", err)
		}
		if err := c.Cache(ctx, 0, 10); !errors.Is(err, syscall.ENOTSUP) {
			t.Errorf("cache: %v", err)
		}
		if err := c.Trim(ctx, 0, 10, 0); !errors.Is(err, syscall.EIO) {
			t.Errorf("trim: %v", err)
		}
		if err := c.Read(ctx, 0, make([]byte, 10)); err != nil {
			t.Errorf("read: %v", err)
		}
	}
}

func TestList(t *testing.T) {
	ts := startServer(t, Options{Exports: []ExportConfig{
		{Name: "a", Description: "first", Device: newMemDev(4096, 0)},
		{Name: "b", Device: newMemDev(4096, 0), Default: true},
	}}, "tcp")
	names, err := client.List(tctx(t), ts.network, ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(names) != "[a b]" {
		t.Fatalf("List = %q", names)
	}
	_, err = client.Dial(tctx(t), ts.network, ts.addr, client.Options{ExportName: "nope"})
	if !errors.Is(err, client.ErrUnknownExport) {
		t.Fatalf("Dial to an unknown export: %v", err)
	}
	c := ts.dial(t, client.Options{}) // the default export
	if c.Size() != 4096 {
		t.Fatalf("default export size %d", c.Size())
	}
	if lo, pref, hi := c.BlockSize(); lo != 1 || pref != 4096 || hi != MaxPayload {
		t.Fatalf("block sizes %d %d %d", lo, pref, hi)
	}
}
