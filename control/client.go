package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"
)

// clientTimeout bounds one request of the CLI: the server answers at once
// or is stuck.
const clientTimeout = 30 * time.Second

// maxReplyBytes bounds what the client reads of a reply; the largest
// status is a few MiB.
const maxReplyBytes = 64 << 20

// Client talks to the control socket at a path.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client of the control socket at socket. It connects
// on each request.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: clientTimeout}}
}

// Error is what the control socket answered a request it refused with.
type Error struct {
	// Code is the HTTP status: 404 no such node, 400 an action the node
	// never takes, 409 one that does not fit its state.
	Code int
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// Status returns the live status, decoded, and the JSON it came as.
func (c *Client) Status(ctx context.Context) (Status, []byte, error) {
	var st Status
	raw, err := c.do(ctx, http.MethodGet, "/v1/status", &st)
	return st, raw, err
}

// Act asks the node at path to perform action on itself (a fault layer's
// on, off, down-now).
func (c *Client) Act(ctx context.Context, path, action string) (ActionResult, error) {
	var res ActionResult
	_, err := c.do(ctx, http.MethodPost, "/v1/nodes/"+escapePath(path)+"/actions/"+url.PathEscape(action), &res)
	return res, err
}

// ActOnLeg asks the layer above the leg at path to perform action on
// that leg (a mirror's fail, restore).
func (c *Client) ActOnLeg(ctx context.Context, path, action string) (ActionResult, error) {
	var res ActionResult
	_, err := c.do(ctx, http.MethodPost, "/v1/legs/"+escapePath(path)+"/actions/"+url.PathEscape(action), &res)
	return res, err
}

// escapePath escapes each element of a node path, keeping the slashes
// between them: the server matches the elements, unescaped.
func escapePath(path string) string {
	parts := strings.Split(path, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// do sends one request and decodes its JSON reply into v, or into an
// *Error if the server refused it.
func (c *Client) do(ctx context.Context, method, path string, v any) ([]byte, error) {
	// The host is never looked up: the transport dials the socket.
	req, err := http.NewRequestWithContext(ctx, method, "http://stackd"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.dialError(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", c.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		var eb errorBody
		if json.Unmarshal(raw, &eb) != nil || eb.Error == "" {
			eb.Error = fmt.Sprintf("control socket %s: %s: %s", c.socket, resp.Status, strings.TrimSpace(string(raw)))
		}
		return raw, &Error{Code: resp.StatusCode, Msg: eb.Error}
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return raw, fmt.Errorf("control socket %s: a reply that is not what stackd sends: %w", c.socket, err)
	}
	return raw, nil
}

// dialError says what an operator can do about a socket that does not
// answer.
func (c *Client) dialError(err error) error {
	hint := ""
	switch {
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED):
		hint = "; is stackd running, with this control: path in its configuration?"
	case errors.Is(err, os.ErrPermission):
		hint = "; the socket is mode 0600: run this as the user stackd runs as, or as root"
	}
	// The socket's path is said once, before the reason.
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return fmt.Errorf("control socket %s: %w%s", c.socket, err, hint)
}
