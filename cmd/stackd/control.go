package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/stackd/stackd/configs"
	"github.com/stackd/stackd/control"
)

// controlMode admits the daemon's own user and root, and no one else:
// what the socket allows is as much as writing to the exports' disks.
const controlMode = 0o600

// controlStopTimeout bounds the requests the control socket is still
// serving at shutdown.
const controlStopTimeout = 5 * time.Second

// serveControl serves the control socket at path over the daemon's
// stacks and server; nothing when path is empty.
func (d *daemon) serveControl(cfg *configs.Config) error {
	if cfg.Control == "" {
		return nil
	}
	ln, err := listenUnix(cfg.Control, controlMode)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	var exports []control.Export
	for i, st := range d.stacks {
		e := cfg.Exports[i]
		exports = append(exports, control.Export{Name: e.Name, Default: e.Default, ReadOnly: e.ReadOnly, Stack: st})
	}
	srv := control.New(control.Options{Exports: exports, Server: d.server, Logger: d.log})
	d.control = startService(d.log, "control socket", srv, ln)
	d.log.Info("serving the control socket", "path", cfg.Control)
	return nil
}

// stopControl closes the control socket, letting the requests in progress
// finish; before the stacks close, which those requests read.
func (d *daemon) stopControl() {
	d.control.stop(controlStopTimeout)
	d.control = nil
}

// listenBacklog asks for the longest queue of connections not yet
// accepted; the kernel lowers it to net.core.somaxconn, as it does for
// the listeners of package net (syscall.SOMAXCONN is an old 128, too few
// for many NBD clients connecting at once). 65535: older kernels keep the
// backlog in 16 bits.
const listenBacklog = 1<<16 - 1

// listenUnix listens on a unix socket at path. A socket left behind by a
// stackd that died is removed first, but only if connecting to it is
// refused: a server that answers there, or one that cannot be asked,
// keeps its socket and stops this start. With a mode, the socket gets it
// between bind and listen, so that no one connects before it is in
// place (a connection to a socket that is bound and not listening is
// refused). The listener removes the socket when it closes.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		c, err := net.DialTimeout("unix", path, time.Second)
		switch {
		case err == nil:
			c.Close()
			return nil, fmt.Errorf("listen unix %s: another server is answering there", path)
		case !errors.Is(err, syscall.ECONNREFUSED):
			return nil, fmt.Errorf("listen unix %s: a socket is there, and whether a server answers cannot be told: %w", path, err)
		}
		os.Remove(path)
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listen unix %s: socket: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // FileListener holds a copy
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		return nil, fmt.Errorf("listen unix %s: bind: %w", path, err)
	}
	ln, err := func() (net.Listener, error) {
		if mode != 0 {
			if err := os.Chmod(path, mode); err != nil {
				return nil, err
			}
		}
		if err := syscall.Listen(fd, listenBacklog); err != nil {
			return nil, fmt.Errorf("listen: %w", err)
		}
		return net.FileListener(f)
	}()
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("listen unix %s: %w", path, err)
	}
	return &unixListener{Listener: ln, path: path}, nil
}

// unixListener removes its socket when it closes, as net.ListenUnix's
// listeners do; one made from a descriptor does not.
type unixListener struct {
	net.Listener
	path string
}

func (l *unixListener) Close() error {
	err := l.Listener.Close()
	os.Remove(l.path)
	return err
}
