package metrics

import (
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// The NBD error values (doc/proto.md, "Error values"): the only errors a
// client can receive, so the only values of the error label.
const (
	errPerm = iota
	errIO
	errNoMem
	errInval
	errNoSpc
	errOverflow
	errNotSup
	errShutdown
	numWireErrors
)

var wireErrorNames = [numWireErrors]string{
	errPerm:     "EPERM",
	errIO:       "EIO",
	errNoMem:    "ENOMEM",
	errInval:    "EINVAL",
	errNoSpc:    "ENOSPC",
	errOverflow: "EOVERFLOW",
	errNotSup:   "ENOTSUP",
	errShutdown: "ESHUTDOWN",
}

// wireIndex maps an errno to the NBD error the server sends for it, as
// package nbd does: EDQUOT and EFBIG are ENOSPC, EOPNOTSUPP is ENOTSUP,
// anything the spec does not name is EIO. The label thus says what the
// client saw, and the set stays bounded; the log line keeps the errno.
func wireIndex(e syscall.Errno) int {
	// One value on Linux, two elsewhere: not a switch case each.
	if e == syscall.ENOTSUP || e == syscall.EOPNOTSUPP {
		return errNotSup
	}
	switch e {
	case syscall.EPERM:
		return errPerm
	case syscall.EIO:
		return errIO
	case syscall.ENOMEM:
		return errNoMem
	case syscall.EINVAL:
		return errInval
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return errNoSpc
	case syscall.EOVERFLOW:
		return errOverflow
	case syscall.ESHUTDOWN:
		return errShutdown
	}
	return errIO
}

// errnoName is the symbolic name of e ("EROFS"), for log lines.
func errnoName(e syscall.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return "errno " + strconv.Itoa(int(e))
}

// Handshake failure reasons, as nbd.Observer documents them. They are
// reported from the first scrape on, at zero, so that a rate over them
// sees the first failure.
var handshakeReasons = []string{
	"timeout", "eof", "bad_magic", "bad_client_flags", "unknown_export",
	"option_too_big", "too_many_options", "shutdown", "io",
}

// maxHandshakeReasons bounds the reason label should the server ever pass
// reasons outside its documented set; beyond it they count as "other".
const (
	maxHandshakeReasons = 32
	reasonOther         = "other"
)
