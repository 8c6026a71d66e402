package metrics

import (
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/stackd/stackd/nbd"
	"github.com/stackd/stackd/nbd/wire"
)

// numWireErrors is how many errors a client can receive: the values of
// the error label.
const numWireErrors = len(wire.Errors)

// wireIndex is the index in wire.Errors of the error the client received
// for e. The label thus says what the client saw, and the set stays
// bounded; the log line keeps the errno.
func wireIndex(e syscall.Errno) int { return wire.ErrorIndex(e) }

// wireErrorName is the label value for index w.
func wireErrorName(w int) string { return wire.Errors[w].Name }

// errnoName is the symbolic name of e ("EROFS"), for log lines.
func errnoName(e syscall.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return "errno " + strconv.Itoa(int(e))
}

// handshakeReasons are reported from the first scrape on, at zero, so
// that a rate over them sees the first failure.
var handshakeReasons = nbd.HandshakeFailureReasons

// refusalReasons are, likewise, the reasons a connection is refused at
// accept.
var refusalReasons = nbd.ConnRefusalReasons

// maxReasons bounds a reason label should the server ever pass reasons
// outside its documented set; beyond it they count as "other".
const (
	maxReasons  = 32
	reasonOther = "other"
)

// countReason counts one event under reason in counts, or under
// reasonOther once counts holds maxReasons labels. The caller holds the
// lock that guards counts.
func countReason(counts map[string]uint64, reason string) {
	if _, known := counts[reason]; known || len(counts) < maxReasons {
		counts[reason]++
	} else {
		counts[reasonOther]++
	}
}
