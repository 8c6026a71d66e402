package main

import (
	"time"

	"github.com/stackd/stackd/configs"
)

// reloadTLS reads the certificate, key and client CA again (SIGHUP): new
// handshakes use them, the connections already up keep theirs, and none
// is dropped. A set that fails the checks of `stackd check` is refused,
// and the old one stays.
func (d *daemon) reloadTLS() {
	if d.tls == nil {
		d.log.Info("SIGHUP: no tls section; nothing to reload")
		return
	}
	notAfter, err := d.tls.Reload()
	if err != nil {
		d.log.Error("SIGHUP: TLS certificates not reloaded; the old ones stay", "err", err)
		return
	}
	d.metrics.SetCertificateExpiry(notAfter)
	d.log.Info("SIGHUP: TLS certificates reloaded", "expires", notAfter.UTC().Format(time.RFC3339))
}

// serverTLS loads cfg's TLS credentials, for build; nil without TLS.
func (d *daemon) serverTLS(cfg *configs.Config) (*configs.ServerTLS, error) {
	st, err := cfg.NewServerTLS()
	if err != nil || st == nil {
		return nil, err
	}
	d.metrics.SetCertificateExpiry(st.NotAfter())
	return st, nil
}
