package nbd

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/stackd/stackd/bioset"
	"github.com/stackd/stackd/nbd/wire"
)

var be = binary.BigEndian

const (
	// flagsCKnown are the client flags this server understands; the spec
	// has it hang up on any other.
	flagsCKnown = wire.FlagCFixedNewstyle | wire.FlagCNoZeroes
	// metaBaseAllocationID is the context id this server assigns to
	// base:allocation: any nonzero value would do, there is only one.
	metaBaseAllocationID = 1
)

// negotiate runs the server side of the fixed newstyle handshake: the
// greeting, the client's flags, then options until one enters
// transmission (EXPORT_NAME, or GO answered with ACK). It returns nil with
// c.exp set on success. Every read is io.ReadFull: clients, the kernel's
// among them, write options in small segments.
func (c *conn) negotiate() error {
	var greet [wire.GreetingLen]byte
	wire.PutGreeting(greet[:], wire.FlagFixedNewstyle|wire.FlagNoZeroes)
	if _, err := c.bw.Write(greet[:]); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return err
	}

	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return err
	}
	cflags := be.Uint32(cf[:])
	if cflags&^flagsCKnown != 0 {
		// The spec: the server MUST drop the connection on unknown flags.
		return &handshakeError{reasonBadFlags, fmt.Sprintf("unknown client flags %#x", cflags)}
	}
	// A client without NBD_FLAG_C_FIXED_NEWSTYLE is served as if it had
	// set it (the spec allows this): the replies it would not expect only
	// come after options it should not send.
	c.noZeroes = cflags&wire.FlagCNoZeroes != 0
	c.fixedNewstyle = cflags&wire.FlagCFixedNewstyle != 0

	var hdr [wire.OptionHeaderLen]byte
	for n := 0; ; n++ {
		if n == maxHandshakeOptions {
			return &handshakeError{reasonTooManyOptions, fmt.Sprintf("more than %d options", maxHandshakeOptions)}
		}
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return err
		}
		opt, length, ok := wire.DecodeOption(hdr[:])
		if !ok {
			return &handshakeError{reasonBadMagic, fmt.Sprintf("bad option magic %#x", be.Uint64(hdr[:]))}
		}
		if length > maxOptionLen {
			// Never allocate what the client claims: read a bounded amount
			// and throw it away, or give up on the client.
			if opt == wire.OptExportName || length > maxOptionDiscard {
				return &handshakeError{reasonOptionTooBig, fmt.Sprintf("option %d with %d bytes of data", opt, length)}
			}
			if _, err := c.br.Discard(int(length)); err != nil {
				return err
			}
			if err := c.optReply(opt, wire.RepErrTooBig, []byte("option data too long")); err != nil {
				return err
			}
			if err := c.bw.Flush(); err != nil {
				return err
			}
			continue
		}
		if cap(c.optBuf) < int(length) {
			c.optBuf = make([]byte, length)
		}
		data := c.optBuf[:length]
		if _, err := io.ReadFull(c.br, data); err != nil {
			return err
		}
		var err error
		var done bool
		if c.forcedTLS() && opt != wire.OptStartTLS && opt != wire.OptAbort {
			err = c.refuseBeforeTLS(opt)
		} else {
			done, err = c.option(opt, data)
		}
		if err != nil {
			return err
		}
		if err := c.bw.Flush(); err != nil {
			return err
		}
		if done {
			c.optBuf = nil
			return nil
		}
	}
}

// option answers one option. done reports that transmission begins.
func (c *conn) option(opt uint32, data []byte) (done bool, err error) {
	switch opt {
	case wire.OptExportName:
		e := c.srv.lookup(string(data))
		if e == nil {
			// No way to say no: the spec has the server hang up.
			return false, &handshakeError{reasonUnknownExport, fmt.Sprintf("NBD_OPT_EXPORT_NAME: unknown export %.64q", data)}
		}
		if rep, why, msg := c.exportRefusal(e); rep != 0 {
			// doc/proto.md, "SELECTIVETLS mode": EXPORT_NAME cannot be
			// answered with an error, so the server MUST end the session.
			c.optionRefused(why, e.Name)
			return false, &handshakeError{why, fmt.Sprintf("NBD_OPT_EXPORT_NAME %q: %s", e.Name, msg)}
		}
		c.choose(e)
		var b [wire.ExportNameReplyLen + wire.ExportNameZeroes]byte
		be.PutUint64(b[0:], c.size)
		be.PutUint16(b[8:], c.tflags)
		n := wire.ExportNameReplyLen
		if !c.noZeroes {
			n += wire.ExportNameZeroes
		}
		_, err := c.bw.Write(b[:n])
		return err == nil, err

	case wire.OptAbort:
		// The spec asks for an ACK; the client may already be gone.
		if c.optReply(opt, wire.RepAck, nil) == nil {
			c.bw.Flush()
		}
		return false, errAbort

	case wire.OptList:
		if len(data) != 0 {
			return false, c.optReply(opt, wire.RepErrInvalid, []byte("NBD_OPT_LIST takes no data"))
		}
		for _, e := range c.srv.exports {
			if !c.listed(e) {
				continue
			}
			// The name as a string; the description fills the rest.
			p := wire.AppendString(make([]byte, 0, 4+len(e.Name)+len(e.Description)), e.Name)
			p = append(p, e.Description...)
			if err := c.optReply(opt, wire.RepServer, p); err != nil {
				return false, err
			}
		}
		return false, c.optReply(opt, wire.RepAck, nil)

	case wire.OptInfo, wire.OptGo:
		name, infos, ok := wire.DecodeInfoRequest(data)
		if !ok {
			return false, c.optReply(opt, wire.RepErrInvalid, []byte("malformed info request"))
		}
		e := c.srv.lookup(name)
		if e == nil {
			return false, c.optReply(opt, wire.RepErrUnknown, []byte("unknown export"))
		}
		if rep, why, msg := c.exportRefusal(e); rep != 0 {
			c.optionRefused(why, e.Name)
			return false, c.optReply(opt, rep, []byte(msg))
		}
		if opt == wire.OptGo {
			c.choose(e)
		}
		if err := c.sendInfo(opt, e, infos); err != nil {
			return false, err
		}
		return opt == wire.OptGo, c.optReply(opt, wire.RepAck, nil)

	case wire.OptStructuredReply:
		if len(data) != 0 {
			return false, c.optReply(opt, wire.RepErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
		}
		c.structured = true
		return false, c.optReply(opt, wire.RepAck, nil)

	case wire.OptListMetaContext, wire.OptSetMetaContext:
		return false, c.metaContext(opt, data)

	case wire.OptStartTLS:
		return false, c.startTLS(data)

	default:
		// EXTENDED_HEADERS and anything newer or unknown.
		return false, c.optReply(opt, wire.RepErrUnsup, nil)
	}
}

// choose fixes the export and what the connection may do with it.
func (c *conn) choose(e *export) {
	c.exp = e
	c.size = e.Device.Size()
	c.caps = e.Device.Caps()
	c.tflags = transmissionFlags(c.caps, e.ReadOnly, c.structured)
	if c.structured && c.metaSelected && c.metaExport == e {
		c.metaID = metaBaseAllocationID
	} else {
		c.metaID = 0
	}
}

// capFlags pairs each capability with the transmission flag that offers
// it.
var capFlags = [...]struct {
	cap  bioset.Caps
	flag uint16
}{
	{bioset.CapFlush, wire.FlagSendFlush},
	{bioset.CapFUA, wire.FlagSendFUA},
	{bioset.CapTrim, wire.FlagSendTrim},
	{bioset.CapWriteZeroes, wire.FlagSendWriteZeroes},
	{bioset.CapFastZero, wire.FlagSendFastZero},
	{bioset.CapCache, wire.FlagSendCache},
}

// transmissionFlags advertises what caps support, and only that.
// NBD_FLAG_CAN_MULTI_CONN is always set: every connection to an export
// submits to the same device, and a FLUSH goes through that device, so it
// covers every write completed on any connection.
func transmissionFlags(caps bioset.Caps, readOnly, structured bool) uint16 {
	f := uint16(wire.FlagHasFlags | wire.FlagCanMultiConn)
	if readOnly {
		// Commands that would change the export are not offered: a
		// client that sent one anyway gets EPERM.
		f |= wire.FlagReadOnly
		caps &^= bioset.CapTrim | bioset.CapWriteZeroes | bioset.CapFastZero
	}
	if caps&bioset.CapWriteZeroes == 0 {
		// A fast zero is a kind of WRITE_ZEROES: without it, none.
		caps &^= bioset.CapFastZero
	}
	for _, cf := range capFlags {
		if caps&cf.cap != 0 {
			f |= cf.flag
		}
	}
	if structured {
		// A READ reply is always a single chunk, so DF costs nothing.
		f |= wire.FlagSendDF
	}
	return f
}

// sendInfo sends NBD_INFO_EXPORT and the information the client asked for.
func (c *conn) sendInfo(opt uint32, e *export, infos []uint16) error {
	size := c.size
	tflags := c.tflags
	if opt == wire.OptInfo {
		size = e.Device.Size()
		tflags = transmissionFlags(e.Device.Caps(), e.ReadOnly, c.structured)
	}
	var b [14]byte
	wire.PutInfoExport(b[:], size, tflags)
	if err := c.optReply(opt, wire.RepInfo, b[:wire.InfoExportLen]); err != nil {
		return err
	}
	var sent [4]bool
	for _, t := range infos {
		if int(t) < len(sent) {
			if sent[t] {
				continue // each at most once, even if asked twice
			}
			sent[t] = true
		}
		var err error
		switch t {
		case wire.InfoName:
			err = c.optReply(opt, wire.RepInfo, append([]byte{0, wire.InfoName}, e.Name...))
		case wire.InfoDescription:
			err = c.optReply(opt, wire.RepInfo, append([]byte{0, wire.InfoDescription}, e.Description...))
		case wire.InfoBlockSize:
			be.PutUint16(b[0:], wire.InfoBlockSize)
			be.PutUint32(b[2:], blockSizeMin)
			be.PutUint32(b[6:], blockSizePreferred)
			be.PutUint32(b[10:], MaxPayload)
			err = c.optReply(opt, wire.RepInfo, b[:14])
		default:
			// The spec: ignore information requests not understood.
			// NBD_INFO_EXPORT is always sent above.
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// metaContext answers LIST_META_CONTEXT and SET_META_CONTEXT. The only
// context is base:allocation; queries in other namespaces are ignored, as
// the spec requires.
func (c *conn) metaContext(opt uint32, data []byte) error {
	if opt == wire.OptSetMetaContext {
		// SET replaces the selection even when it fails.
		c.metaSelected, c.metaExport = false, nil
	}
	if !c.structured {
		return c.optReply(opt, wire.RepErrInvalid, []byte("negotiate structured replies first"))
	}
	name, queries, ok := wire.DecodeMetaContextRequest(data)
	if !ok {
		return c.optReply(opt, wire.RepErrInvalid, []byte("malformed meta context request"))
	}
	e := c.srv.lookup(name)
	if e == nil {
		return c.optReply(opt, wire.RepErrUnknown, []byte("unknown export"))
	}
	if rep, why, msg := c.exportRefusal(e); rep != 0 {
		c.optionRefused(why, e.Name)
		return c.optReply(opt, rep, []byte(msg))
	}
	match := false
	if opt == wire.OptListMetaContext && len(queries) == 0 {
		match = true // no query: list everything
	}
	for _, q := range queries {
		switch {
		case q == wire.MetaBaseAllocation:
			match = true
		case q == wire.MetaBaseNamespace && opt == wire.OptListMetaContext:
			match = true // "base:" is a wildcard when listing, ignored when setting
		}
	}
	if match {
		id := uint32(0) // the spec: reserved in LIST replies, SHOULD be zero
		if opt == wire.OptSetMetaContext {
			id = metaBaseAllocationID
			c.metaSelected, c.metaExport = true, e
		}
		p := make([]byte, 4, 4+len(wire.MetaBaseAllocation))
		be.PutUint32(p, id)
		p = append(p, wire.MetaBaseAllocation...)
		if err := c.optReply(opt, wire.RepMetaContext, p); err != nil {
			return err
		}
	}
	return c.optReply(opt, wire.RepAck, nil)
}

// optReply writes one option reply (not flushed).
func (c *conn) optReply(opt, typ uint32, payload []byte) error {
	var h [wire.OptionReplyHeaderLen]byte
	wire.PutOptionReply(h[:], wire.OptionReply{Option: opt, Type: typ, Length: uint32(len(payload))})
	if _, err := c.bw.Write(h[:]); err != nil {
		return err
	}
	_, err := c.bw.Write(payload)
	return err
}
