package stack

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/stackd/stackd/settings"
	"github.com/stackd/stackd/targets"
)

// KindFile is the file target's kind.
const KindFile = "file"

func init() { Register(Kind{New: func() Settings { return new(FileConfig) }, Rank: 50}) }

// FileConfig is the settings of a file leaf, a regular file or a block
// device:
//
//	file: {path: /var/lib/stackd/a.img, size: 1GiB}
type FileConfig struct {
	leaf
	// Path is required. A relative path is relative to the
	// configuration file's directory (ResolvePaths makes it absolute).
	// A file may back only one leg in the whole configuration.
	Path settings.String `yaml:"path" need:"true"`
	// Size is a positive multiple of 512. An existing file must be at
	// least this large, and only its first Size bytes are served
	// (absent: the file's size). A missing file is created at Size when
	// stackd starts, so Size is then required; its directory must exist
	// and be writable, and the export must not be read-only.
	Size settings.Size `yaml:"size"`

	// host is what CheckHost learnt of the file's size, for when Size is
	// absent.
	host hostSized
}

func (c *FileConfig) Kind() string { return KindFile }

func (c *FileConfig) Check(p *settings.Problems) {
	checkBlocks(p, "file size", c.Size)
	if c.Path.Line > 0 && c.Path.S == "" {
		p.At(c.Path.Line, "file path must not be empty")
	}
}

// ResolvePaths makes the path absolute (see resolvePath).
func (c *FileConfig) ResolvePaths(dir string) { resolvePath(&c.Path, dir) }

// resolvePath makes the path p holds absolute, a relative one being
// relative to dir ("" for the working directory), so that a configuration
// means the same files whatever directory stackd is started from. Every
// node kind that names a file resolves it here; an absent path stays
// absent.
func resolvePath(p *settings.String, dir string) {
	path := p.S
	if path == "" {
		return
	}
	if !filepath.IsAbs(path) && dir != "" {
		path = filepath.Join(dir, path)
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	p.S = filepath.Clean(path)
}

func (c *FileConfig) NodeSize(legs []Sized) (uint64, error) { return c.host.nodeSize(c.Size.Bytes) }

// Build opens the file read-only under a read-only export, so that it
// serves what CheckHost accepted for one: a file the export may only read.
func (c *FileConfig) Build(legs []Device, b BuildContext) (Device, error) {
	return targets.OpenFile(c.Path.S, c.Size.Bytes, targets.FileOptions{ReadOnly: b.ReadOnly})
}

func (c *FileConfig) Describe() []string {
	return []string{"path=" + settings.Word(c.Path.S)}
}

// Host is what the host checks of a configuration's nodes share: the
// export being checked, and the files already used.
type Host struct {
	// Export and ReadOnly describe the export whose stack is checked.
	Export   string
	ReadOnly bool
	// files lists each file target's first use, so that a file backs at
	// most one leg in the whole configuration.
	files []fileUse
	// images lists each rbd target's first use, likewise (see
	// RBDConfig.checkHost).
	images []imageUse
}

type fileUse struct {
	path   string
	line   int
	export string
	stat   fileStat
}

// CheckHost checks, for every node of s whose kind depends on the host,
// what the host must provide (for a file: that it exists or can be
// created, can be opened as the export needs, is large enough), and
// learns what only the host knows (a file's size). It changes nothing on
// the host.
func (h *Host) CheckHost(s Spec, p *settings.Problems) {
	s.Walk(func(n Spec) {
		if c, ok := n.Config.(interface {
			checkHost(h *Host, p *settings.Problems, bad bool)
		}); ok {
			c.checkHost(h, p, n.bad)
		}
	})
}

// checkHost checks the file; bad says that the node had a problem
// already, so that only the path is checked (it is not used twice).
func (c *FileConfig) checkHost(h *Host, p *settings.Problems, bad bool) {
	path := c.Path.S
	if c.Path.Line == 0 || path == "" {
		return
	}
	st, used := h.claim(path, c.Path.Line)
	if used != nil {
		p.At(c.Path.Line, "file %s is already used at line %d (export %q); a file can back only one leg", path, used.line, used.export)
		return
	}
	if bad {
		return
	}
	c.host.size, c.host.known = c.checkFile(p, st, h.ReadOnly)
	c.host.failed = !c.host.known
}

// claim records the use of the file at path, from line, and returns what
// Stat said of it; or, if the file was claimed already (by this path or
// another naming the same file), that first use.
func (h *Host) claim(path string, line int) (fileStat, *fileUse) {
	var st fileStat
	st.info, st.err = os.Stat(path)
	for i, u := range h.files {
		if u.path == path || (st.err == nil && u.stat.err == nil && os.SameFile(st.info, u.stat.info)) {
			return st, &h.files[i]
		}
	}
	h.files = append(h.files, fileUse{path: path, line: line, export: h.Export, stat: st})
	return st, nil
}

// fileStat is what Stat said of a file target's path, kept so that two
// paths naming the same file (a symlink, a hard link) are caught too.
type fileStat struct {
	info fs.FileInfo
	err  error
}

// checkFile checks that a file target can be served as configured and
// returns its size. It opens the file to test for access, and to learn a
// block device's size, but changes nothing.
func (c *FileConfig) checkFile(p *settings.Problems, st fileStat, readOnly bool) (uint64, bool) {
	path, size, line := c.Path.S, c.Size.Bytes, c.Path.Line
	switch {
	case st.err == nil:
		actual, err := fileSize(path, st.info, readOnly)
		if err != nil {
			p.At(line, "%v", err)
			return 0, false
		}
		switch {
		case size == 0 && actual == 0:
			p.At(line, "file %s is empty; give a size and grow the file to it (truncate -s SIZE %s)", path, path)
			return 0, false
		case size == 0 && actual%blockSize != 0:
			p.At(line, "file %s is %d bytes, not a multiple of %d; give a size to serve a prefix of it", path, actual, blockSize)
			return 0, false
		case size == 0:
			return actual, true
		case actual < size:
			p.At(c.Size.Line, "file %s is %s, smaller than its configured size %s; grow it (truncate -s %s %s) or give a smaller size",
				path, settings.FormatSize(actual), settings.FormatSize(size), settings.FormatSize(size), path)
			return 0, false
		}
		return size, true
	case errors.Is(st.err, fs.ErrNotExist):
		switch {
		case readOnly:
			p.At(line, "file %s does not exist, and a read-only export cannot create it", path)
		case size == 0:
			p.At(line, "file %s does not exist; give a size for stackd to create it with", path)
		default:
			if err := canCreate(path); err != nil {
				p.At(line, "file %s does not exist, and %v", path, err)
				return 0, false
			}
			return size, true
		}
		return 0, false
	}
	p.At(line, "file %s: %s", path, reason(st.err))
	return 0, false
}

// fileSize checks an existing file target and returns its size.
func fileSize(path string, info fs.FileInfo, readOnly bool) (uint64, error) {
	mode := info.Mode()
	blockDevice := mode&fs.ModeDevice != 0 && mode&fs.ModeCharDevice == 0
	switch {
	case mode.IsDir():
		return 0, fmt.Errorf("%s is a directory", path)
	case !mode.IsRegular() && !blockDevice:
		return 0, fmt.Errorf("%s is not a regular file or a block device", path)
	}
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	fh, err := os.OpenFile(path, flag, 0)
	if err != nil {
		if !readOnly {
			if ro, err2 := os.Open(path); err2 == nil {
				ro.Close()
				return 0, fmt.Errorf("file %s is not writable (%s); mark the export read_only: true, or make the file writable", path, reason(err))
			}
		}
		return 0, fmt.Errorf("file %s cannot be opened: %s", path, reason(err))
	}
	defer fh.Close()
	if !blockDevice {
		return uint64(info.Size()), nil
	}
	end, err := fh.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("block device %s: cannot learn its size: %s", path, reason(err))
	}
	return uint64(end), nil
}

// reason is an error without the operation and path a PathError repeats.
func reason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// Values for access(2) (POSIX W_OK and X_OK): to create a file in a
// directory, one needs to write and search it.
const (
	accessWrite  = 0x2
	accessSearch = 0x1
)

// canCreate reports why a file cannot be created at path, or nil.
func canCreate(path string) error {
	dir := filepath.Dir(path)
	info, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("neither does its directory %s", dir)
	case err != nil:
		return fmt.Errorf("its directory %s cannot be read: %s", dir, reason(err))
	case !info.IsDir():
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := syscall.Access(dir, accessWrite|accessSearch); err != nil {
		return fmt.Errorf("its directory %s is not writable (%s), so stackd cannot create it", dir, err)
	}
	return nil
}
