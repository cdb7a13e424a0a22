package fxtest_helpers

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sprockets/sprocketspg/internal/pgserver"
	"github.com/sprockets/sprocketspg/internal/redact"
)

// TLSFiles are the files of a server from StartTLSServer: the CA that
// signed everything, the server's certificate and a client certificate
// for Role. Every path is under a temporary directory of the test's.
type TLSFiles struct {
	// CAFile is the CA's certificate (PEM): a client's sslrootcert, and the
	// server's ssl_ca_file, which client certificates are checked against.
	CAFile string
	// CertFile and KeyFile are the client certificate and its key (PEM,
	// the key mode 0600), whose common name is Role: a client's sslcert
	// and sslkey.
	CertFile, KeyFile string
	// Serial is the client certificate's serial number in decimal, as
	// pg_stat_ssl.client_serial shows it.
	Serial string
	// Role is the role the client certificate lets in.
	Role string
	// ServerCertFile and ServerKeyFile are the server's certificate, for
	// 127.0.0.1 and localhost (an IP and a DNS subject alternative name),
	// and its key, as the server was given them.
	ServerCertFile, ServerKeyFile string

	ca *pgserver.CA
}

// ClientCert is a client certificate and its key, in files of their own.
type ClientCert struct {
	// CertFile and KeyFile are the certificate and its key (PEM, the key
	// mode 0600).
	CertFile, KeyFile string
	// Serial is the certificate's serial number in decimal, as
	// pg_stat_ssl.client_serial shows it.
	Serial string
}

// StartTLSServer starts a PostgreSQL server of the test's own with TLS
// on, for tests of sslmode, certificate checks and client certificates.
// It makes a CA, a server certificate for 127.0.0.1 and localhost and a
// client certificate whose common name is role, all in Go and written
// under tb.TempDir(), creates role (LOGIN, no password) and sets
// pg_hba.conf to
//
//	local     all all                trust
//	host      all postgres 127.0.0.1/32 trust
//	hostssl   all all      127.0.0.1/32 cert
//	hostnossl all all      127.0.0.1/32 reject
//
// so that the superuser of AdminURL and NewDatabase connects as before,
// and every other role gets in over TLS with a client certificate of the
// CA whose common name is its name, and in no other way.
//
// The server needs local PostgreSQL server binaries, whatever
// SPROCKETSPG_TEST_POSTGRES_URL says; StartTLSServer fails tb, saying how
// to install them, without them and whenever the server cannot be
// started. The server is closed, its files removed, when tb ends.
func StartTLSServer(tb testing.TB, role string) (*TestServer, TLSFiles) {
	tb.Helper()
	ca, err := pgserver.NewCA("sprocketspg test CA")
	if err != nil {
		tb.Fatalf("fxtest_helpers: %v", err)
	}
	dir := tb.TempDir()
	files := TLSFiles{
		CAFile:         filepath.Join(dir, "ca.crt"),
		ServerCertFile: filepath.Join(dir, "server.crt"),
		ServerKeyFile:  filepath.Join(dir, "server.key"),
		Role:           role,
		ca:             ca,
	}
	writeFile(tb, files.CAFile, ca.CertPEM(), 0o644)
	server, err := ca.IssueServer("127.0.0.1", "localhost")
	if err != nil {
		tb.Fatalf("fxtest_helpers: %v", err)
	}
	writeFile(tb, files.ServerCertFile, server.CertPEM, 0o644)
	writeFile(tb, files.ServerKeyFile, server.KeyPEM, 0o600)
	client := files.NewClientCert(tb, role)
	files.CertFile, files.KeyFile, files.Serial = client.CertFile, client.KeyFile, client.Serial

	s := newSharedServer(func(ctx context.Context, logf func(string, ...any)) (*pgserver.Server, error) {
		return pgserver.Start(ctx, pgserver.WithLogf(logf), pgserver.WithOwnServer(),
			pgserver.WithTLS(files.ServerCertFile, files.ServerKeyFile, files.CAFile))
	})
	srv := &TestServer{s: s, srv: s.get(tb)}
	tb.Cleanup(func() {
		if err := s.shutdown(); err != nil {
			tb.Errorf("fxtest_helpers: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), hbaTimeout)
	defer cancel()
	if err := createRole(ctx, srv.AdminURL(), role); err != nil {
		tb.Fatalf("fxtest_helpers: %v", err)
	}
	if err := srv.SetHBA(ctx,
		"local all all trust",
		"host all postgres 127.0.0.1/32 trust",
		"hostssl all all 127.0.0.1/32 cert",
		"hostnossl all all 127.0.0.1/32 reject",
	); err != nil {
		tb.Fatalf("fxtest_helpers: %v", err)
	}
	return srv, files
}

// NewClientCert makes another client certificate of the CA, whose common
// name is role, in files of its own under tb.TempDir(): to let in another
// role, or to replace CertFile and KeyFile (os.Rename over them) in a test
// of certificate rotation. Its serial number differs from every other's.
// It fails tb when the files cannot be written.
func (f TLSFiles) NewClientCert(tb testing.TB, role string) ClientCert {
	tb.Helper()
	pair, err := f.ca.IssueClient(role)
	if err != nil {
		tb.Fatalf("fxtest_helpers: %v", err)
	}
	dir := tb.TempDir()
	c := ClientCert{
		CertFile: filepath.Join(dir, "client.crt"),
		KeyFile:  filepath.Join(dir, "client.key"),
		Serial:   pair.Serial,
	}
	writeFile(tb, c.CertFile, pair.CertPEM, 0o644)
	writeFile(tb, c.KeyFile, pair.KeyPEM, 0o600)
	return c
}

// RoleURL returns dbURL, such as the server's NewDatabase returns, with
// Role as its user, no password and no sslmode, so that the TLS settings
// of the test alone decide how it connects.
func (f TLSFiles) RoleURL(dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		return dbURL
	}
	u.User = url.User(f.Role)
	q := u.Query()
	q.Del("sslmode")
	u.RawQuery = q.Encode()
	return u.String()
}

// NewCAFile writes the certificate of a new CA, one that signed nothing
// the helpers made, under tb.TempDir() and returns its path: as an
// sslrootcert it makes the server's certificate fail verification, for
// tests of a wrong CA. It fails tb when the file cannot be written.
func NewCAFile(tb testing.TB) string {
	tb.Helper()
	ca, err := pgserver.NewCA("unrelated test CA")
	if err != nil {
		tb.Fatalf("fxtest_helpers: %v", err)
	}
	path := filepath.Join(tb.TempDir(), "other-ca.crt")
	writeFile(tb, path, ca.CertPEM(), 0o644)
	return path
}

// writeFile writes b to path with mode perm, failing tb with the path, not
// the content, when it cannot.
func writeFile(tb testing.TB, path string, b []byte, perm os.FileMode) {
	tb.Helper()
	if err := os.WriteFile(path, b, perm); err != nil {
		tb.Fatalf("fxtest_helpers: write %s: %v", path, err)
	}
}

// createRole creates role, allowed to log in, unless it exists.
func createRole(ctx context.Context, adminURL, role string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return redact.Error(fmt.Errorf("create role %q: connect to %s: %w", role, redact.ConnString(adminURL), err),
			redact.Password(adminURL))
	}
	defer func() { _ = conn.Close(context.Background()) }()
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
		return fmt.Errorf("create role %q: %w", role, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN"); err != nil {
		return fmt.Errorf("create role %q: %w", role, err)
	}
	return nil
}
