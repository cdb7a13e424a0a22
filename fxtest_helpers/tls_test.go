package fxtest_helpers

import (
	"context"
	"crypto/x509"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// withTLS returns url with libpq's TLS parameters set; empty ones are
// left out.
func withTLS(t *testing.T, raw, mode, root, cert, key string) string {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	q := u.Query()
	for k, v := range map[string]string{"sslmode": mode, "sslrootcert": root, "sslcert": cert, "sslkey": key} {
		if v != "" {
			q.Set(k, v)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// tlsConnect connects to url and returns the connection's user and its
// client certificate's serial, or the error.
func tlsConnect(t *testing.T, raw string) (user, serial string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, raw)
	if err != nil {
		return "", "", err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	var ssl bool
	var s *string
	err = conn.QueryRow(ctx, "SELECT current_user, ssl, client_serial::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").
		Scan(&user, &ssl, &s)
	require.NoError(t, err)
	require.True(t, ssl, "a role other than postgres gets in over TLS only")
	if s != nil {
		serial = *s
	}
	return user, serial, nil
}

func TestStartTLSServer(t *testing.T) {
	srv, files := StartTLSServer(t, "app")
	assert.Equal(t, "app", files.Role)
	for _, p := range []string{files.CAFile, files.CertFile, files.KeyFile, files.ServerCertFile, files.ServerKeyFile} {
		_, err := os.Stat(p)
		require.NoError(t, err, p)
	}
	fi, err := os.Stat(files.KeyFile)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "libpq refuses a key others can read")

	db := srv.NewDatabase(t)
	roleURL := files.RoleURL(db)
	assert.NotContains(t, roleURL, "sslmode")

	t.Run("verify-full with the client certificate", func(t *testing.T) {
		for _, host := range []string{"127.0.0.1", "localhost"} {
			u, err := url.Parse(roleURL)
			require.NoError(t, err)
			u.Host = host + ":" + u.Port()
			user, serial, err := tlsConnect(t, withTLS(t, u.String(), "verify-full", files.CAFile, files.CertFile, files.KeyFile))
			require.NoError(t, err, "host %s", host)
			assert.Equal(t, "app", user)
			assert.Equal(t, files.Serial, serial)
		}
	})
	t.Run("a client certificate is needed", func(t *testing.T) {
		_, _, err := tlsConnect(t, withTLS(t, roleURL, "verify-full", files.CAFile, "", ""))
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		assert.Equal(t, "28000", pgErr.Code, "invalid authorization: %v", err)
	})
	t.Run("TLS is needed", func(t *testing.T) {
		_, _, err := tlsConnect(t, withTLS(t, roleURL, "disable", "", "", ""))
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		assert.Equal(t, "28000", pgErr.Code, "rejected by hostnossl: %v", err)
	})
	t.Run("the superuser connects as before", func(t *testing.T) {
		conn, err := pgx.Connect(context.Background(), db)
		require.NoError(t, err)
		_ = conn.Close(context.Background())
	})
	t.Run("another client certificate", func(t *testing.T) {
		c := files.NewClientCert(t, "app")
		assert.NotEqual(t, files.Serial, c.Serial)
		_, serial, err := tlsConnect(t, withTLS(t, roleURL, "verify-full", files.CAFile, c.CertFile, c.KeyFile))
		require.NoError(t, err)
		assert.Equal(t, c.Serial, serial)
	})
	t.Run("a certificate for another role does not let app in", func(t *testing.T) {
		c := files.NewClientCert(t, "someone_else")
		_, _, err := tlsConnect(t, withTLS(t, roleURL, "verify-full", files.CAFile, c.CertFile, c.KeyFile))
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		assert.Equal(t, "28000", pgErr.Code, "%v", err)
	})
	t.Run("another CA does not verify the server", func(t *testing.T) {
		_, _, err := tlsConnect(t, withTLS(t, roleURL, "verify-full", NewCAFile(t), files.CertFile, files.KeyFile))
		var unknown x509.UnknownAuthorityError
		require.ErrorAs(t, err, &unknown)
	})
}
