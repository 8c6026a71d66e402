package stack

import (
	"fmt"
	"strconv"
	"time"

	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/targets/remote"
)

// KindNBD is the remote leg's kind: an NBD server elsewhere.
const KindNBD = "nbd"

func init() { Register(Kind{New: func() Settings { return new(NBDConfig) }, Rank: 55}) }

// Bounds of an nbd leg's settings.
const (
	// maxNBDConnections: beyond 16, more connections to one remote add
	// sockets, not throughput; requests in flight are what scale.
	maxNBDConnections = 16
	// minNBDTimeout: below it, a remote's ordinary hiccup (a flush to a
	// disk) would fail requests.
	minNBDTimeout = 100 * time.Millisecond
	// probeBound bounds how long the host check waits for a remote, so
	// that an unreachable one delays `stackd check` and `serve` only
	// briefly.
	probeBound = 2 * time.Second
)

// NBDConfig is the settings of an nbd leaf, an export of another NBD
// server (stackd, nbdkit, qemu-nbd, nbd-server), reached over TCP or a
// unix socket:
//
//	nbd: {uri: nbd://198.18.0.2:10809/disk0, connections: 4, timeout: 30s, size: 64GiB}
//
// The failure semantics (reconnects, retries, timeouts, a remote down at
// start) are those of package targets/remote.
type NBDConfig struct {
	// URI is required: nbd://HOST[:PORT]/EXPORT (port 10809 when absent)
	// or nbd+unix:///EXPORT?socket=PATH.
	URI settings.String `yaml:"uri" need:"true"`
	// Connections is how many connections to open, 1 to 16, used only
	// when the remote advertises NBD_FLAG_CAN_MULTI_CONN; otherwise one
	// (absent: 1).
	Connections settings.Int `yaml:"connections"`
	// Timeout is how long a request may go unanswered before it fails
	// with EIO, at least 100ms (absent: 30s).
	Timeout settings.Duration `yaml:"timeout"`
	// Size, a positive multiple of 512, must equal the remote's size.
	// Absent, it is learnt from the remote when the configuration is
	// checked, which then needs the remote up; given, the export starts
	// even while the remote is down.
	Size settings.Size `yaml:"size"`

	opts   remote.Options // from URI, once Check has parsed it
	parsed bool
	host   hostSized // the remote's size, learnt by CheckHost when Size is absent
}

func (c *NBDConfig) Kind() string     { return KindNBD }
func (c *NBDConfig) LegSpecs() []Spec { return nil }

func (c *NBDConfig) Check(p *settings.Problems) {
	checkBlocks(p, "nbd size", c.Size)
	if c.URI.Line > 0 {
		o, err := remote.ParseURI(c.URI.S)
		if err != nil {
			p.At(c.URI.Line, "nbd %v", err)
		} else {
			c.opts, c.parsed = o, true
		}
	}
	if n := c.Connections; n.Line > 0 && (n.N < 1 || n.N > maxNBDConnections) {
		p.At(n.Line, "nbd connections: %d is out of range; want 1 to %d", n.N, maxNBDConnections)
	}
	if d := c.Timeout; d.Line > 0 && d.D < minNBDTimeout {
		p.At(d.Line, "nbd timeout: %v is shorter than %v", d.D, minNBDTimeout)
	}
}

func (c *NBDConfig) NodeSize(legs []Sized) (uint64, error) { return c.host.nodeSize(c.Size.Bytes) }

// options are the remote's options with the settings' values.
func (c *NBDConfig) options() remote.Options {
	o := c.opts
	o.Connections = int(c.Connections.N)
	o.Timeout = c.Timeout.D
	o.Size = c.Size.Bytes
	if o.Size == 0 {
		o.Size = c.host.size
	}
	return o
}

// checkHost asks the remote for its size: needed when none is
// configured, and, when one is, compared with it if the remote answers.
// A remote that does not answer is a problem only without a size.
func (c *NBDConfig) checkHost(h *Host, p *settings.Problems, bad bool) {
	if bad || !c.parsed {
		return
	}
	size, _, err := remote.Probe(c.options(), probeBound)
	switch {
	case err != nil && c.Size.Line == 0:
		p.At(c.URI.Line, "nbd %s: cannot learn the remote's size (%v); give a size, and the export starts without the remote", c.URI.S, err)
	case err != nil:
	case c.Size.Line != 0 && size != c.Size.Bytes:
		p.At(c.Size.Line, "nbd %s: the remote is %s (%d bytes), not the size %s given", c.URI.S, settings.FormatSize(size), size, c.Size)
	case size%blockSize != 0:
		p.At(c.URI.Line, "nbd %s: the remote's size, %d bytes, is not a multiple of %d", c.URI.S, size, blockSize)
	default:
		c.host.size, c.host.known = size, true
	}
}

func (c *NBDConfig) Build(legs []Device, b BuildContext) (Device, error) {
	if !c.parsed {
		return nil, fmt.Errorf("nbd: uri %q was not checked", c.URI.S)
	}
	r, err := remote.New(c.options())
	if err != nil {
		return nil, err
	}
	return &NBDLeg{Remote: r}, nil
}

func (c *NBDConfig) Describe() []string {
	words := []string{"uri=" + settings.Word(c.URI.S)}
	if c.Connections.N > 1 {
		words = append(words, "connections="+strconv.FormatInt(c.Connections.N, 10))
	}
	if c.Timeout.D != 0 {
		words = append(words, "timeout="+c.Timeout.String())
	}
	return words
}

// NBDLeg is a built nbd leaf: the remote target, Controlled so that
// `stackd status` shows its connections.
type NBDLeg struct{ *remote.Remote }

// RemoteStats is a remote leg's counters, as the metrics read them.
type RemoteStats = remote.Stats

// RemoteStateNames are the names of RemoteStats.States' values.
// (RemoteStats.Latency's buckets are targets.LatencyBounds.)
var RemoteStateNames = remote.StateNames

// State implements Controlled: each connection's state, reconnects,
// requests queued and in flight.
func (l *NBDLeg) State() any { return l.Remote.State() }

// Act implements Controlled: an nbd leg takes no action; its connections
// mend themselves.
func (l *NBDLeg) Act(action string, leg int) error {
	return fmt.Errorf("%w %q: an nbd leg takes no actions; it reconnects by itself", ErrUnknownAction, action)
}

// RemoteStats returns the leg's counters, for Node.Remote.
func (l *NBDLeg) RemoteStats() RemoteStats { return l.Remote.Stats() }
