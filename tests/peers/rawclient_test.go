package peers

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stackd/stackd/nbd/wire"
)

// A minimal NBD client written from the spec (doc/proto.md of
// NetworkBlockDevice/nbd), for requests no real client sends. It speaks
// fixed newstyle with NO_ZEROES, enters transmission with NBD_OPT_GO and
// no information requests, and uses simple replies. The constants and
// header coding are package nbd/wire's, the server's own: what these
// tests check is the server's behaviour, against real peers, not the
// encoding.

// rawTimeout bounds every exchange of the raw client.
const rawTimeout = 30 * time.Second

var be = binary.BigEndian

// rawConn is a raw NBD connection in the transmission phase.
type rawConn struct {
	net.Conn
	size   uint64
	flags  uint16
	cookie uint64
}

// dialRaw connects to the unix socket without any handshake.
func dialRaw(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(rawTimeout))
	return c
}

// readGreeting reads and checks the server's 18-byte greeting.
func readGreeting(c net.Conn) error {
	var g [wire.GreetingLen]byte
	if _, err := io.ReadFull(c, g[:]); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	f, ok := wire.DecodeGreeting(g[:])
	if !ok {
		return fmt.Errorf("greeting: bad magic %x", g[:16])
	}
	if f&(wire.FlagFixedNewstyle|wire.FlagNoZeroes) != wire.FlagFixedNewstyle|wire.FlagNoZeroes {
		return fmt.Errorf("greeting: handshake flags %#x lack FIXED_NEWSTYLE|NO_ZEROES", f)
	}
	return nil
}

// optionHeader is the 16-byte header of an option request, which may
// claim more data than follows it.
func optionHeader(opt, length uint32) []byte {
	b := make([]byte, wire.OptionHeaderLen)
	wire.PutOption(b, opt, length)
	return b
}

// goOption is a complete NBD_OPT_GO for name with no information requests.
func goOption(name string) []byte {
	return wire.AppendOption(nil, wire.OptGo, wire.AppendInfoRequest(nil, name))
}

// optionReply is one option reply.
type optionReply struct {
	opt, typ uint32
	data     []byte
}

// readOptionReply reads one option reply; data longer than 64 KiB is an
// error (this client never asks for anything that large).
func readOptionReply(c net.Conn) (optionReply, error) {
	var h [wire.OptionReplyHeaderLen]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return optionReply{}, err
	}
	hdr, ok := wire.DecodeOptionReply(h[:])
	if !ok {
		return optionReply{}, fmt.Errorf("option reply: bad magic %#x", be.Uint64(h[:]))
	}
	r := optionReply{opt: hdr.Option, typ: hdr.Type}
	n := hdr.Length
	if n > 64<<10 {
		return r, fmt.Errorf("option reply of %d bytes", n)
	}
	r.data = make([]byte, n)
	if _, err := io.ReadFull(c, r.data); err != nil {
		return r, err
	}
	return r, nil
}

// handshake negotiates export name on c, which has just been dialled.
func handshake(c net.Conn, name string) (*rawConn, error) {
	if err := greetAndFlags(c); err != nil {
		return nil, err
	}
	return goExport(c, name)
}

// greetAndFlags reads the greeting and sends the client's flags.
func greetAndFlags(c net.Conn) error {
	if err := readGreeting(c); err != nil {
		return err
	}
	var cf [4]byte
	be.PutUint32(cf[:], wire.FlagCFixedNewstyle|wire.FlagCNoZeroes)
	_, err := c.Write(cf[:])
	return err
}

// goExport enters transmission on export name with NBD_OPT_GO.
func goExport(c net.Conn, name string) (*rawConn, error) {
	if _, err := c.Write(goOption(name)); err != nil {
		return nil, err
	}
	rc := &rawConn{Conn: c}
	gotExport := false
	for range 16 {
		r, err := readOptionReply(c)
		if err != nil {
			return nil, fmt.Errorf("NBD_OPT_GO: %w", err)
		}
		if r.opt != wire.OptGo {
			return nil, fmt.Errorf("reply to option %d, want %d", r.opt, wire.OptGo)
		}
		switch {
		case r.typ&wire.RepFlagError != 0:
			return nil, fmt.Errorf("NBD_OPT_GO %q: error reply %#x: %q", name, r.typ, r.data)
		case r.typ == wire.RepInfo && len(r.data) >= 2 && be.Uint16(r.data) == wire.InfoExport:
			size, flags, ok := wire.DecodeInfoExport(r.data)
			if !ok {
				return nil, fmt.Errorf("NBD_INFO_EXPORT of %d bytes", len(r.data))
			}
			rc.size, rc.flags = size, flags
			gotExport = true
		case r.typ == wire.RepAck:
			if !gotExport {
				return nil, errors.New("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return rc, nil
		}
	}
	return nil, errors.New("NBD_OPT_GO: no ACK after 16 replies")
}

// connectRaw dials the daemon and negotiates export name.
func connectRaw(t *testing.T, sock, name string) *rawConn {
	t.Helper()
	rc, err := handshake(dialRaw(t, sock), name)
	if err != nil {
		t.Fatalf("raw handshake: %v", err)
	}
	return rc
}

// requestHeader is a 28-byte request header.
func requestHeader(flags, cmd uint16, cookie, off uint64, length uint32) []byte {
	return wire.AppendRequest(nil, wire.Request{Flags: flags, Type: cmd, Cookie: cookie, Offset: off, Length: length})
}

// send writes one request (and a WRITE's payload) and returns its cookie.
func (c *rawConn) send(flags, cmd uint16, off uint64, length uint32, payload []byte) (uint64, error) {
	c.cookie++
	c.SetDeadline(time.Now().Add(rawTimeout))
	if _, err := c.Write(append(requestHeader(flags, cmd, c.cookie, off, length), payload...)); err != nil {
		return 0, err
	}
	return c.cookie, nil
}

// reply reads one simple reply for cookie and, for a successful READ,
// its n bytes of data.
func (c *rawConn) reply(cookie uint64, n int) (errno uint32, data []byte, err error) {
	c.SetDeadline(time.Now().Add(rawTimeout))
	var h [wire.SimpleReplyLen]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return 0, nil, err
	}
	rep, ok := wire.DecodeSimpleReply(h[:])
	if !ok {
		return 0, nil, fmt.Errorf("reply magic %#x, want simple reply", wire.Magic(h[:]))
	}
	if rep.Cookie != cookie {
		return 0, nil, fmt.Errorf("reply cookie %d, want %d", rep.Cookie, cookie)
	}
	errno = rep.Error
	if errno == 0 && n > 0 {
		data = make([]byte, n)
		if _, err := io.ReadFull(c, data); err != nil {
			return errno, nil, err
		}
	}
	return errno, data, nil
}

// do sends one request and reads its reply.
func (c *rawConn) do(flags, cmd uint16, off uint64, length uint32, payload []byte) (uint32, []byte, error) {
	cookie, err := c.send(flags, cmd, off, length, payload)
	if err != nil {
		return 0, nil, err
	}
	n := 0
	if cmd == wire.CmdRead {
		n = int(length)
	}
	return c.reply(cookie, n)
}

// mustRead reads n bytes at off and fails the test on any error.
func (c *rawConn) mustRead(t *testing.T, off uint64, n int) []byte {
	t.Helper()
	errno, data, err := c.do(0, wire.CmdRead, off, uint32(n), nil)
	if err != nil || errno != 0 {
		t.Fatalf("READ %d@%d: errno %d, %v", n, off, errno, err)
	}
	return data
}

// mustWrite writes data at off and fails the test on any error.
func (c *rawConn) mustWrite(t *testing.T, off uint64, data []byte) {
	t.Helper()
	errno, _, err := c.do(0, wire.CmdWrite, off, uint32(len(data)), data)
	if err != nil || errno != 0 {
		t.Fatalf("WRITE %d@%d: errno %d, %v", len(data), off, errno, err)
	}
}

// disconnect sends NBD_CMD_DISC and closes.
func (c *rawConn) disconnect() {
	c.send(0, wire.CmdDisc, 0, 0, nil)
	c.Close()
}

// expectClosed waits (bounded) for the server to close c, reading and
// discarding anything it still sends.
func expectClosed(c net.Conn, within time.Duration) error {
	c.SetReadDeadline(time.Now().Add(within))
	buf := make([]byte, 4096)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("connection still open after %v", within)
		}
		return nil // EOF or reset: closed
	}
}
