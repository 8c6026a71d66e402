package nbd

// Wire constants of the NBD protocol, named after doc/proto.md in the
// NetworkBlockDevice/nbd repository (the spec name is beside each). All
// integers on the wire are big-endian.

// Magic numbers.
const (
	magicNBD             = 0x4e42444d41474943 // "NBDMAGIC", INIT_PASSWD
	magicOption          = 0x49484156454f5054 // "IHAVEOPT", also the option request magic
	magicOptionReply     = 0x0003e889045565a9 // option reply magic
	magicRequest         = 0x25609513         // NBD_REQUEST_MAGIC
	magicSimpleReply     = 0x67446698         // NBD_SIMPLE_REPLY_MAGIC
	magicStructuredReply = 0x668e33ef         // NBD_STRUCTURED_REPLY_MAGIC
)

// Handshake flags (server, 16 bits).
const (
	flagFixedNewstyle = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	flagNoZeroes      = 1 << 1 // NBD_FLAG_NO_ZEROES
)

// Client flags (32 bits).
const (
	flagCFixedNewstyle = 1 << 0 // NBD_FLAG_C_FIXED_NEWSTYLE
	flagCNoZeroes      = 1 << 1 // NBD_FLAG_C_NO_ZEROES
	flagCKnown         = flagCFixedNewstyle | flagCNoZeroes
)

// Transmission flags, as Client.Flags reports them.
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
	optExportName     = 1  // NBD_OPT_EXPORT_NAME
	optAbort          = 2  // NBD_OPT_ABORT
	optList           = 3  // NBD_OPT_LIST
	optStartTLS       = 5  // NBD_OPT_STARTTLS
	optInfo           = 6  // NBD_OPT_INFO
	optGo             = 7  // NBD_OPT_GO
	optStructuredRep  = 8  // NBD_OPT_STRUCTURED_REPLY
	optListMetaCtx    = 9  // NBD_OPT_LIST_META_CONTEXT
	optSetMetaCtx     = 10 // NBD_OPT_SET_META_CONTEXT
	optExtendedHeader = 11 // NBD_OPT_EXTENDED_HEADERS (not supported)
)

// Option reply types. Errors have bit 31 set.
const (
	repAck          = 1 // NBD_REP_ACK
	repServer       = 2 // NBD_REP_SERVER
	repInfo         = 3 // NBD_REP_INFO
	repMetaContext  = 4 // NBD_REP_META_CONTEXT
	repFlagError    = 1 << 31
	repErrUnsup     = repFlagError | 1 // NBD_REP_ERR_UNSUP
	repErrPolicy    = repFlagError | 2 // NBD_REP_ERR_POLICY
	repErrInvalid   = repFlagError | 3 // NBD_REP_ERR_INVALID
	repErrPlatform  = repFlagError | 4 // NBD_REP_ERR_PLATFORM
	repErrTLSReqd   = repFlagError | 5 // NBD_REP_ERR_TLS_REQD
	repErrUnknown   = repFlagError | 6 // NBD_REP_ERR_UNKNOWN
	repErrShutdown  = repFlagError | 7 // NBD_REP_ERR_SHUTDOWN
	repErrBlockSize = repFlagError | 8 // NBD_REP_ERR_BLOCK_SIZE_REQD
	repErrTooBig    = repFlagError | 9 // NBD_REP_ERR_TOO_BIG
)

// Information types of NBD_REP_INFO.
const (
	infoExport      = 0 // NBD_INFO_EXPORT
	infoName        = 1 // NBD_INFO_NAME
	infoDescription = 2 // NBD_INFO_DESCRIPTION
	infoBlockSize   = 3 // NBD_INFO_BLOCK_SIZE
)

// Commands (request types).
const (
	cmdRead        = 0 // NBD_CMD_READ
	cmdWrite       = 1 // NBD_CMD_WRITE
	cmdDisc        = 2 // NBD_CMD_DISC
	cmdFlush       = 3 // NBD_CMD_FLUSH
	cmdTrim        = 4 // NBD_CMD_TRIM
	cmdCache       = 5 // NBD_CMD_CACHE
	cmdWriteZeroes = 6 // NBD_CMD_WRITE_ZEROES
	cmdBlockStatus = 7 // NBD_CMD_BLOCK_STATUS
)

// Command flags, as Client.Write, Trim and WriteZeroes take them.
const (
	CmdFlagFUA      = 1 << 0 // NBD_CMD_FLAG_FUA
	CmdFlagNoHole   = 1 << 1 // NBD_CMD_FLAG_NO_HOLE
	CmdFlagDF       = 1 << 2 // NBD_CMD_FLAG_DF
	CmdFlagReqOne   = 1 << 3 // NBD_CMD_FLAG_REQ_ONE
	CmdFlagFastZero = 1 << 4 // NBD_CMD_FLAG_FAST_ZERO
)

// Structured reply flags and types.
const (
	replyFlagDone = 1 << 0 // NBD_REPLY_FLAG_DONE

	replyTypeNone        = 0         // NBD_REPLY_TYPE_NONE
	replyTypeOffsetData  = 1         // NBD_REPLY_TYPE_OFFSET_DATA
	replyTypeOffsetHole  = 2         // NBD_REPLY_TYPE_OFFSET_HOLE
	replyTypeBlockStatus = 5         // NBD_REPLY_TYPE_BLOCK_STATUS
	replyTypeError       = 1<<15 + 1 // NBD_REPLY_TYPE_ERROR
	replyTypeErrorOffset = 1<<15 + 2 // NBD_REPLY_TYPE_ERROR_OFFSET
	replyTypeErrorBit    = 1 << 15   // every error chunk type has it
)

// Error values of the transmission phase. They are Linux errno values,
// but the spec fixes them, so they are spelled out rather than taken from
// package syscall, whose values differ between platforms.
const (
	errPerm     = 1   // NBD_EPERM
	errIO       = 5   // NBD_EIO
	errNoMem    = 12  // NBD_ENOMEM
	errInval    = 22  // NBD_EINVAL
	errNoSpc    = 28  // NBD_ENOSPC
	errOverflow = 75  // NBD_EOVERFLOW
	errNotSup   = 95  // NBD_ENOTSUP
	errShutdown = 108 // NBD_ESHUTDOWN
)

// The base:allocation metadata context.
const (
	metaBaseAllocation = "base:allocation"
	metaBaseNamespace  = "base:"
	// metaBaseAllocationID is the context id this server assigns to
	// base:allocation: any nonzero value would do, there is only one.
	metaBaseAllocationID = 1

	stateHole = 1 << 0 // NBD_STATE_HOLE
	stateZero = 1 << 1 // NBD_STATE_ZERO
)

// Sizes of fixed wire structures.
const (
	requestHeaderLen     = 28 // magic, flags, type, cookie, offset, length
	simpleReplyLen       = 16 // magic, error, cookie
	structuredHeaderLen  = 20 // magic, flags, type, cookie, length
	optionHeaderLen      = 16 // magic, option, length
	optionReplyHeaderLen = 20 // magic, option, type, length
	exportNameZeroes     = 124
)
