package stackdtest

// The certificates the TLS tests need, made in Go with crypto/x509 and
// written in the layout libnbd, qemu and nbdkit read from a directory:
// ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem,
// client-key.pem.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The identities of the two trusted clients: common name, and the one
// DNS name of each one's certificate.
const (
	Client1CN  = "client1"
	Client1DNS = "client1.test"
	Client2CN  = "client2"
	Client2DNS = "client2.test"
)

// File names, as libnbd's tls-certificates=DIR and qemu's
// tls-creds-x509,dir=DIR expect them.
const (
	CACert     = "ca-cert.pem"
	ServerCert = "server-cert.pem"
	ServerKey  = "server-key.pem"
	ClientCert = "client-cert.pem"
	ClientKey  = "client-key.pem"
)

// Certs is a generated set of certificates. Dir holds the CA, the server's
// pair and client 1's; each of the other client directories holds the
// trusted CA (to verify the server with) and that client's pair: client 2,
// a client whose certificate has expired, and one whose certificate an
// untrusted CA signed.
type Certs struct {
	Dir          string
	Client2Dir   string
	ExpiredDir   string
	UntrustedDir string
	// ExpiredServerDir holds a server pair that has expired, and
	// MismatchedDir a server certificate with another key's private key,
	// for the configuration checks.
	ExpiredServerDir string
	MismatchedDir    string

	// CA verifies every trusted certificate; Server is the server's
	// pair, ready for a tls.Config.
	CA     *x509.CertPool
	Server tls.Certificate
	// Client1, Client2, Expired and Untrusted are the clients' pairs;
	// ServerUsage is a client's pair whose certificate the trusted CA
	// signed for server auth only, which a server must refuse from a
	// client.
	Client1, Client2, Expired, Untrusted, ServerUsage tls.Certificate
	// ServerNotAfter is when the server's certificate expires.
	ServerNotAfter time.Time
	// Client1SPKI is the SHA-256 of client 1's SubjectPublicKeyInfo.
	Client1SPKI [32]byte
}

type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var serial int64

func newKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// sign makes a certificate of tmpl for key, signed by by (nil: self-signed).
func sign(tmpl *x509.Certificate, key *ecdsa.PrivateKey, by *issuer) *x509.Certificate {
	serial++
	tmpl.SerialNumber = big.NewInt(serial)
	parent, signer := tmpl, key
	if by != nil {
		parent, signer = by.cert, by.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		panic(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return c
}

func newCA(name string, now time.Time) *issuer {
	k := newKey()
	c := sign(&x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, k, nil)
	return &issuer{c, k}
}

func leaf(by *issuer, cn string, dns []string, ips []net.IP, usage x509.ExtKeyUsage, notBefore, notAfter time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	k := newKey()
	c := sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		DNSNames:    dns,
		IPAddresses: ips,
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}, k, by)
	return c, k
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func keyPEM(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func pair(c *x509.Certificate, k *ecdsa.PrivateKey) tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
}

// GenerateCerts makes a Certs under dir, which must exist.
func GenerateCerts(dir string) (*Certs, error) {
	now := time.Now()
	ca := newCA("stackd test CA", now)
	other := newCA("untrusted test CA", now)
	day := 24 * time.Hour

	srv, srvKey := leaf(ca, "localhost", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		x509.ExtKeyUsageServerAuth, now.Add(-time.Hour), now.Add(day))
	c1, k1 := leaf(ca, Client1CN, []string{Client1DNS}, nil, x509.ExtKeyUsageClientAuth, now.Add(-time.Hour), now.Add(day))
	c2, k2 := leaf(ca, Client2CN, []string{Client2DNS}, nil, x509.ExtKeyUsageClientAuth, now.Add(-time.Hour), now.Add(day))
	ce, ke := leaf(ca, "expired", []string{"expired.test"}, nil, x509.ExtKeyUsageClientAuth, now.Add(-3*day), now.Add(-day))
	cu, ku := leaf(other, Client1CN, []string{Client1DNS}, nil, x509.ExtKeyUsageClientAuth, now.Add(-time.Hour), now.Add(day))
	cs, ks := leaf(ca, "server-usage", []string{"server-usage.test"}, nil, x509.ExtKeyUsageServerAuth, now.Add(-time.Hour), now.Add(day))
	se, sek := leaf(ca, "localhost", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)},
		x509.ExtKeyUsageServerAuth, now.Add(-3*day), now.Add(-day))

	s := &Certs{
		Dir:              dir,
		Client2Dir:       filepath.Join(dir, "client2"),
		ExpiredDir:       filepath.Join(dir, "expired"),
		UntrustedDir:     filepath.Join(dir, "untrusted"),
		ExpiredServerDir: filepath.Join(dir, "expired-server"),
		MismatchedDir:    filepath.Join(dir, "mismatched"),
		CA:               x509.NewCertPool(),
		Server:           pair(srv, srvKey),
		Client1:          pair(c1, k1),
		Client2:          pair(c2, k2),
		Expired:          pair(ce, ke),
		Untrusted:        pair(cu, ku),
		ServerUsage:      pair(cs, ks),
		ServerNotAfter:   srv.NotAfter,
		Client1SPKI:      sha256.Sum256(c1.RawSubjectPublicKeyInfo),
	}
	s.CA.AddCert(ca.cert)
	files := map[string][]byte{
		filepath.Join(dir, CACert):                    certPEM(ca.cert),
		filepath.Join(dir, ServerCert):                certPEM(srv),
		filepath.Join(dir, ServerKey):                 keyPEM(srvKey),
		filepath.Join(dir, ClientCert):                certPEM(c1),
		filepath.Join(dir, ClientKey):                 keyPEM(k1),
		filepath.Join(s.ExpiredServerDir, ServerCert): certPEM(se),
		filepath.Join(s.ExpiredServerDir, ServerKey):  keyPEM(sek),
		filepath.Join(s.MismatchedDir, ServerCert):    certPEM(srv),
		filepath.Join(s.MismatchedDir, ServerKey):     keyPEM(k1),
	}
	for _, d := range []struct {
		dir string
		c   *x509.Certificate
		k   *ecdsa.PrivateKey
	}{{s.Client2Dir, c2, k2}, {s.ExpiredDir, ce, ke}, {s.UntrustedDir, cu, ku}} {
		files[filepath.Join(d.dir, CACert)] = certPEM(ca.cert)
		files[filepath.Join(d.dir, ClientCert)] = certPEM(d.c)
		files[filepath.Join(d.dir, ClientKey)] = keyPEM(d.k)
	}
	for path, data := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, fmt.Errorf("stackdtest: %w", err)
		}
	}
	return s, nil
}

// ServerConfig is a server configuration with s's server pair, verifying
// client certificates against s's CA when clientCA is set.
func (s *Certs) ServerConfig(clientCA bool) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{s.Server}, MinVersion: tls.VersionTLS12}
	if clientCA {
		c.ClientCAs, c.ClientAuth = s.CA, tls.RequireAndVerifyClientCert
	}
	return c
}

// ClientConfig is a client configuration that verifies the server
// against s's CA as 127.0.0.1 and presents cert (none if nil).
func (s *Certs) ClientConfig(cert *tls.Certificate) *tls.Config {
	c := &tls.Config{RootCAs: s.CA, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// MustGenerateCerts generates a set in a directory of the test's, failing
// the test if it cannot.
func MustGenerateCerts(t testing.TB) *Certs {
	t.Helper()
	cs, err := GenerateCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// ServerTLS is stackd's tls: settings, in YAML flow style, that serve the
// set's server pair and trust its CA for client certificates, in mode.
func (s *Certs) ServerTLS(mode string) string {
	return fmt.Sprintf("{cert: %q, key: %q, client_ca: %q, mode: %s}",
		filepath.Join(s.Dir, ServerCert), filepath.Join(s.Dir, ServerKey), filepath.Join(s.Dir, CACert), mode)
}
