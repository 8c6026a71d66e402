package wire

// The data of the options that carry structure: strings, the information
// requests of NBD_OPT_INFO and NBD_OPT_GO, and the queries of
// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. The handshake
// is no hot path: these allocate as they need to.

// AppendString appends s as the spec sends a string inside option data:
// a 32-bit length, then the bytes.
func AppendString(b []byte, s string) []byte {
	b = be.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// CutString decodes a string that AppendString encoded at the start of b,
// and returns what follows it. ok is false if b is too short for the
// length it states; the length is checked against b before anything is
// copied, so a client's claim never sizes an allocation.
func CutString(b []byte) (s string, rest []byte, ok bool) {
	if len(b) < 4 {
		return "", nil, false
	}
	n := be.Uint32(b)
	if uint64(n) > uint64(len(b)-4) {
		return "", nil, false
	}
	return string(b[4 : 4+n]), b[4+n:], true
}

// AppendInfoRequest appends the data of NBD_OPT_INFO or NBD_OPT_GO: the
// export's name, then the information types asked for (Info*).
func AppendInfoRequest(b []byte, name string, infos ...uint16) []byte {
	b = AppendString(b, name)
	b = be.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = be.AppendUint16(b, i)
	}
	return b
}

// DecodeInfoRequest decodes what AppendInfoRequest encodes. ok is false
// unless data holds exactly that, with nothing left over.
func DecodeInfoRequest(data []byte) (name string, infos []uint16, ok bool) {
	name, rest, ok := CutString(data)
	if !ok || len(rest) < 2 {
		return "", nil, false
	}
	k := int(be.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*k {
		return "", nil, false
	}
	infos = make([]uint16, k)
	for i := range infos {
		infos[i] = be.Uint16(rest[2*i:])
	}
	return name, infos, true
}

// AppendMetaContextRequest appends the data of NBD_OPT_LIST_META_CONTEXT
// or NBD_OPT_SET_META_CONTEXT: the export's name, then the queries
// (context names, or namespaces such as MetaBaseNamespace when listing).
func AppendMetaContextRequest(b []byte, name string, queries ...string) []byte {
	b = AppendString(b, name)
	b = be.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = AppendString(b, q)
	}
	return b
}

// DecodeMetaContextRequest decodes what AppendMetaContextRequest encodes.
// ok is false unless data holds exactly that, with nothing left over.
func DecodeMetaContextRequest(data []byte) (name string, queries []string, ok bool) {
	name, rest, ok := CutString(data)
	if !ok || len(rest) < 4 {
		return "", nil, false
	}
	n := be.Uint32(rest)
	rest = rest[4:]
	// Each query takes at least 4 bytes: a count larger than that allows
	// is malformed, and bounding it here bounds the loop.
	if uint64(n) > uint64(len(rest)/4) {
		return "", nil, false
	}
	for range n {
		var q string
		q, rest, ok = CutString(rest)
		if !ok {
			return "", nil, false
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		return "", nil, false
	}
	return name, queries, true
}
