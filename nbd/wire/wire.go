// Package wire is the NBD protocol's wire format, in one place: its
// constants, named after doc/proto.md in the NetworkBlockDevice/nbd
// repository (the spec's name is beside each), the sizes of its fixed
// structures, the encoding and decoding of their headers and of the
// structured option data, and the table of the errors a reply can carry.
// The server (package nbd), the client (package nbd/client) and the tests
// all speak it through this package.
//
// The header helpers (header.go) work on byte slices the caller provides
// and never allocate, except the Append forms, which grow the slice they
// are given as append does; each is small enough for the compiler to
// inline, so that the server's request path decodes a header in place,
// and encodes a reply into its arena, at the cost of the loads and stores
// alone. The option data helpers (options.go) serve the handshake and
// allocate what they decode. All integers on the wire are big-endian.
package wire

// Magic numbers.
const (
	MagicNBD             = 0x4e42444d41474943 // "NBDMAGIC", NBDMAGIC (INIT_PASSWD): the greeting's first word
	MagicOption          = 0x49484156454f5054 // "IHAVEOPT": the greeting's second word, and every option request's magic
	MagicOptionReply     = 0x0003e889045565a9 // the magic of every option reply
	MagicRequest         = 0x25609513         // NBD_REQUEST_MAGIC
	MagicSimpleReply     = 0x67446698         // NBD_SIMPLE_REPLY_MAGIC
	MagicStructuredReply = 0x668e33ef         // NBD_STRUCTURED_REPLY_MAGIC
)

// Handshake flags: the server's, 16 bits in its greeting.
const (
	FlagFixedNewstyle = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	FlagNoZeroes      = 1 << 1 // NBD_FLAG_NO_ZEROES
)

// Client flags: the client's answer to the greeting, 32 bits.
const (
	FlagCFixedNewstyle = 1 << 0 // NBD_FLAG_C_FIXED_NEWSTYLE
	FlagCNoZeroes      = 1 << 1 // NBD_FLAG_C_NO_ZEROES
)

// Transmission flags: 16 bits, what an export offers, sent with its size.
const (
	FlagHasFlags        = 1 << 0  // NBD_FLAG_HAS_FLAGS: always set
	FlagReadOnly        = 1 << 1  // NBD_FLAG_READ_ONLY
	FlagSendFlush       = 1 << 2  // NBD_FLAG_SEND_FLUSH
	FlagSendFUA         = 1 << 3  // NBD_FLAG_SEND_FUA
	FlagRotational      = 1 << 4  // NBD_FLAG_ROTATIONAL
	FlagSendTrim        = 1 << 5  // NBD_FLAG_SEND_TRIM
	FlagSendWriteZeroes = 1 << 6  // NBD_FLAG_SEND_WRITE_ZEROES
	FlagSendDF          = 1 << 7  // NBD_FLAG_SEND_DF
	FlagCanMultiConn    = 1 << 8  // NBD_FLAG_CAN_MULTI_CONN
	FlagSendResize      = 1 << 9  // NBD_FLAG_SEND_RESIZE
	FlagSendCache       = 1 << 10 // NBD_FLAG_SEND_CACHE
	FlagSendFastZero    = 1 << 11 // NBD_FLAG_SEND_FAST_ZERO
)

// Option types.
const (
	OptExportName      = 1  // NBD_OPT_EXPORT_NAME
	OptAbort           = 2  // NBD_OPT_ABORT
	OptList            = 3  // NBD_OPT_LIST
	OptStartTLS        = 5  // NBD_OPT_STARTTLS
	OptInfo            = 6  // NBD_OPT_INFO
	OptGo              = 7  // NBD_OPT_GO
	OptStructuredReply = 8  // NBD_OPT_STRUCTURED_REPLY
	OptListMetaContext = 9  // NBD_OPT_LIST_META_CONTEXT
	OptSetMetaContext  = 10 // NBD_OPT_SET_META_CONTEXT
	OptExtendedHeaders = 11 // NBD_OPT_EXTENDED_HEADERS
)

// Option reply types. Errors have RepFlagError set.
const (
	RepAck              = 1                // NBD_REP_ACK
	RepServer           = 2                // NBD_REP_SERVER
	RepInfo             = 3                // NBD_REP_INFO
	RepMetaContext      = 4                // NBD_REP_META_CONTEXT
	RepFlagError        = 1 << 31          // NBD_REP_FLAG_ERROR
	RepErrUnsup         = RepFlagError | 1 // NBD_REP_ERR_UNSUP
	RepErrPolicy        = RepFlagError | 2 // NBD_REP_ERR_POLICY
	RepErrInvalid       = RepFlagError | 3 // NBD_REP_ERR_INVALID
	RepErrPlatform      = RepFlagError | 4 // NBD_REP_ERR_PLATFORM
	RepErrTLSReqd       = RepFlagError | 5 // NBD_REP_ERR_TLS_REQD
	RepErrUnknown       = RepFlagError | 6 // NBD_REP_ERR_UNKNOWN
	RepErrShutdown      = RepFlagError | 7 // NBD_REP_ERR_SHUTDOWN
	RepErrBlockSizeReqd = RepFlagError | 8 // NBD_REP_ERR_BLOCK_SIZE_REQD
	RepErrTooBig        = RepFlagError | 9 // NBD_REP_ERR_TOO_BIG
)

// Information types of NBD_REP_INFO.
const (
	InfoExport      = 0 // NBD_INFO_EXPORT
	InfoName        = 1 // NBD_INFO_NAME
	InfoDescription = 2 // NBD_INFO_DESCRIPTION
	InfoBlockSize   = 3 // NBD_INFO_BLOCK_SIZE
)

// Commands: the request types.
const (
	CmdRead        = 0 // NBD_CMD_READ
	CmdWrite       = 1 // NBD_CMD_WRITE
	CmdDisc        = 2 // NBD_CMD_DISC
	CmdFlush       = 3 // NBD_CMD_FLUSH
	CmdTrim        = 4 // NBD_CMD_TRIM
	CmdCache       = 5 // NBD_CMD_CACHE
	CmdWriteZeroes = 6 // NBD_CMD_WRITE_ZEROES
	CmdBlockStatus = 7 // NBD_CMD_BLOCK_STATUS
	CmdResize      = 8 // NBD_CMD_RESIZE
)

// Command flags.
const (
	CmdFlagFUA      = 1 << 0 // NBD_CMD_FLAG_FUA
	CmdFlagNoHole   = 1 << 1 // NBD_CMD_FLAG_NO_HOLE
	CmdFlagDF       = 1 << 2 // NBD_CMD_FLAG_DF
	CmdFlagReqOne   = 1 << 3 // NBD_CMD_FLAG_REQ_ONE
	CmdFlagFastZero = 1 << 4 // NBD_CMD_FLAG_FAST_ZERO
)

// Structured reply flags and chunk types.
const (
	ReplyFlagDone = 1 << 0 // NBD_REPLY_FLAG_DONE

	ReplyTypeNone        = 0         // NBD_REPLY_TYPE_NONE
	ReplyTypeOffsetData  = 1         // NBD_REPLY_TYPE_OFFSET_DATA
	ReplyTypeOffsetHole  = 2         // NBD_REPLY_TYPE_OFFSET_HOLE
	ReplyTypeBlockStatus = 5         // NBD_REPLY_TYPE_BLOCK_STATUS
	ReplyTypeError       = 1<<15 + 1 // NBD_REPLY_TYPE_ERROR
	ReplyTypeErrorOffset = 1<<15 + 2 // NBD_REPLY_TYPE_ERROR_OFFSET
	// ReplyTypeErrorBit, bit 15, is set in every error chunk type: a
	// client that does not know a type still knows that it is an error,
	// and how to read its code and message.
	ReplyTypeErrorBit = 1 << 15
)

// The base:allocation metadata context.
const (
	MetaBaseAllocation = "base:allocation"
	// MetaBaseNamespace is the "base:" namespace: a query for it lists
	// every context in it.
	MetaBaseNamespace = "base:"

	StateHole = 1 << 0 // NBD_STATE_HOLE
	StateZero = 1 << 1 // NBD_STATE_ZERO
)

// Sizes of fixed wire structures, in bytes.
const (
	GreetingLen          = 18 // NBDMAGIC, IHAVEOPT, handshake flags
	RequestHeaderLen     = 28 // magic, flags, type, cookie, offset, length
	SimpleReplyLen       = 16 // magic, error, cookie
	ChunkHeaderLen       = 20 // magic, flags, type, cookie, length
	OptionHeaderLen      = 16 // magic, option, length
	OptionReplyHeaderLen = 20 // magic, option, type, length
	// InfoExportLen is NBD_INFO_EXPORT's data: type, size, transmission
	// flags.
	InfoExportLen = 12
	// ExportNameReplyLen is the server's answer to NBD_OPT_EXPORT_NAME:
	// size and transmission flags, followed by ExportNameZeroes zero
	// bytes unless both sides set NO_ZEROES.
	ExportNameReplyLen = 10
	ExportNameZeroes   = 124
	// ErrorChunkLen is the fixed part of an error chunk's data: the error
	// and the length of the message that follows.
	ErrorChunkLen = 6
	// MaxStringLen is the spec's limit on names, descriptions and
	// messages.
	MaxStringLen = 4096
)

// DefaultMaxPayload is the longest READ or WRITE payload any server takes
// when no block size has been negotiated: 2^25. The spec asks a client
// that wants to work with every server to stay within it, and the Linux
// client never sends more.
const DefaultMaxPayload = 1 << 25
