package e2e

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
)

// The kernel client over TLS: nbd-client sends STARTTLS, forks a child
// that runs the TLS session (GnuTLS, TLS 1.2 only) and relays it to one
// end of a socket pair, negotiates over the other end and hands that to
// the kernel; the kernel's requests are the same as over plain TCP. The certificates are made per
// run (stackdtest.GenerateCerts); the client's travel into the guest in a
// second cpio archive appended to the cached initramfs, so that
// prepare.sh's cache holds no key and needs no rebuild.

// guestTLSDir is where the guest finds the client's certificate, key and
// CA (init.sh's stackd.tls=).
const guestTLSDir = "/lib/e2e/tls"

// tlsHostname is the name nbd-client checks the server's certificate
// against (-tlshostname): one of stackdtest.GenerateCerts' server names. nbd-client 3.24
// verifies the server (chain, validity, name) only when given both
// -cacertfile and -tlshostname; with either missing it trusts any
// certificate, so naming 10.0.2.2, the address the guest dials, in the
// certificate would not make it check anything.
const tlsHostname = "localhost"

// tlsStack is defaultStack that only client 1's certificate may open.
func tlsStack(dir string) string {
	s := defaultStack(dir)
	head := "  - name: default\n"
	if !strings.HasPrefix(s, head) {
		panic("defaultStack no longer starts with " + head)
	}
	return head + "    allow: [{client_cert: {dns: " + stackdtest.Client1DNS + "}}]\n" + s[len(head):]
}

type tlsSetup struct {
	cs *stackdtest.Certs
}

func newTLSSetup(t *testing.T) *tlsSetup {
	t.Helper()
	cs := stackdtest.MustGenerateCerts(t)
	return &tlsSetup{cs: cs}
}

// serverYAML is stackd's tls: section: TLS before any option (mode
// required, like nbd-server's FORCEDTLS), and a client certificate the
// test CA signed.
func (s *tlsSetup) serverYAML() string {
	return "tls: " + s.cs.ServerTLS("required") + "\n"
}

// uri is the export over TLS for the host's tools, as client 1, the
// server verified against the CA.
func (s *tlsSetup) uri(addr, export string) string {
	return "nbds://" + addr + "/" + export + "?tls-certificates=" + s.cs.Dir + "&tls-verify-peer=true"
}

// initrd writes the guest's initramfs: base (prepare.sh's) followed by a
// gzip-compressed cpio archive of guestTLSDir. The kernel unpacks
// concatenated archives in turn, each compressed or not.
func (s *tlsSetup) initrd(t *testing.T, base string) string {
	t.Helper()
	var files []cpioEntry
	dir := strings.TrimPrefix(guestTLSDir, "/")
	files = append(files, cpioEntry{name: dir, mode: 0o040700})
	for _, name := range []string{stackdtest.CACert, stackdtest.ClientCert, stackdtest.ClientKey} {
		data, err := os.ReadFile(filepath.Join(s.cs.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, cpioEntry{name: dir + "/" + name, mode: 0o100600, data: data})
	}
	var extra bytes.Buffer
	zw := gzip.NewWriter(&extra)
	if err := writeCpio(zw, files); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(base)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	path := filepath.Join(t.TempDir(), "initrd-tls.cpio.gz")
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(out, in)
	if err == nil {
		_, err = out.Write(extra.Bytes())
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// guestArgs are init.sh's kernel command-line words for TLS.
func (s *tlsSetup) guestArgs() string {
	return " stackd.tls=" + guestTLSDir + " stackd.tlshostname=" + tlsHostname
}

// checkLog checks, from stackd's log, what the tap cannot see inside
// TLS: the guest's conns connections were TLS with client 1's
// certificate, each ended with NBD_CMD_DISC; and the one attempt the
// guest made with a name the server's certificate lacks ended in the TLS
// handshake (nbd-client's GnuTLS hangs up without an alert when it
// refuses the certificate, so stackd sees EOF there), not after it. Call
// it before any host tool connects.
func (s *tlsSetup) checkLog(t *testing.T, d *daemon, conns int) {
	t.Helper()
	var opened []map[string]any
	refused := 0
	for _, r := range d.Log().Records() {
		switch r["msg"] {
		case "nbd: connection opened":
			opened = append(opened, r)
		case "nbd: handshake failed":
			if r["reason"] == "tls" {
				refused++
				t.Logf("stackd: the refused TLS handshake: %v", r["err"])
			} else {
				t.Errorf("a handshake failed other than in TLS: %v", r)
			}
		}
	}
	if refused != 1 {
		t.Errorf("stackd logged %d TLS handshake failures, want 1 (nbd-client refusing a certificate without the name it was given)", refused)
	}
	if len(opened) != conns {
		t.Fatalf("stackd opened %d connections for the guest, want %d", len(opened), conns)
	}
	ids := map[string]bool{}
	for _, r := range opened {
		if r["tls"] != true || r["client_cert"] != stackdtest.Client1CN || r["export"] != "default" {
			t.Errorf("connection opened with tls=%v client_cert=%v export=%v, want tls=true client_cert=%s export=default",
				r["tls"], r["client_cert"], r["export"], stackdtest.Client1CN)
		}
		ids[fmt.Sprint(r["conn"])] = true
	}
	// The guest has powered off, after nbd-client -d; stackd logs the
	// close once its reader and writer are done.
	closed := map[string]string{}
	stackdtest.WaitFor(t, "stackd to log the guest's connections closed", 10*time.Second, func() bool {
		for _, r := range d.Log().Records() {
			if id := fmt.Sprint(r["conn"]); r["msg"] == "nbd: connection closed" && ids[id] {
				closed[id] = fmt.Sprint(r["reason"])
			}
		}
		return len(closed) == len(ids)
	})
	for id, reason := range closed {
		if reason != "disconnect" {
			t.Errorf("connection %s closed with reason %s, want disconnect (NBD_CMD_DISC)", id, reason)
		}
	}
}

// cpioEntry is one member of a newc ("070701") cpio archive, as the
// kernel's initramfs unpacker reads it.
type cpioEntry struct {
	name string
	mode uint32 // file type and permissions, as in st_mode
	data []byte
}

// writeCpio writes entries as a newc archive, owned by root, then the
// trailer. Each header is 110 bytes: the magic and thirteen 8-digit hex
// fields; the name (with its NUL) and the data are each padded to a
// multiple of 4 bytes.
func writeCpio(w io.Writer, entries []cpioEntry) error {
	pad := func(n int) []byte { return make([]byte, (4-n%4)%4) }
	var b bytes.Buffer
	put := func(ino int, e cpioEntry) {
		nlink := 1
		if e.mode&0o170000 == 0o040000 {
			nlink = 2
		}
		// ino mode uid gid nlink mtime filesize devmajor devminor
		// rdevmajor rdevminor namesize check
		fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, 0, 0, len(e.name)+1, 0)
		b.WriteString(e.name)
		b.WriteByte(0)
		b.Write(pad(110 + len(e.name) + 1))
		b.Write(e.data)
		b.Write(pad(len(e.data)))
	}
	for i, e := range entries {
		put(i+1, e)
	}
	put(0, cpioEntry{name: "TRAILER!!!"})
	_, err := w.Write(b.Bytes())
	return err
}
