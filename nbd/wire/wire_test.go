package wire

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// unhex decodes a hex string with spaces in it, for byte layouts written
// the way the spec draws them.
func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHeaderLayouts checks each header's bytes against the spec's layout,
// written out by hand, and that decoding gives the fields back.
func TestHeaderLayouts(t *testing.T) {
	req := Request{Flags: CmdFlagFUA, Type: CmdWrite, Cookie: 0x0102030405060708, Offset: 0x1122334455667788, Length: 0xaabbccdd}
	reqBytes := unhex(t, "25609513 0001 0001 0102030405060708 1122334455667788 aabbccdd")
	simple := SimpleReply{Error: EINVAL, Cookie: 7}
	simpleBytes := unhex(t, "67446698 00000016 0000000000000007")
	chunk := Chunk{Flags: ReplyFlagDone, Type: ReplyTypeError, Cookie: 9, Length: 6}
	chunkBytes := unhex(t, "668e33ef 0001 8001 0000000000000009 00000006")
	optBytes := unhex(t, "49484156454f5054 00000007 00000006")
	optRep := OptionReply{Option: OptGo, Type: RepErrUnknown, Length: 0}
	optRepBytes := unhex(t, "0003e889045565a9 00000007 80000006 00000000")

	for _, c := range []struct {
		name string
		put  func([]byte)
		want []byte
		// decode decodes b and reports whether it gave back the fields.
		decode func(b []byte) (same, ok bool)
	}{
		{"request", func(b []byte) { PutRequest(b, req) }, reqBytes,
			func(b []byte) (bool, bool) {
				h := (*RequestHeader)(b)
				r := Request{Flags: h.Flags(), Type: h.Type(), Cookie: h.Cookie(), Offset: h.Offset(), Length: h.Length()}
				return r == req, h.Magic() == MagicRequest
			}},
		{"simple reply", func(b []byte) { PutSimpleReply(b, simple) }, simpleBytes,
			func(b []byte) (bool, bool) { r, ok := DecodeSimpleReply(b); return r == simple, ok }},
		{"chunk", func(b []byte) { PutChunk(b, chunk) }, chunkBytes,
			func(b []byte) (bool, bool) { r, ok := DecodeChunk(b); return r == chunk, ok }},
		{"option", func(b []byte) { PutOption(b, OptGo, 6) }, optBytes,
			func(b []byte) (bool, bool) {
				typ, n, ok := DecodeOption(b)
				return typ == OptGo && n == 6, ok
			}},
		{"option reply", func(b []byte) { PutOptionReply(b, optRep) }, optRepBytes,
			func(b []byte) (bool, bool) { r, ok := DecodeOptionReply(b); return r == optRep, ok }},
		{"greeting", func(b []byte) { PutGreeting(b, FlagFixedNewstyle|FlagNoZeroes) }, unhex(t, "4e42444d41474943 49484156454f5054 0003"),
			func(b []byte) (bool, bool) {
				f, ok := DecodeGreeting(b)
				return f == FlagFixedNewstyle|FlagNoZeroes, ok
			}},
	} {
		b := bytes.Repeat([]byte{0xee}, len(c.want)+3) // the extra bytes must stay untouched
		c.put(b)
		if !bytes.Equal(b[:len(c.want)], c.want) || !bytes.Equal(b[len(c.want):], []byte{0xee, 0xee, 0xee}) {
			t.Errorf("%s: encoded % x, want % x", c.name, b, c.want)
		}
		if same, ok := c.decode(c.want); !same || !ok {
			t.Errorf("%s: decode gave other fields (%v) or refused its magic (%v)", c.name, !same, !ok)
		}
		bad := bytes.Clone(c.want)
		bad[1] ^= 0xff
		if _, ok := c.decode(bad); ok {
			t.Errorf("%s: decode accepted a bad magic", c.name)
		}
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: encoding into a short slice did not panic", c.name)
				}
			}()
			c.put(make([]byte, len(c.want)-1))
		}()
	}

	if got := AppendRequest([]byte("x"), req); !bytes.Equal(got, append([]byte("x"), reqBytes...)) {
		t.Errorf("AppendRequest: % x", got)
	}
	if got := AppendOption([]byte("x"), OptGo, []byte("abcdef")); !bytes.Equal(got, append(append([]byte("x"), optBytes...), "abcdef"...)) {
		t.Errorf("AppendOption: % x", got)
	}
	if m := Magic(simpleBytes); m != MagicSimpleReply {
		t.Errorf("Magic = %#x", m)
	}
}

func TestInfoExport(t *testing.T) {
	b := make([]byte, InfoExportLen)
	PutInfoExport(b, 1<<40, FlagHasFlags|FlagReadOnly)
	if want := unhex(t, "0000 0000010000000000 0003"); !bytes.Equal(b, want) {
		t.Fatalf("PutInfoExport: % x, want % x", b, want)
	}
	if size, flags, ok := DecodeInfoExport(b); !ok || size != 1<<40 || flags != FlagHasFlags|FlagReadOnly {
		t.Fatalf("DecodeInfoExport: %d %#x %v", size, flags, ok)
	}
	for _, bad := range [][]byte{b[:11], append(b, 0), {0, InfoName, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil} {
		if _, _, ok := DecodeInfoExport(bad); ok {
			t.Errorf("DecodeInfoExport(% x) accepted", bad)
		}
	}
}

func TestStrings(t *testing.T) {
	b := AppendString(AppendString(nil, "mem"), "")
	if want := unhex(t, "00000003 6d656d 00000000"); !bytes.Equal(b, want) {
		t.Fatalf("AppendString: % x", b)
	}
	s, rest, ok := CutString(b)
	if !ok || s != "mem" {
		t.Fatalf("CutString: %q %v", s, ok)
	}
	if s, rest, ok = CutString(rest); !ok || s != "" || len(rest) != 0 {
		t.Fatalf("CutString of the empty string: %q % x %v", s, rest, ok)
	}
	for _, bad := range [][]byte{nil, {0, 0, 0}, {0, 0, 0, 4, 'a', 'b', 'c'}, {0xff, 0xff, 0xff, 0xff}} {
		if _, _, ok := CutString(bad); ok {
			t.Errorf("CutString(% x) accepted", bad)
		}
	}
}

// TestHeadersDoNotAllocate: the server decodes and encodes headers on its
// request path, which must not allocate.
func TestHeadersDoNotAllocate(t *testing.T) {
	var b RequestHeader
	var sink uint64
	n := testing.AllocsPerRun(100, func() {
		PutRequest(b[:], Request{Type: CmdRead, Cookie: 1, Length: 4096})
		cookie := b.Cookie()
		PutSimpleReply(b[:], SimpleReply{Cookie: cookie})
		PutChunk(b[:], Chunk{Flags: ReplyFlagDone, Cookie: cookie})
		c, _ := DecodeChunk(b[:])
		sink += c.Cookie + uint64(EncodeErrno(syscall.EDQUOT)) + uint64(DecodeErrno(ENOSPC))
	})
	if n != 0 {
		t.Errorf("%v allocations", n)
	}
	_ = sink
}

// TestErrorTable checks the table against the spec: each value is Linux's
// errno number (the spec took them from Linux), each errno and each value
// appears once, and its rules: EDQUOT and EFBIG are sent as ENOSPC, an
// errno it has no value for as EIO, and an unknown value is received as
// EINVAL.
func TestErrorTable(t *testing.T) {
	values := map[uint32]bool{}
	for i, e := range Errors {
		if uint32(e.Errno) != e.Value {
			t.Errorf("%s: errno %d, NBD value %d", e.Name, e.Errno, e.Value)
		}
		if values[e.Value] {
			t.Errorf("%s: value %d twice", e.Name, e.Value)
		}
		values[e.Value] = true
		if !strings.HasPrefix(e.Name, "E") {
			t.Errorf("name %q", e.Name)
		}
		if got := ErrorIndex(e.Errno); got != i {
			t.Errorf("ErrorIndex(%s) = %d, want %d", e.Name, got, i)
		}
		if got := DecodeErrno(e.Value); got != e.Errno {
			t.Errorf("DecodeErrno(%d) = %v, want %v", e.Value, got, e.Errno)
		}
	}
	if Errors[eioIndex].Errno != syscall.EIO {
		t.Errorf("Errors[eioIndex] is %s", Errors[eioIndex].Name)
	}
	if Errors[6].Name != "ENOTSUP" {
		t.Errorf("ENOTSUP is named %q, not as the spec spells it", Errors[6].Name)
	}
	for e, want := range map[syscall.Errno]uint32{
		syscall.EDQUOT: ENOSPC, syscall.EFBIG: ENOSPC, syscall.EOPNOTSUPP: ENOTSUP,
		syscall.EROFS: EIO, syscall.EBADF: EIO, syscall.ENOENT: EIO,
		syscall.EPERM: EPERM, syscall.ESHUTDOWN: ESHUTDOWN,
	} {
		if got := EncodeErrno(e); got != want {
			t.Errorf("EncodeErrno(%v) = %d, want %d", e, got, want)
		}
	}
	for _, v := range []uint32{2, 13, 30, 109, 1 << 31} {
		if got := DecodeErrno(v); got != syscall.EINVAL {
			t.Errorf("DecodeErrno(%d) = %v, want EINVAL", v, got)
		}
	}
}

func TestOptionData(t *testing.T) {
	if name, infos, ok := DecodeInfoRequest(AppendInfoRequest(nil, "abc", 1, 3)); !ok || name != "abc" || fmt.Sprint(infos) != "[1 3]" {
		t.Fatalf("DecodeInfoRequest: %q %v %v", name, infos, ok)
	}
	for _, bad := range [][]byte{nil, {0, 0, 0, 1}, {0, 0, 0, 9, 'a', 0, 0}, append(AppendInfoRequest(nil, "a", 1), 0)} {
		if _, _, ok := DecodeInfoRequest(bad); ok {
			t.Errorf("DecodeInfoRequest(% x) accepted", bad)
		}
	}
	if name, q, ok := DecodeMetaContextRequest(AppendMetaContextRequest(nil, "e", "base:allocation", "x:y")); !ok || name != "e" || fmt.Sprint(q) != "[base:allocation x:y]" {
		t.Fatalf("DecodeMetaContextRequest: %q %v %v", name, q, ok)
	}
	huge := be.AppendUint32(AppendString(nil, "e"), 1<<31)
	for _, bad := range [][]byte{nil, AppendString(nil, "e"), huge, append(AppendMetaContextRequest(nil, "e", "q"), 1)} {
		if _, _, ok := DecodeMetaContextRequest(bad); ok {
			t.Errorf("DecodeMetaContextRequest(% x) accepted", bad)
		}
	}
}
