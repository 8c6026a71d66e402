package wire

import (
	"encoding/binary"
	"slices"
)

var be = binary.BigEndian

// Every Put function writes its structure, magic included, at the start of
// b, which must be at least that structure's length (it panics
// otherwise, as a slice index would). Every Decode function reads the
// structure at the start of b, which must likewise be long enough, and
// reports false if its magic is wrong; the fields are decoded either way.
// A request header is decoded in place instead (RequestHeader).
// The `_ = b[n-1]` line in each checks the length once, so that the loads
// and stores after it need no checks of their own.

// Magic returns the 32-bit magic that begins a request, a simple reply or
// a structured reply chunk: a reader of replies dispatches on it, and any
// reader reports it when it is wrong.
func Magic(b []byte) uint32 { return be.Uint32(b) }

// PutGreeting encodes the server's greeting: NBDMAGIC, IHAVEOPT and its
// handshake flags (FlagFixedNewstyle, FlagNoZeroes), GreetingLen bytes.
func PutGreeting(b []byte, flags uint16) {
	_ = b[GreetingLen-1]
	be.PutUint64(b[0:], MagicNBD)
	be.PutUint64(b[8:], MagicOption)
	be.PutUint16(b[16:], flags)
}

// DecodeGreeting decodes the server's greeting. ok is false unless it
// begins with both magic numbers of the newstyle handshake.
func DecodeGreeting(b []byte) (flags uint16, ok bool) {
	_ = b[GreetingLen-1]
	return be.Uint16(b[16:]), be.Uint64(b[0:]) == MagicNBD && be.Uint64(b[8:]) == MagicOption
}

// Request is a request header, to be encoded. A WRITE's payload of
// Length bytes follows it on the wire.
type Request struct {
	Flags  uint16 // CmdFlag*
	Type   uint16 // Cmd*
	Cookie uint64 // chosen by the client, echoed in the reply
	Offset uint64
	Length uint32
}

// PutRequest encodes r's header, RequestHeaderLen bytes.
func PutRequest(b []byte, r Request) {
	_ = b[RequestHeaderLen-1]
	putHead(b, MagicRequest, r.Flags, r.Type, r.Cookie)
	be.PutUint64(b[16:], r.Offset)
	be.PutUint32(b[24:], r.Length)
}

// AppendRequest appends r's header to b.
func AppendRequest(b []byte, r Request) []byte {
	b, h := grow(b, RequestHeaderLen)
	PutRequest(h, r)
	return b
}

// RequestHeader is a request header as it lies on the wire, to be
// decoded in place: a reader reads a header into one, and each method
// decodes one field from its bytes, a load and a byte swap once inlined.
// The server's reader decodes every request this way. (It is not decoded
// into a Request: a struct of five fields is more than the compiler keeps
// in registers, so the value would be built on the stack and copied, which
// measured several nanoseconds a request.)
type RequestHeader [RequestHeaderLen]byte

func (h *RequestHeader) Magic() uint32  { return be.Uint32(h[0:]) } // MagicRequest, if it is one
func (h *RequestHeader) Flags() uint16  { return be.Uint16(h[4:]) }
func (h *RequestHeader) Type() uint16   { return be.Uint16(h[6:]) }
func (h *RequestHeader) Cookie() uint64 { return be.Uint64(h[8:]) }
func (h *RequestHeader) Offset() uint64 { return be.Uint64(h[16:]) }
func (h *RequestHeader) Length() uint32 { return be.Uint32(h[24:]) }

// A request header and a chunk header begin alike: a 32-bit magic, 16
// bits of flags, a 16-bit type and the 64-bit cookie.
func putHead(b []byte, magic uint32, flags, typ uint16, cookie uint64) {
	_ = b[15]
	be.PutUint32(b[0:], magic)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], typ)
	be.PutUint64(b[8:], cookie)
}

// SimpleReply is a simple reply. A successful READ's data follows it on
// the wire.
type SimpleReply struct {
	Error  uint32 // 0, or an error value (see Errors)
	Cookie uint64
}

// PutSimpleReply encodes r, SimpleReplyLen bytes.
func PutSimpleReply(b []byte, r SimpleReply) {
	_ = b[SimpleReplyLen-1]
	be.PutUint32(b[0:], MagicSimpleReply)
	be.PutUint32(b[4:], r.Error)
	be.PutUint64(b[8:], r.Cookie)
}

// DecodeSimpleReply decodes a simple reply; ok is false unless its magic
// is NBD_SIMPLE_REPLY_MAGIC.
func DecodeSimpleReply(b []byte) (r SimpleReply, ok bool) {
	_ = b[SimpleReplyLen-1]
	r = SimpleReply{Error: be.Uint32(b[4:]), Cookie: be.Uint64(b[8:])}
	return r, be.Uint32(b[0:]) == MagicSimpleReply
}

// Chunk is the header of a structured reply chunk. Length bytes of data
// follow it on the wire.
type Chunk struct {
	Flags  uint16 // ReplyFlagDone on a reply's last chunk
	Type   uint16 // ReplyType*
	Cookie uint64
	Length uint32
}

// PutChunk encodes c's header, ChunkHeaderLen bytes.
func PutChunk(b []byte, c Chunk) {
	_ = b[ChunkHeaderLen-1]
	putHead(b, MagicStructuredReply, c.Flags, c.Type, c.Cookie)
	be.PutUint32(b[16:], c.Length)
}

// DecodeChunk decodes a chunk header; ok is false unless its magic is
// NBD_STRUCTURED_REPLY_MAGIC.
func DecodeChunk(b []byte) (c Chunk, ok bool) {
	_ = b[ChunkHeaderLen-1]
	c = Chunk{Flags: be.Uint16(b[4:]), Type: be.Uint16(b[6:]), Cookie: be.Uint64(b[8:]), Length: be.Uint32(b[16:])}
	return c, be.Uint32(b[0:]) == MagicStructuredReply
}

// An option request, which the client sends during the handshake, is a
// header of OptionHeaderLen bytes (IHAVEOPT, the option's type, the length
// of its data) and then the data.

// PutOption encodes the header of an option request of type typ (Opt*)
// with length bytes of data.
func PutOption(b []byte, typ, length uint32) {
	_ = b[OptionHeaderLen-1]
	be.PutUint64(b[0:], MagicOption)
	be.PutUint32(b[8:], typ)
	be.PutUint32(b[12:], length)
}

// AppendOption appends an option request of type typ with data to b: its
// header, then data.
func AppendOption(b []byte, typ uint32, data []byte) []byte {
	b, h := grow(b, OptionHeaderLen)
	PutOption(h, typ, uint32(len(data)))
	return append(b, data...)
}

// DecodeOption decodes the header of an option request; ok is false
// unless its magic is IHAVEOPT.
func DecodeOption(b []byte) (typ, length uint32, ok bool) {
	_ = b[OptionHeaderLen-1]
	return be.Uint32(b[8:]), be.Uint32(b[12:]), be.Uint64(b[0:]) == MagicOption
}

// OptionReply is the header of an option reply, which the server sends
// during the handshake. Length bytes of data follow it on the wire.
type OptionReply struct {
	Option uint32 // the option answered
	Type   uint32 // Rep*
	Length uint32
}

// PutOptionReply encodes r's header, OptionReplyHeaderLen bytes.
func PutOptionReply(b []byte, r OptionReply) {
	_ = b[OptionReplyHeaderLen-1]
	be.PutUint64(b[0:], MagicOptionReply)
	be.PutUint32(b[8:], r.Option)
	be.PutUint32(b[12:], r.Type)
	be.PutUint32(b[16:], r.Length)
}

// DecodeOptionReply decodes an option reply header; ok is false unless
// its magic is the option reply magic.
func DecodeOptionReply(b []byte) (r OptionReply, ok bool) {
	_ = b[OptionReplyHeaderLen-1]
	r = OptionReply{Option: be.Uint32(b[8:]), Type: be.Uint32(b[12:]), Length: be.Uint32(b[16:])}
	return r, be.Uint64(b[0:]) == MagicOptionReply
}

// PutInfoExport encodes the data of NBD_INFO_EXPORT: its type, the
// export's size and its transmission flags, InfoExportLen bytes.
func PutInfoExport(b []byte, size uint64, flags uint16) {
	_ = b[InfoExportLen-1]
	be.PutUint16(b[0:], InfoExport)
	be.PutUint64(b[2:], size)
	be.PutUint16(b[10:], flags)
}

// DecodeInfoExport decodes the data of an NBD_REP_INFO reply. ok is false
// unless it is an NBD_INFO_EXPORT of the right length. Unlike the other
// Decode functions it takes data of any length.
func DecodeInfoExport(data []byte) (size uint64, flags uint16, ok bool) {
	if len(data) != InfoExportLen || be.Uint16(data) != InfoExport {
		return 0, 0, false
	}
	return be.Uint64(data[2:]), be.Uint16(data[10:]), true
}

// grow extends b by n bytes and returns it with the new bytes, for an
// Append function to fill in.
func grow(b []byte, n int) (all, tail []byte) {
	l := len(b)
	b = slices.Grow(b, n)[:l+n]
	return b, b[l:]
}
