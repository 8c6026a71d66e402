package stack

import (
	"time"

	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/targets"
)

// KindRBD is the rbd target's kind.
const KindRBD = "rbd"

// The kind is registered in every build, so that a binary built without
// librbd still decodes and checks an rbd node and says, at its line, how
// to build a stackd that serves it (targets.ErrNoRBD), rather than call
// rbd an unknown kind.
func init() { Register(Kind{New: func() Settings { return new(RBDConfig) }, Rank: 55}) }

// DefaultCephConf is the ceph.conf an rbd node reads when it names none.
const DefaultCephConf = "/etc/ceph/ceph.conf"

// RBDConfig is the settings of an rbd leaf, a Ceph RADOS Block Device
// image served through librbd:
//
//	rbd: {pool: rbd, image: disk0}
type RBDConfig struct {
	leaf
	// Pool is the image's pool; required.
	Pool settings.String `yaml:"pool" need:"true"`
	// Image is the image's name; required. The image must exist (rbd
	// create); stackd does not create it.
	Image settings.String `yaml:"image" need:"true"`
	// Namespace is the RADOS namespace within the pool (absent: none).
	Namespace settings.String `yaml:"namespace"`
	// Conf is the ceph.conf naming the monitors and the keyring (absent:
	// /etc/ceph/ceph.conf). A relative path is relative to the
	// configuration file's directory.
	Conf settings.String `yaml:"conf"`
	// User is the cephx user, without "client." (absent: admin).
	User settings.String `yaml:"user"`
	// Size is a positive multiple of 512, at most the image's size; only
	// the first Size bytes are served (absent: the image's size).
	Size settings.Size `yaml:"size"`
	// ConnectTimeout bounds reaching the cluster and opening the image,
	// at check and at start (absent: 30s).
	ConnectTimeout settings.Duration `yaml:"connect_timeout"`
	// OpTimeout bounds each librbd call once serving: a cluster lost
	// mid-run fails requests with EIO after it (absent: 30s).
	OpTimeout settings.Duration `yaml:"op_timeout"`
	// Workers is how many librbd calls may be outstanding at once, each
	// holding an OS thread while it waits (absent: 32).
	Workers settings.Int `yaml:"workers"`

	// host is the image's size as CheckHost learnt it.
	host hostSized
}

// imageUse is an rbd target's image, where the configuration first uses
// it: a conf (so a cluster), pool, namespace and image name.
type imageUse struct {
	conf, pool, namespace, image string
	line                         int
	export                       string
}

// maxRBDWorkers bounds workers: each is an OS thread while it waits.
const maxRBDWorkers = 1024

func (c *RBDConfig) Kind() string { return KindRBD }

func (c *RBDConfig) Check(p *settings.Problems) {
	checkBlocks(p, "rbd size", c.Size)
	for _, v := range []struct {
		what string
		s    settings.String
	}{{"pool", c.Pool}, {"image", c.Image}, {"conf", c.Conf}, {"user", c.User}} {
		if v.s.Line > 0 && v.s.S == "" {
			p.At(v.s.Line, "rbd %s must not be empty", v.what)
		}
	}
	for _, d := range []struct {
		what string
		v    settings.Duration
	}{{"connect_timeout", c.ConnectTimeout}, {"op_timeout", c.OpTimeout}} {
		if d.v.Line > 0 && d.v.D < time.Second {
			p.At(d.v.Line, "rbd %s: %v is too short; want at least 1s", d.what, d.v.D)
		}
	}
	if w := c.Workers; w.Line > 0 && (w.N < 1 || w.N > maxRBDWorkers) {
		p.At(w.Line, "rbd workers: %d is out of range; want 1 to %d", w.N, maxRBDWorkers)
	}
}

// ResolvePaths makes the conf path absolute, as a file target's path.
func (c *RBDConfig) ResolvePaths(dir string) { resolvePath(&c.Conf, dir) }

func (c *RBDConfig) options(readOnly bool) targets.RBDOptions {
	conf := c.Conf.S
	if conf == "" {
		conf = DefaultCephConf
	}
	return targets.RBDOptions{
		Pool: c.Pool.S, Namespace: c.Namespace.S, Image: c.Image.S,
		Conf: conf, User: c.User.S,
		ConnectTimeout: c.ConnectTimeout.D, OpTimeout: c.OpTimeout.D,
		ReadOnly: readOnly, Workers: int(c.Workers.N),
	}
}

func (c *RBDConfig) NodeSize(legs []Sized) (uint64, error) { return c.host.nodeSize(c.Size.Bytes) }

// Build opens the image; it is served at its configured size, a prefix
// of the image, or whole.
func (c *RBDConfig) Build(legs []Device, b BuildContext) (Device, error) {
	d, err := targets.OpenRBD(c.options(b.ReadOnly))
	if err != nil {
		return nil, err
	}
	if c.Size.Bytes == 0 || c.Size.Bytes == d.Size() {
		return d, nil
	}
	if c.Size.Bytes > d.Size() {
		d.Close()
		return nil, sizeError(c.Size.Line, "rbd image %s is %s, smaller than its configured size %s",
			c.Image.S, settings.FormatSize(d.Size()), c.Size)
	}
	return &rbdPrefix{RBDDevice: d, size: c.Size.Bytes}, nil
}

// rbdPrefix serves the first size bytes of an image larger than configured:
// the bios it gets are inside size already (the protocol layer and the
// layers above check against Size).
type rbdPrefix struct {
	targets.RBDDevice
	size uint64
}

func (p *rbdPrefix) Size() uint64 { return p.size }

func (c *RBDConfig) Describe() []string {
	words := []string{"pool=" + settings.Word(c.Pool.S), "image=" + settings.Word(c.Image.S)}
	if c.Namespace.S != "" {
		words = append(words, "namespace="+settings.Word(c.Namespace.S))
	}
	if c.Conf.S != "" {
		words = append(words, "conf="+settings.Word(c.Conf.S))
	}
	if c.User.S != "" {
		words = append(words, "user="+settings.Word(c.User.S))
	}
	return words
}

// checkHost reaches the cluster, within connect_timeout, and learns the
// image's size: the image must exist and be at least the configured size.
// A stackd built without librbd reports that at the node's line.
func (c *RBDConfig) checkHost(h *Host, p *settings.Problems, bad bool) {
	if c.Image.Line == 0 || c.Image.S == "" {
		return
	}
	// Two legs on one image would each open it, and with its exclusive
	// lock (a default feature) pass the lock back and forth on every
	// write, each leg's cache blind to the other's writes.
	id := imageUse{conf: c.options(false).Conf, pool: c.Pool.S, namespace: c.Namespace.S, image: c.Image.S}
	for _, u := range h.images {
		if u.conf == id.conf && u.pool == id.pool && u.namespace == id.namespace && u.image == id.image {
			p.At(c.Image.Line, "rbd image %s/%s is already used at line %d (export %q); an image can back only one leg", c.Pool.S, c.Image.S, u.line, u.export)
			return
		}
	}
	id.line, id.export = c.Image.Line, h.Export
	h.images = append(h.images, id)
	if bad {
		return
	}
	c.host.failed = true
	size, err := targets.ProbeRBD(c.options(true))
	switch {
	case err != nil:
		p.At(c.Image.Line, "%v", err)
	case size == 0:
		p.At(c.Image.Line, "rbd image %s is empty; grow it (rbd resize --size SIZE %s/%s)", c.Image.S, c.Pool.S, c.Image.S)
	case c.Size.Bytes > size:
		p.At(c.Size.Line, "rbd image %s/%s is %s, smaller than its configured size %s; grow it (rbd resize --size %s %s/%s) or give a smaller size",
			c.Pool.S, c.Image.S, settings.FormatSize(size), settings.FormatSize(c.Size.Bytes),
			settings.FormatSize(c.Size.Bytes), c.Pool.S, c.Image.S)
	case c.Size.Bytes == 0 && size%blockSize != 0:
		p.At(c.Image.Line, "rbd image %s/%s is %d bytes, not a multiple of %d; give a size to serve a prefix of it", c.Pool.S, c.Image.S, size, blockSize)
	default:
		c.host = hostSized{size: size, known: true}
	}
}
