package wire

import (
	"slices"
	"syscall"
)

// Error values of the transmission phase, as simple replies and error
// chunks carry them. They are Linux's errno numbers, but the spec fixes
// them, so they are spelled out here rather than taken from package
// syscall, whose values differ between platforms.
const (
	EPERM     = 1   // NBD_EPERM
	EIO       = 5   // NBD_EIO
	ENOMEM    = 12  // NBD_ENOMEM
	EINVAL    = 22  // NBD_EINVAL
	ENOSPC    = 28  // NBD_ENOSPC
	EOVERFLOW = 75  // NBD_EOVERFLOW
	ENOTSUP   = 95  // NBD_ENOTSUP
	ESHUTDOWN = 108 // NBD_ESHUTDOWN
)

// Error is one of the errors an NBD reply can carry.
type Error struct {
	Value uint32        // on the wire: one of the constants above
	Errno syscall.Errno // what it stands for on this platform
	// Name is the error as the spec spells it, without "NBD_": "ENOTSUP",
	// not Linux's "EOPNOTSUPP". Metrics label errors by it.
	Name string
	// Also lists the other errnos a server sends as this error: the spec
	// asks for EDQUOT and EFBIG to be sent as ENOSPC.
	Also []syscall.Errno
}

// Errors is the one table between errnos and the wire: every error a
// reply can carry, once, with the errno it stands for and its name.
// ErrorIndex, EncodeErrno and DecodeErrno read it, and nothing else maps
// errnos to the wire. A client can receive only these, so a metric
// labelled by them has a bounded label set; metrics index their
// per-error counters by position, so entries are only ever appended.
var Errors = [...]Error{
	{Value: EPERM, Errno: syscall.EPERM, Name: "EPERM"},
	{Value: EIO, Errno: syscall.EIO, Name: "EIO"},
	{Value: ENOMEM, Errno: syscall.ENOMEM, Name: "ENOMEM"},
	{Value: EINVAL, Errno: syscall.EINVAL, Name: "EINVAL"},
	{Value: ENOSPC, Errno: syscall.ENOSPC, Name: "ENOSPC", Also: []syscall.Errno{syscall.EDQUOT, syscall.EFBIG}},
	{Value: EOVERFLOW, Errno: syscall.EOVERFLOW, Name: "EOVERFLOW"},
	// EOPNOTSUPP is ENOTSUP's number on Linux, not on every platform.
	{Value: ENOTSUP, Errno: syscall.ENOTSUP, Name: "ENOTSUP", Also: []syscall.Errno{syscall.EOPNOTSUPP}},
	{Value: ESHUTDOWN, Errno: syscall.ESHUTDOWN, Name: "ESHUTDOWN"},
}

// eioIndex is EIO's place in Errors, where every errno the table does not
// name goes (wire_test.go checks it).
const eioIndex = 1

// ErrorIndex returns the index in Errors of the error a server sends for
// a request that failed with errno e: e's own entry, or the one whose Also
// lists it; EIO for anything else (the spec's rule for errors it has no
// value for). e is not 0: 0 is success, which is no error.
func ErrorIndex(e syscall.Errno) int {
	for i := range Errors {
		if Errors[i].Errno == e {
			return i
		}
	}
	for i := range Errors {
		if slices.Contains(Errors[i].Also, e) {
			return i
		}
	}
	return eioIndex
}

// EncodeErrno returns the error value a server sends for errno e (not 0).
func EncodeErrno(e syscall.Errno) uint32 { return Errors[ErrorIndex(e)].Value }

// DecodeErrno returns the errno that the error value v of a reply stands
// for (v is not 0). The spec asks a client to treat a value it does not
// know as EINVAL.
func DecodeErrno(v uint32) syscall.Errno {
	for i := range Errors {
		if Errors[i].Value == v {
			return Errors[i].Errno
		}
	}
	return syscall.EINVAL
}
