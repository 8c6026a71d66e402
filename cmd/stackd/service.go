package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// server is an HTTP API the daemon serves beside the exports: the metrics
// endpoint and the control socket.
type server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
}

// service is a server running on its own listener until stopped.
type service struct {
	srv  server
	done chan struct{} // closed when Serve has returned
}

// startService serves srv on ln in a goroutine of its own; if it stops
// before it is stopped, the log says why, as what.
func startService(log *slog.Logger, what string, srv server, ln net.Listener) *service {
	s := &service{srv: srv, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(what+" failed", "err", err)
		}
	}()
	return s
}

// stop closes the listener and lets the requests in progress finish, for
// at most timeout; then it closes their connections. Either way it
// returns once the server's goroutine has. A nil service is not running.
func (s *service) stop(timeout time.Duration) {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		if c, ok := s.srv.(io.Closer); ok {
			c.Close()
		}
	}
	<-s.done
}
