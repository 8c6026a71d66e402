// Package control is stackd's control socket: HTTP and JSON, through
// net/http, on a unix socket that only stackd's user and root can reach.
// It shows the live tree of every export (GET /v1/status) and passes an
// operator's actions to the nodes that take them (stack.Controlled): a
// mirror's legs are failed and restored, a fault layer is switched.
//
//	GET  /v1/status                                 Status
//	GET  /v1/nodes/{path}                           NodeStatus of one node and its legs
//	POST /v1/nodes/{path}/actions/{action}          the node's Act(action, -1)
//	POST /v1/legs/{path}/actions/{action}           Act(action, leg) of the layer whose leg path is
//
// An error is a JSON object {"error": "…"}: 404 for a path that names no
// node, 400 for an action the node never takes (or a node that takes
// none), 409 for one that does not fit the node's state now.
//
// Package stack and package nbd do not import this one: it reads the
// stacks and the server's counters from outside, as metrics do.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/stackd/stackd/stack"
)

// Bounds on one request, so that a stuck or hostile client (the socket's
// mode keeps out all but stackd's user and root, but those can err too)
// holds a goroutine and a socket for a bounded time only. A status of the
// largest configuration (stack's MaxStackNodes nodes) is a few MiB, well
// within writeTimeout even to a slow reader.
const (
	readTimeout  = 5 * time.Second
	writeTimeout = 30 * time.Second
	idleTimeout  = time.Minute
	// maxHeaderBytes: the requests are one short line and a few headers.
	maxHeaderBytes = 8 << 10
	// maxBodyBytes: no request takes a body; a client that sends one
	// anyway has it read up to this and is refused beyond.
	maxBodyBytes = 4 << 10
)

// Options are what a Server shows and steers.
type Options struct {
	Exports []Export
	// Server, if set, adds the NBD server's figures to the status.
	Server Stater
	// Logger gets a line for every action taken, and for every refused;
	// nil for none.
	Logger *slog.Logger
}

// Server serves the control API.
type Server struct {
	o    Options
	mux  *http.ServeMux
	http *http.Server
}

// New returns a server for o. The stacks must stay open until Shutdown
// has returned.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{o: o, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /v1/status", s.getStatus)
	s.mux.HandleFunc("GET /v1/nodes/{path...}", s.getNode)
	s.mux.HandleFunc("POST /v1/nodes/{rest...}", func(w http.ResponseWriter, r *http.Request) { s.act(w, r, false) })
	s.mux.HandleFunc("POST /v1/legs/{rest...}", func(w http.ResponseWriter, r *http.Request) { s.act(w, r, true) })
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint %s %s; see GET /v1/status", r.Method, r.URL.Path))
	})
	s.http = &http.Server{
		Handler:           http.HandlerFunc(s.serveBounded),
		ReadHeaderTimeout: readTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
	}
	return s
}

// Serve serves the API on ln until Shutdown; it returns nil then.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting and waits for the requests being served,
// until ctx ends; then it closes their connections.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	if err != nil {
		s.http.Close()
	}
	return err
}

// serveBounded refuses a body longer than maxBodyBytes before the mux
// sees the request: no endpoint reads one, and an unread body would
// otherwise be drained by net/http, up to far more.
func (s *Server) serveBounded(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	if _, err := io.Copy(io.Discard, r.Body); err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("a request body of more than %d bytes; no request takes one", maxBodyBytes))
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) getStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, status(s.o.Exports, s.o.Server))
}

func (s *Server) getNode(w http.ResponseWriter, r *http.Request) {
	path := r.PathValue("path")
	for _, e := range s.o.Exports {
		for i := range e.Stack.Nodes {
			if e.Stack.Nodes[i].Path == path {
				// Its legs follow it in Nodes (parents first).
				writeJSON(w, http.StatusOK, tree(e.Stack.Nodes[i:]))
				return
			}
		}
	}
	writeError(w, http.StatusNotFound, noNode(path))
}

// ActionResult is the body of a successful action: what was done, and the
// state of the node that did it, afterwards.
type ActionResult struct {
	// Path is the node that acted: the layer, for a leg action; Leg the
	// leg it acted on, -1 when it acted on itself.
	Path   string          `json:"path"`
	Leg    int             `json:"leg"`
	Action string          `json:"action"`
	State  json.RawMessage `json:"state,omitempty"`
}

// act performs POST /v1/nodes/PATH/actions/ACTION (onLeg false: the node
// acts on itself) and POST /v1/legs/PATH/actions/ACTION (the layer above
// the leg at PATH acts on that leg).
func (s *Server) act(w http.ResponseWriter, r *http.Request, onLeg bool) {
	rest := r.PathValue("rest")
	cut := strings.LastIndex(rest, "/actions/")
	if cut < 0 || strings.Contains(rest[cut+len("/actions/"):], "/") || cut+len("/actions/") == len(rest) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint POST %s; want …/PATH/actions/ACTION", r.URL.Path))
		return
	}
	path, action := rest[:cut], rest[cut+len("/actions/"):]
	n, parent, leg := s.lookup(path)
	if n == nil {
		writeError(w, http.StatusNotFound, noNode(path))
		return
	}
	target, targetLeg := n, -1
	if onLeg {
		switch {
		case parent == nil:
			s.refuse(w, r, http.StatusBadRequest, fmt.Sprintf("%s is not a leg of a layer with many legs; a leg's path ends in /legN", path))
			return
		case parent.Control == nil:
			s.refuse(w, r, http.StatusBadRequest, fmt.Sprintf("%s is a leg of a %s, which takes no actions on its legs", path, parent.Kind))
			return
		}
		target, targetLeg = parent, leg
	} else if n.Control == nil {
		s.refuse(w, r, http.StatusBadRequest, fmt.Sprintf("%s is a %s, which takes no actions", path, n.Kind))
		return
	}
	if err := target.Control.Act(action, targetLeg); err != nil {
		code := http.StatusConflict
		if errors.Is(err, stack.ErrUnknownAction) {
			code = http.StatusBadRequest
		}
		s.refuse(w, r, code, fmt.Sprintf("%s: %s: %v", path, action, err))
		return
	}
	s.o.Logger.Info("control action", "path", target.Path, "leg", targetLeg, "action", action)
	res := ActionResult{Path: target.Path, Leg: targetLeg, Action: action}
	if st := nodeStatus(target); st.StateError == "" {
		res.State = st.State
	}
	writeJSON(w, http.StatusOK, res)
}

// lookup finds the node at path in whichever export holds it.
func (s *Server) lookup(path string) (n, parent *stack.Node, leg int) {
	for _, e := range s.o.Exports {
		if n, parent, leg, err := e.Stack.Lookup(path); err == nil {
			return n, parent, leg
		}
	}
	return nil, nil, -1
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, msg string) {
	s.o.Logger.Warn("control action refused", "request", r.URL.Path, "status", code, "err", msg)
	writeError(w, code, msg)
}

func noNode(path string) string {
	return fmt.Sprintf("no node at %q; `stackd status` lists the paths", path)
}

// errorBody is the body of every error.
type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v) // a write error is the client's going away: nothing to do
}
