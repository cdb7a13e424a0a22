package pgserver

import (
	"fmt"
	"os"
	"path/filepath"
)

// serverTLS names the files of a server's TLS: its certificate and key,
// and the CA that client certificates are checked against.
type serverTLS struct {
	certFile, keyFile, caFile string
}

// WithTLS turns TLS on in a server that Start starts from local binaries:
// ssl=on, with certFile and keyFile (PEM) as the server's certificate and
// key and caFile, when not empty, as the CA that client certificates must
// be signed by (ssl_ca_file), which pg_hba.conf's cert method needs.
//
// The files are copied into the server's run directory, owned by the
// server's user with mode 0600, because PostgreSQL refuses a key that
// others can read and, when the caller is root, runs as nobody, who may
// not be able to read the originals. Connections without TLS are still
// accepted; pg_hba.conf (hostssl, hostnossl) decides who needs it.
//
// Start fails with WithTLS when the server would not be started from
// local binaries: a server of SPROCKETSPG_TEST_POSTGRES_URL is used as it
// is (add WithOwnServer), and a Docker server is not supported.
func WithTLS(certFile, keyFile, caFile string) Option {
	return func(c *config) { c.tls = &serverTLS{certFile: certFile, keyFile: keyFile, caFile: caFile} }
}

// installTLS copies t's files into the run directory and adds the
// settings that make the server use them.
func (l *localServer) installTLS(t *serverTLS) error {
	dir := filepath.Join(l.dir, "tls")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("create TLS directory: %w", err)
	}
	if err := l.user.chown(dir); err != nil {
		return err
	}
	files := []struct{ setting, src, name string }{
		{"ssl_cert_file", t.certFile, "server.crt"},
		{"ssl_key_file", t.keyFile, "server.key"},
		{"ssl_ca_file", t.caFile, "ca.crt"},
	}
	settings := []string{"ssl=on"}
	for _, f := range files {
		if f.src == "" {
			if f.setting == "ssl_ca_file" {
				continue
			}
			return fmt.Errorf("turn TLS on: no file given for %s", f.setting)
		}
		dst := filepath.Join(dir, f.name)
		if err := copyOwned(f.src, dst, l.user); err != nil {
			return fmt.Errorf("turn TLS on: %s: %w", f.setting, err)
		}
		settings = append(settings, f.setting+"="+dst)
	}
	l.settings = append(l.settings, settings...)
	return nil
}

// copyOwned copies src to dst with mode 0600 and gives dst to u. Only the
// paths appear in its errors, never what the file holds.
func copyOwned(src, dst string, u runUser) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return u.chown(dst)
}
