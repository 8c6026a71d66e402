package targets

import (
	"syscall"
	"testing"
	"time"
)

// TestRBDErrno: librbd's errors reach the client as the errnos NBD can
// carry, and anything else, timeouts and lost connections included, as
// EIO.
func TestRBDErrno(t *testing.T) {
	for _, c := range []struct {
		ret  int
		want syscall.Errno
	}{
		{-int(syscall.EROFS), syscall.EPERM},
		{-int(syscall.EACCES), syscall.EPERM},
		{-int(syscall.EDQUOT), syscall.ENOSPC},
		{-int(syscall.ENOSPC), syscall.ENOSPC},
		{-int(syscall.EINVAL), syscall.EINVAL},
		{-int(syscall.ETIMEDOUT), syscall.EIO},
		{-int(syscall.ESHUTDOWN), syscall.EIO}, // blocklisted
		{-int(syscall.ENOTCONN), syscall.EIO},
		{-int(syscall.ENOENT), syscall.EIO}, // the image vanished
	} {
		if got := rbdErrno(c.ret); got != c.want {
			t.Errorf("rbdErrno(%d) = %v, want %v", c.ret, got, c.want)
		}
	}
}

// TestLatency: an observation lands in the first bucket whose bound is
// at least it, and the total and sum add up.
func TestLatency(t *testing.T) {
	var h Latency
	h.Observe(10 * time.Microsecond) // on a bound: that bucket
	h.Observe(11 * time.Microsecond)
	h.Observe(time.Minute) // past the last bound: +Inf
	counts, total, sum := h.Snapshot()
	if counts[0] != 1 || counts[1] != 1 || counts[len(LatencyBounds)] != 1 || total != 3 {
		t.Errorf("counts %v, total %d", counts, total)
	}
	if want := time.Minute + 21*time.Microsecond; sum != want {
		t.Errorf("sum %v, want %v", sum, want)
	}
}
