package configs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"gopkg.in/yaml.v3"

	"github.com/stackd/stackd/stack"
)

// fileStat is what Stat said of a file target's path, kept so that two
// paths naming the same file (a symlink, a hard link) are caught too.
type fileStat struct {
	info fs.FileInfo
	err  error
}

// resolve makes a file target's path absolute, relative paths being
// relative to the configuration file's directory, so that a config means
// the same files whatever directory stackd is started from.
func (d *decoder) resolve(p string) string {
	if !filepath.IsAbs(p) && d.dir != "" {
		p = filepath.Join(d.dir, p)
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return filepath.Clean(p)
}

func (d *decoder) fileNode(n *yaml.Node, keyLine int, ex *exportCtx) (stack.Spec, uint64, bool) {
	spec := stack.Spec{Kind: stack.KindFile}
	f := d.mapping(n, keyLine, "file", "path", "size", "delay")
	if f == nil {
		return spec, 0, false
	}
	spec.Delay = d.delay(f)
	size, sizeOK := d.blocks(f, "size", false)
	spec.Size = size
	pv := f.need(d, "path")
	if pv == nil {
		return spec, 0, false
	}
	p, ok := d.str(pv, "file path")
	if !ok {
		return spec, 0, false
	}
	if p == "" {
		d.errorf(pv, "file path must not be empty")
		return spec, 0, false
	}
	spec.Path = d.resolve(p)

	var st fileStat
	st.info, st.err = os.Stat(spec.Path)
	for _, u := range d.files {
		if u.path == spec.Path || (st.err == nil && u.stat.err == nil && os.SameFile(st.info, u.stat.info)) {
			d.errorf(pv, "file %s is already used at line %d (export %q); a file can back only one leg", spec.Path, u.line, u.export)
			return spec, 0, false
		}
	}
	d.files = append(d.files, fileUse{path: spec.Path, line: pv.Line, export: ex.name, stat: st})
	if !sizeOK {
		return spec, 0, false
	}
	got, known := d.checkFile(f, pv, spec.Path, st, size, ex.readOnly)
	return spec, got, known
}

// checkFile checks that a file target can be served as configured and
// returns its size. It opens the file to test for access, and to learn a
// block device's size, but changes nothing.
func (d *decoder) checkFile(f *fields, pv *yaml.Node, path string, st fileStat, size uint64, readOnly bool) (uint64, bool) {
	switch {
	case st.err == nil:
		actual, err := fileSize(path, st.info, readOnly)
		if err != nil {
			d.errorf(pv, "%v", err)
			return 0, false
		}
		switch {
		case size == 0 && actual == 0:
			d.errorf(pv, "file %s is empty; give a size and grow the file to it (truncate -s SIZE %s)", path, path)
			return 0, false
		case size == 0 && actual%blockSize != 0:
			d.errorf(pv, "file %s is %d bytes, not a multiple of %d; give a size to serve a prefix of it", path, actual, blockSize)
			return 0, false
		case size == 0:
			return actual, true
		case actual < size:
			d.errorf(f.val["size"], "file %s is %s, smaller than its configured size %s; grow it (truncate -s %s %s) or give a smaller size",
				path, FormatSize(actual), FormatSize(size), FormatSize(size), path)
			return 0, false
		}
		return size, true
	case errors.Is(st.err, fs.ErrNotExist):
		switch {
		case readOnly:
			d.errorf(pv, "file %s does not exist, and a read-only export cannot create it", path)
		case size == 0:
			d.errorf(pv, "file %s does not exist; give a size for stackd to create it with", path)
		default:
			if err := canCreate(path); err != nil {
				d.errorf(pv, "file %s does not exist, and %v", path, err)
				return 0, false
			}
			return size, true
		}
		return 0, false
	}
	d.errorf(pv, "file %s: %s", path, reason(st.err))
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
