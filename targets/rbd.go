package targets

import (
	"errors"
	"syscall"
	"time"

	"github.com/stackd/stackd/bioset"
)

// The rbd target serves a Ceph RADOS Block Device image through librbd.
// librbd is C, so the target's I/O (rbd_librbd.go) is built only with the
// build tag rbd (and pacific, the Ceph release go-ceph is built for);
// without it OpenRBD and ProbeRBD return ErrNoRBD, and a binary without
// cgo still builds and refuses an rbd configuration saying how to build
// one that serves it.

// ErrNoRBD is what a stackd built without librbd says of an rbd target.
var ErrNoRBD = errors.New("this stackd was built without the rbd target; " +
	"build it with librbd (Debian: librbd-dev) as `go build -tags rbd,pacific ./cmd/stackd` (make build-rbd)")

// RBDOptions name an image and how to reach its cluster.
type RBDOptions struct {
	// Pool, Namespace and Image name the image.
	Pool, Namespace, Image string
	// Conf is the ceph.conf to read, which names the monitors and the
	// keyring; User is the cephx user, without "client.".
	Conf, User string
	// ConnectTimeout bounds reaching the cluster and opening the image
	// (0: DefaultRBDConnectTimeout).
	ConnectTimeout time.Duration
	// OpTimeout bounds each librbd call once the image is open, so that
	// a lost cluster fails bios with EIO rather than holding them
	// forever (0: DefaultRBDOpTimeout).
	OpTimeout time.Duration
	// ReadOnly opens the image read-only: WRITE, TRIM and WRITE_ZEROES
	// fail with EPERM.
	ReadOnly bool
	// Workers is how many librbd calls may be outstanding at once (0:
	// DefaultRBDWorkers).
	Workers int
}

const (
	// DefaultRBDConnectTimeout: a cluster that has not answered in 30 s
	// is down, or the configuration names the wrong one.
	DefaultRBDConnectTimeout = 30 * time.Second
	// DefaultRBDOpTimeout: librbd retries an op on a lost OSD until it
	// comes back; past 30 s the bio fails, so that a mirror above can fail
	// the leg, and a client sees EIO instead of a hang.
	DefaultRBDOpTimeout = 30 * time.Second
	// DefaultRBDWorkers is the number of librbd calls in flight at once.
	// Each blocked call holds an OS thread; 32 covers a qd32 client, the
	// depth at which a one-OSD memstore cluster stops gaining.
	DefaultRBDWorkers = 32
)

func (o RBDOptions) withDefaults() RBDOptions {
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultRBDConnectTimeout
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = DefaultRBDOpTimeout
	}
	if o.Workers <= 0 {
		o.Workers = DefaultRBDWorkers
	}
	if o.User == "" {
		o.User = "admin"
	}
	return o
}

// RBDDevice is what OpenRBD returns: a leaf device with the counters
// stack.Build and metrics look for.
type RBDDevice interface {
	bioset.Queue
	Size() uint64
	Caps() bioset.Caps
	Close() error
	Errors() uint64
	ServiceStats
}

// OpenRBD connects to the cluster, opens the image once for the life of
// the target and returns the target, of the image's size.
func OpenRBD(o RBDOptions) (RBDDevice, error) { return openRBD(o.withDefaults()) }

// ProbeRBD connects to the cluster and returns the image's size, opening
// it read-only and closing it again: the host check's look at the image.
func ProbeRBD(o RBDOptions) (uint64, error) { return probeRBD(o.withDefaults()) }

// rbdErrno maps a librbd return code (a negative errno) to the errno a
// bio ends with: what NBD can say, and what a client can act on. A
// timeout, a lost or blocklisted connection, or anything unforeseen is
// an I/O error.
func rbdErrno(ret int) syscall.Errno {
	switch e := syscall.Errno(-ret); e {
	case syscall.EPERM, syscall.EACCES, syscall.EROFS:
		return syscall.EPERM
	case syscall.ENOSPC, syscall.EDQUOT:
		return syscall.ENOSPC
	case syscall.EINVAL:
		return syscall.EINVAL
	case syscall.ENOMEM:
		return syscall.ENOMEM
	case syscall.EOPNOTSUPP:
		return syscall.EOPNOTSUPP
	}
	return syscall.EIO
}
