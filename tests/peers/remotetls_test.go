package peers

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stackd/stackd/internal/stackdtest"
)

// nbds:// legs: a front stackd whose stripe's legs reach, over TLS, a
// remote stackd that requires TLS and a client certificate, and nbdkit
// with --tls=require --tls-verify-peer; real clients verify what they
// write through the front. A leg whose CA did not sign the remote's
// certificate fails to connect, says why in the log, and the front stays
// up.

// tlsLeg is an nbd leg over TLS with the certificates of certs: its CA
// verifies the remote; its client pair is presented.
func tlsLeg(uri string, certs *stackdtest.Certs, caDir string, size string) string {
	return fmt.Sprintf("{nbd: {uri: %s, timeout: 10s%s, tls: {ca: %s, cert: %s, key: %s}}}", strconv.Quote(uri), size,
		strconv.Quote(filepath.Join(caDir, stackdtest.CACert)),
		strconv.Quote(filepath.Join(certs.Dir, stackdtest.ClientCert)), strconv.Quote(filepath.Join(certs.Dir, stackdtest.ClientKey)))
}

func TestRemoteTLS(t *testing.T) {
	need(t, "nbdkit")
	need(t, "fio")
	need(t, "nbdcopy")
	certs, err := stackdtest.GenerateCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	remote := startDaemon(t, daemonConfig{TCP: true,
		TLS: fmt.Sprintf("{cert: %q, key: %q, client_ca: %q, mode: required}", filepath.Join(certs.Dir, stackdtest.ServerCert),
			filepath.Join(certs.Dir, stackdtest.ServerKey), filepath.Join(certs.Dir, stackdtest.CACert)),
		Exports: []export{{Name: "disk0", Stack: memStack(remoteLegSize / 4)}}})
	// nbdkit reads ca-cert.pem, server-cert.pem and server-key.pem from
	// the directory, the layout testcerts writes; with --tls-verify-peer
	// it requires a client certificate signed by that CA.
	sock := filepath.Join(socketDir(t), "nbdkit-tls.sock")
	startPeer(t, sock, "nbdkit", "-f", "--exit-with-parent", "--tls=require", "--tls-certificates="+certs.Dir, "--tls-verify-peer",
		"-U", sock, "memory", fmt.Sprintf("size=%d", remoteLegSize))

	legs := tlsLeg("nbds://"+remote.TCPAddr+"/disk0", certs, certs.Dir, fmt.Sprintf(", size: %d", remoteLegSize)) + ", " +
		tlsLeg("nbds+unix:///?socket="+sock, certs, certs.Dir, "")
	front := startDaemon(t, daemonConfig{Metrics: true, Exports: []export{{Name: "default",
		Stack: "{stripe: {chunk: 64KiB, legs: [" + legs + "]}}"}}})
	uri := front.uri("default")
	size := int64(2 * remoteLegSize)
	fioVerify(t, uri, size)
	nbdcopyRoundTrip(t, uri, size, 17, "over two nbds legs")
	m := front.scrape(t)
	for i := range 2 {
		layer := fmt.Sprintf("layer=%q", "default/stripe/leg"+strconv.Itoa(i))
		if v := m["stackd_remote_connections{"+layer+`,state="connected"}`]; v < 1 {
			t.Errorf("leg %d: %d connections connected", i, v)
		}
		if v := m["stackd_remote_reconnects_total{"+layer+"}"]; v != 0 {
			t.Errorf("leg %d: %d reconnects on a healthy remote", i, v)
		}
	}

	t.Run("wrong CA", func(t *testing.T) {
		other, err := stackdtest.GenerateCerts(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		// Our client pair, verified by the remote, but another CA to
		// verify the remote with: the remote's certificate is refused.
		bad := startDaemon(t, daemonConfig{Exports: []export{{Name: "default",
			Stack: "{nbd: {uri: " + strconv.Quote("nbds://"+remote.TCPAddr+"/disk0") + fmt.Sprintf(", timeout: 1s, size: %d, tls: {ca: %q, cert: %q, key: %q}}}",
				remoteLegSize, filepath.Join(other.Dir, stackdtest.CACert),
				filepath.Join(certs.Dir, stackdtest.ClientCert), filepath.Join(certs.Dir, stackdtest.ClientKey))}}})
		waitLogged(t, bad, "certificate signed by unknown authority")
		waitLogged(t, bad, "nbd leg cannot connect")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := bad.dial(t, ctx, "default")
		if err := c.Read(ctx, 0, make([]byte, 4096)); !errors.Is(err, syscall.EIO) {
			t.Errorf("read through a leg that cannot verify its remote: %v, want EIO", err)
		}
		bad.alive()
		// Its final flush cannot reach the remote, so a SIGTERM would
		// rightly exit 1.
		c.Close()
		bad.Kill()
	})
}
