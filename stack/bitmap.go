package stack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"math/bits"
	"os"
	"syscall"
)

// regionBits is a bitset with one bit per mirror region.
type regionBits []uint64

func newRegionBits(n int) regionBits { return make(regionBits, (n+63)/64) }

func (b regionBits) has(r int) bool { return b[r/64]&(1<<(r%64)) != 0 }
func (b regionBits) set(r int)      { b[r/64] |= 1 << (r % 64) }
func (b regionBits) unset(r int)    { b[r/64] &^= 1 << (r % 64) }

// count returns how many bits are set at or after r.
func (b regionBits) countFrom(r int) int {
	n := 0
	for w := r / 64; w < len(b); w++ {
		word := b[w]
		if w == r/64 {
			word &^= 1<<(r%64) - 1
		}
		n += bits.OnesCount64(word)
	}
	return n
}

// next returns the first set bit at or after r, or -1.
func (b regionBits) next(r int) int {
	for w := r / 64; w < len(b); w++ {
		word := b[w]
		if w == r/64 {
			word &^= 1<<(r%64) - 1
		}
		if word != 0 {
			return w*64 + bits.TrailingZeros64(word)
		}
	}
	return -1
}

// The bitmap file records what a mirror must resync after it stops: which
// legs were behind, and which regions may differ between the legs. Its
// format, version 1, all integers little-endian:
//
//	header, bytes 0 to 511, written whole (one sector):
//	  0  8  magic "stackdMB"
//	  8  4  version: 1
//	 12  4  header length: 512
//	 16  8  events: incremented by every header write, as md's superblock
//	        events, so that the newest of two copies could be told apart
//	 24  8  the mirror's size in bytes
//	 32  8  the region size in bytes
//	 40  8  the number of regions
//	 48  4  the number of legs, at most mirrorMaxLegs
//	 52  4  flags: bit 0 clean (the mirror stopped with every write done)
//	 56 32  one byte per leg: 0 in_sync, 1 faulty, 2 resyncing
//	508  4  CRC-32C of bytes 0 to 507
//	bits, from byte 4096: one bit per region, bit r of the file's bit
//	        stream (byte r/8, bit r%8) set when region r is dirty; written
//	        in 4096-byte blocks.
//
// A header whose magic, version, length or checksum is wrong, or that
// describes another mirror (size, region, legs), is refused: stackd will
// not guess which leg is current. Removing the file makes the mirror start
// from no record, which resyncs everything from leg 0.
const (
	bitmapMagic      = "stackdMB"
	bitmapVersion    = 1
	bitmapHeaderLen  = 512
	bitmapBitsOffset = 4096
	bitmapBlock      = 4096
	bitmapFlagClean  = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// bitmapHeader is the header of a bitmap file, decoded.
type bitmapHeader struct {
	events  uint64
	size    uint64
	region  uint64
	regions uint64
	clean   bool
	legs    []legState
}

func (h *bitmapHeader) encode() []byte {
	p := make([]byte, bitmapHeaderLen)
	copy(p, bitmapMagic)
	le := binary.LittleEndian
	le.PutUint32(p[8:], bitmapVersion)
	le.PutUint32(p[12:], bitmapHeaderLen)
	le.PutUint64(p[16:], h.events)
	le.PutUint64(p[24:], h.size)
	le.PutUint64(p[32:], h.region)
	le.PutUint64(p[40:], h.regions)
	le.PutUint32(p[48:], uint32(len(h.legs)))
	if h.clean {
		le.PutUint32(p[52:], bitmapFlagClean)
	}
	for i, st := range h.legs {
		p[56+i] = byte(st)
	}
	le.PutUint32(p[508:], crc32.Checksum(p[:508], castagnoli))
	return p
}

func decodeBitmapHeader(p []byte) (bitmapHeader, error) {
	le := binary.LittleEndian
	switch {
	case len(p) < bitmapHeaderLen:
		return bitmapHeader{}, errors.New("shorter than its header")
	case string(p[:8]) != bitmapMagic:
		return bitmapHeader{}, errors.New("not a stackd mirror bitmap (bad magic)")
	case le.Uint32(p[8:]) != bitmapVersion:
		return bitmapHeader{}, fmt.Errorf("version %d, want %d", le.Uint32(p[8:]), bitmapVersion)
	case le.Uint32(p[12:]) != bitmapHeaderLen:
		return bitmapHeader{}, fmt.Errorf("header length %d, want %d", le.Uint32(p[12:]), bitmapHeaderLen)
	case le.Uint32(p[508:]) != crc32.Checksum(p[:508], castagnoli):
		return bitmapHeader{}, errors.New("header checksum mismatch (a torn or corrupt write)")
	}
	h := bitmapHeader{
		events:  le.Uint64(p[16:]),
		size:    le.Uint64(p[24:]),
		region:  le.Uint64(p[32:]),
		regions: le.Uint64(p[40:]),
		clean:   le.Uint32(p[52:])&bitmapFlagClean != 0,
	}
	n := le.Uint32(p[48:])
	if n > mirrorMaxLegs {
		return bitmapHeader{}, fmt.Errorf("%d legs, at most %d", n, mirrorMaxLegs)
	}
	for i := range int(n) {
		st := legState(p[56+i])
		if st > legResyncing {
			return bitmapHeader{}, fmt.Errorf("leg %d has state %d, unknown", i, st)
		}
		h.legs = append(h.legs, st)
	}
	return h, nil
}

// bitmapFile is an open bitmap file. Only the mirror's worker writes it
// once the mirror runs; each write is followed by fdatasync, because the
// point of the file is what survives a crash.
type bitmapFile struct {
	f    *os.File
	path string
}

// openBitmapFile opens the bitmap file at path for a mirror of size bytes
// in regions of region bytes over legs legs, creating it if it does not
// exist. It returns the header and bits found, or fresh when it created
// the file.
func openBitmapFile(path string, size, region uint64, regions, legs int) (bf *bitmapFile, h bitmapHeader, bits regionBits, fresh bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		fresh = true
	}
	if err != nil {
		return nil, h, nil, false, fmt.Errorf("mirror bitmap: %w", err)
	}
	bf = &bitmapFile{f: f, path: path}
	bits = newRegionBits(regions)
	if fresh {
		return bf, h, bits, true, nil
	}
	p := make([]byte, bitmapHeaderLen)
	if _, err := f.ReadAt(p, 0); err != nil {
		f.Close()
		return nil, h, nil, false, fmt.Errorf("mirror bitmap %s: reading the header: %w", path, err)
	}
	h, err = decodeBitmapHeader(p)
	if err == nil && (h.size != size || h.region != region || h.regions != uint64(regions) || len(h.legs) != legs) {
		err = fmt.Errorf("made for a mirror of %d bytes in %d regions of %d bytes over %d legs, not %d bytes in %d regions of %d over %d",
			h.size, h.regions, h.region, len(h.legs), size, regions, region, legs)
	}
	if err != nil {
		f.Close()
		return nil, h, nil, false, fmt.Errorf("mirror bitmap %s: %v; remove it to resync every leg from leg 0", path, err)
	}
	raw := make([]byte, bitmapBytes(regions))
	if _, err := f.ReadAt(raw, bitmapBitsOffset); err != nil {
		f.Close()
		return nil, h, nil, false, fmt.Errorf("mirror bitmap %s: reading the bits: %w", path, err)
	}
	for i := range bits {
		var word [8]byte
		copy(word[:], raw[i*8:])
		bits[i] = binary.LittleEndian.Uint64(word[:])
	}
	return bf, h, bits, false, nil
}

// readBitmapHeader checks that the file at path opens for writing and
// holds a header stackd can read; whether it fits the mirror is learnt
// when the mirror is built, which knows the legs' sizes.
func readBitmapHeader(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("mirror bitmap %s cannot be opened for writing: %s", path, reason(err))
	}
	defer f.Close()
	p := make([]byte, bitmapHeaderLen)
	_, err = f.ReadAt(p, 0)
	if err == nil {
		_, err = decodeBitmapHeader(p)
	}
	if err != nil {
		return fmt.Errorf("mirror bitmap %s: %v; remove it to resync every leg from leg 0", path, err)
	}
	return nil
}

// bitmapBytes is the length of the bits area for n regions, in whole
// blocks.
func bitmapBytes(n int) int {
	b := (n + 7) / 8
	return (b + bitmapBlock - 1) / bitmapBlock * bitmapBlock
}

// writeHeader writes h and makes it durable.
func (bf *bitmapFile) writeHeader(h bitmapHeader) error {
	if _, err := bf.f.WriteAt(h.encode(), 0); err != nil {
		return err
	}
	return bf.sync()
}

// writeBlocks writes the blocks of bits listed (block numbers of the bits
// area) and makes them durable. One fdatasync covers them all: this is
// how many writes' bits become durable at the cost of one.
func (bf *bitmapFile) writeBlocks(bits regionBits, blocks []int) error {
	buf := make([]byte, bitmapBlock)
	const wordsPerBlock = bitmapBlock / 8
	for _, blk := range blocks {
		clear(buf)
		for i := 0; i < wordsPerBlock && blk*wordsPerBlock+i < len(bits); i++ {
			binary.LittleEndian.PutUint64(buf[i*8:], bits[blk*wordsPerBlock+i])
		}
		if _, err := bf.f.WriteAt(buf, int64(bitmapBitsOffset+blk*bitmapBlock)); err != nil {
			return err
		}
	}
	return bf.sync()
}

func (bf *bitmapFile) sync() error {
	for {
		err := syscall.Fdatasync(int(bf.f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}

func (bf *bitmapFile) close() error { return bf.f.Close() }
