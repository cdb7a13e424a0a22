package pgserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeTLSFiles makes a CA and a server certificate for 127.0.0.1 and
// localhost, writes them under a temporary directory and returns the CA
// and the paths.
func writeTLSFiles(t *testing.T) (ca *CA, certFile, keyFile, caFile string) {
	t.Helper()
	ca, err := NewCA("pgserver test CA")
	require.NoError(t, err)
	pair, err := ca.IssueServer("127.0.0.1", "localhost")
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile, caFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), filepath.Join(dir, "ca.crt")
	require.NoError(t, os.WriteFile(certFile, pair.CertPEM, 0o644))
	require.NoError(t, os.WriteFile(keyFile, pair.KeyPEM, 0o600))
	require.NoError(t, os.WriteFile(caFile, ca.CertPEM(), 0o644))
	return ca, certFile, keyFile, caFile
}

// tlsURL is the server's URL with TLS required and the server's
// certificate checked against caFile, for host (the URL's own when "").
func tlsURL(t *testing.T, s *Server, host, caFile string) string {
	t.Helper()
	u, err := url.Parse(s.URL())
	require.NoError(t, err)
	if host != "" {
		u.Host = host + ":" + u.Port()
	}
	q := u.Query()
	q.Set("sslmode", "verify-full")
	q.Set("sslrootcert", caFile)
	u.RawQuery = q.Encode()
	return u.String()
}

func TestLocalWithTLSServesVerifiedTLS(t *testing.T) {
	_, certFile, keyFile, caFile := writeTLSFiles(t)
	s := startLocalT(t, WithTLS(certFile, keyFile, caFile))
	ctx := testCtx(t)

	for _, host := range []string{"", "localhost"} {
		var ssl bool
		var version string
		require.NoError(t, connect(t, tlsURL(t, s, host, caFile)).QueryRow(ctx,
			"SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl, &version),
			"verify-full against the CA, host %q", host)
		assert.True(t, ssl, "host %q", host)
		assert.NotEmpty(t, version)
	}
	// The server's own URL still works without TLS: pg_hba.conf decides.
	var ssl bool
	require.NoError(t, connect(t, s.URL()).QueryRow(ctx,
		"SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl))
	assert.False(t, ssl)

	// The server reads copies that belong to its user, the key private.
	l := s.b.(*localServer)
	var settings struct{ cert, key, ca string }
	require.NoError(t, connect(t, s.URL()).QueryRow(ctx,
		"SELECT current_setting('ssl_cert_file'), current_setting('ssl_key_file'), current_setting('ssl_ca_file')").
		Scan(&settings.cert, &settings.key, &settings.ca))
	for _, p := range []string{settings.cert, settings.key, settings.ca} {
		assert.Equal(t, filepath.Join(l.dir, "tls"), filepath.Dir(p))
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), p)
		assert.EqualValues(t, l.user.uid(), fi.Sys().(*syscall.Stat_t).Uid, p)
	}
}

func TestLocalWithTLSPresentsTheGivenCertificate(t *testing.T) {
	_, certFile, keyFile, caFile := writeTLSFiles(t)
	other, err := NewCA("another CA")
	require.NoError(t, err)
	s := startLocalT(t, WithTLS(certFile, keyFile, caFile))

	otherFile := filepath.Join(t.TempDir(), "other.crt")
	require.NoError(t, os.WriteFile(otherFile, other.CertPEM(), 0o644))
	conn, err := pgx.Connect(testCtx(t), tlsURL(t, s, "", otherFile))
	if err == nil {
		_ = conn.Close(context.Background())
	}
	var unknown x509.UnknownAuthorityError
	require.ErrorAs(t, err, &unknown, "a CA that did not sign the server's certificate")
}

func TestWithTLSMissingFileFailsStart(t *testing.T) {
	_, certFile, _, caFile := writeTLSFiles(t)
	dir, err := findBinDir()
	require.NoError(t, err, "these tests need local PostgreSQL server binaries")
	missing := filepath.Join(t.TempDir(), "no-such.key")
	_, err = startLocal(testCtx(t), newConfig([]Option{WithTLS(certFile, missing, caFile)}), dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ssl_key_file")
	assert.Contains(t, err.Error(), missing)
}

func TestStartWithTLSRefusesAServerItDoesNotStart(t *testing.T) {
	_, certFile, keyFile, caFile := writeTLSFiles(t)
	t.Setenv(EnvURL, "postgres://postgres@127.0.0.1:1/postgres")
	_, err := Start(testCtx(t), WithTLS(certFile, keyFile, caFile))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "WithOwnServer")
}

func TestCAIssuesCertificatesThatVerify(t *testing.T) {
	ca, err := NewCA("test CA")
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(ca.CertPEM()))
	parse := func(p KeyPair) *x509.Certificate {
		block, _ := pem.Decode(p.CertPEM)
		require.NotNil(t, block)
		c, err := x509.ParseCertificate(block.Bytes)
		require.NoError(t, err)
		_, err = tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		require.NoError(t, err, "the key fits the certificate")
		assert.Equal(t, c.SerialNumber.String(), p.Serial)
		return c
	}

	server, err := ca.IssueServer("127.0.0.1", "localhost")
	require.NoError(t, err)
	sc := parse(server)
	for _, name := range []string{"127.0.0.1", "localhost"} {
		_, err := sc.Verify(x509.VerifyOptions{Roots: roots, DNSName: name})
		assert.NoError(t, err, name)
	}
	_, err = sc.Verify(x509.VerifyOptions{Roots: roots, DNSName: "example.com"})
	assert.Error(t, err)

	a, err := ca.IssueClient("app")
	require.NoError(t, err)
	b, err := ca.IssueClient("app")
	require.NoError(t, err)
	ac := parse(a)
	assert.Equal(t, "app", ac.Subject.CommonName)
	_, err = ac.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	assert.NoError(t, err)
	assert.NotEqual(t, a.Serial, b.Serial)

	_, err = ca.IssueServer()
	assert.Error(t, err)
}
