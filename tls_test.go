package sprocketspg_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// tlsRole is the role the TLS tests connect as, with its client
// certificate.
const tlsRole = "tls_app"

// sslQuery reports how the connection that runs it came in.
const sslQuery = `SELECT current_user AS "user", ssl, client_serial::text AS serial
	FROM pg_stat_ssl WHERE pid = pg_backend_pid()`

// tlsEnv is a TLS server of the test's own, a database on it, the URL of
// that database for tlsRole (no sslmode of its own) and copies of the
// client certificate files that the test may replace.
type tlsEnv struct {
	files    fxtest_helpers.TLSFiles
	url      string
	certFile string
	keyFile  string
	// watch holds the private keys (PEM) that must never be printed, and
	// checks every entry of the test's logger for them (secrets_test.go).
	watch *secretLog
}

func newTLSEnv(t *testing.T) *tlsEnv {
	t.Helper()
	srv, files := fxtest_helpers.StartTLSServer(t, tlsRole)
	e := &tlsEnv{files: files, url: files.RoleURL(srv.NewDatabase(t)), watch: newSecretLog(t)}
	dir := t.TempDir()
	e.certFile, e.keyFile = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	copyFile(t, files.CertFile, e.certFile, 0o644)
	copyFile(t, files.KeyFile, e.keyFile, 0o600)
	for _, k := range []string{files.KeyFile, files.ServerKeyFile} {
		b, err := os.ReadFile(k)
		require.NoError(t, err)
		e.watch.add(string(b))
	}
	return e
}

// logger logs to the test and to e.watch, which the test's end checks
// for key material.
func (e *tlsEnv) logger() *zap.Logger { return e.watch.logger }

// rotate replaces the client certificate files with a new pair, each
// renamed into place as a secret store would, and returns its serial.
func (e *tlsEnv) rotate(t *testing.T) string {
	t.Helper()
	c := e.files.NewClientCert(t, tlsRole)
	require.NoError(t, os.Rename(c.CertFile, e.certFile))
	require.NoError(t, os.Rename(c.KeyFile, e.keyFile))
	key, err := os.ReadFile(e.keyFile)
	require.NoError(t, err)
	e.watch.add(string(key))
	return c.Serial
}

// config is a Config for e's database with every TLS setting of the
// test: verify-full against the test CA and the client certificate.
func (e *tlsEnv) config() sprocketspg.Config {
	cfg := testConfig(e.url)
	cfg.ConnectionTimeout = 3 * time.Second
	cfg.SSLMode = "verify-full"
	cfg.SSLRootCert = e.files.CAFile
	cfg.SSLCert = e.certFile
	cfg.SSLKey = e.keyFile
	return cfg
}

// connectTLS is sprocketspg.New with e's logger.
func (e *tlsEnv) connectTLS(t *testing.T, cfg sprocketspg.Config) (*sprocketspg.Pool, error) {
	t.Helper()
	pool, err := sprocketspg.New(ctxT(t), cfg, sprocketspg.WithLogger(e.logger()))
	if err != nil {
		e.watch.noSecretIn(err)
		return nil, err
	}
	t.Cleanup(pool.Close)
	return pool, nil
}

// sslOf returns the user, whether TLS is on and the client certificate's
// serial of a connection of pool.
func sslOf(t *testing.T, pool *sprocketspg.Pool) (user string, ssl bool, serial string) {
	t.Helper()
	res, err := pool.Execute(ctxT(t), sslQuery)
	require.NoError(t, err)
	require.NotNil(t, res.Row)
	serial, _ = res.Row["serial"].(string)
	return res.Row["user"].(string), res.Row["ssl"].(bool), serial
}

func TestTLSVerifyFullAgainstTheTestCA(t *testing.T) {
	e := newTLSEnv(t)
	for _, host := range []string{"127.0.0.1", "localhost"} {
		cfg := e.config()
		cfg.URL = strings.Replace(e.url, "127.0.0.1", host, 1)
		pool, err := e.connectTLS(t, cfg)
		require.NoError(t, err, "verify-full as %s", host)
		user, ssl, serial := sslOf(t, pool)
		assert.Equal(t, tlsRole, user)
		assert.True(t, ssl)
		assert.Equal(t, e.files.Serial, serial)
	}
}

func TestTLSWrongCAFailsClearly(t *testing.T) {
	e := newTLSEnv(t)
	cfg := e.config()
	cfg.SSLRootCert = fxtest_helpers.NewCAFile(t)
	cfg.ConnectionTimeout = 10 * time.Second
	began := time.Now()
	_, err := e.connectTLS(t, cfg)
	require.Error(t, err)
	t.Logf("the error: %v", err)
	assert.Less(t, time.Since(began), time.Second, "an untrusted server fails start at once, not retried")
	assert.NotErrorIs(t, err, sprocketspg.ErrConnectTimeout)
	msg := err.Error()
	assert.Contains(t, msg, "verify the server certificate of 127.0.0.1")
	assert.Contains(t, msg, `POSTGRES_SSLROOTCERT "`+cfg.SSLRootCert+`"`)
	assert.Contains(t, msg, "certificate signed by unknown authority")
}

func TestTLSClientCertificateAuthentication(t *testing.T) {
	e := newTLSEnv(t)

	cfg := e.config()
	cfg.SSLCert, cfg.SSLKey = "", ""
	_, err := e.connectTLS(t, cfg)
	require.Error(t, err, "pg_hba.conf asks for a certificate")
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "28000", pgErr.Code, "%v", err)

	cfg = e.config()
	cfg.SSLMode = "disable"
	_, err = e.connectTLS(t, cfg)
	require.Error(t, err, "hostnossl rejects plaintext")

	pool, err := e.connectTLS(t, e.config())
	require.NoError(t, err)
	user, ssl, _ := sslOf(t, pool)
	assert.Equal(t, tlsRole, user, "the certificate's common name is the role")
	assert.True(t, ssl)

	// The files may come from the URL too, read for each connection all
	// the same.
	cfg = testConfig(e.url + "?sslmode=verify-full&sslrootcert=" + e.files.CAFile +
		"&sslcert=" + e.certFile + "&sslkey=" + e.keyFile)
	pool, err = e.connectTLS(t, cfg)
	require.NoError(t, err)
	_, _, before := sslOf(t, pool)
	assert.Equal(t, e.files.Serial, before)
	assertNewConnectionsSee(t, pool, e.rotate(t))
}

func TestTLSRotatedClientCertificateReachesNewConnections(t *testing.T) {
	e := newTLSEnv(t)
	pool, err := e.connectTLS(t, e.config())
	require.NoError(t, err)
	_, _, serial := sslOf(t, pool)
	require.Equal(t, e.files.Serial, serial)
	assertNewConnectionsSee(t, pool, e.rotate(t))
}

// assertNewConnectionsSee checks that a connection opened now presents
// the client certificate with serial want, while one opened before keeps
// its own.
func assertNewConnectionsSee(t *testing.T, pool *sprocketspg.Pool, want string) {
	t.Helper()
	ctx := ctxT(t)
	// Holding the pool's connection makes the next acquire open one.
	held, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer held.Release()
	var old string
	require.NoError(t, held.QueryRow(ctx, "SELECT client_serial::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&old))
	assert.NotEqual(t, want, old, "a connection opened before the rotation")

	fresh, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer fresh.Release()
	var got string
	require.NoError(t, fresh.QueryRow(ctx, "SELECT client_serial::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&got))
	assert.Equal(t, want, got, "a connection opened after the rotation, without a restart")
}

func TestTLSRefusesAURLThatSaysOtherwise(t *testing.T) {
	e := newTLSEnv(t)
	cfg := e.config()
	cfg.URL = e.url + "?sslmode=disable"
	_, err := e.connectTLS(t, cfg)
	require.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	assert.Contains(t, err.Error(), `invalid POSTGRES_SSLMODE "verify-full": POSTGRES_URL's sslmode says "disable"`)
}

// ordersPools is a constructor's view of an app with the orders
// instance.
type ordersPools struct {
	fx.In

	Orders *sprocketspg.Pool `name:"orders"`
}

// setOrdersTLS sets the orders instance's variables to e's database and
// TLS files.
func (e *tlsEnv) setOrdersTLS(t *testing.T) {
	t.Setenv("ORDERS_POSTGRES_URL", e.url)
	t.Setenv("ORDERS_POSTGRES_CONNECTION_TIMEOUT", "3s")
	t.Setenv("ORDERS_POSTGRES_SSLMODE", "verify-full")
	t.Setenv("ORDERS_POSTGRES_SSLROOTCERT", e.files.CAFile)
	t.Setenv("ORDERS_POSTGRES_SSLCERT", e.certFile)
	t.Setenv("ORDERS_POSTGRES_SSLKEY", e.keyFile)
}

// ordersApp starts an app with Named("orders") alone, configured from the
// environment, and returns its start error.
func (e *tlsEnv) ordersApp(t *testing.T, pools *ordersPools) error {
	t.Helper()
	logger := e.logger()
	// fx.New rather than fxtest.New, which fails the test on a refused
	// configuration that the test expects.
	app := fx.New(fx.Supply(logger), fx.WithLogger(func() fxevent.Logger { return &fxevent.ZapLogger{Logger: logger} }),
		sprocketspg.Named("orders"), fx.Populate(pools))
	if err := app.Err(); err != nil {
		e.watch.noSecretIn(err)
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := app.Start(ctx); err != nil {
		e.watch.noSecretIn(err)
		return err
	}
	t.Cleanup(func() { assert.NoError(t, app.Stop(context.Background())) })
	return nil
}

func TestTLSNamedInstanceFromPrefixedVariables(t *testing.T) {
	e := newTLSEnv(t)
	e.setOrdersTLS(t)
	// The default instance's variables are not the orders instance's.
	t.Setenv(sprocketspg.EnvSSLRootCert, "/nonexistent/ca.crt")

	var pools ordersPools
	require.NoError(t, e.ordersApp(t, &pools))
	user, ssl, serial := sslOf(t, pools.Orders)
	assert.Equal(t, tlsRole, user)
	assert.True(t, ssl)
	assert.Equal(t, e.files.Serial, serial)
	assertNewConnectionsSee(t, pools.Orders, e.rotate(t))
}

func TestTLSNamedInstanceWrongCA(t *testing.T) {
	e := newTLSEnv(t)
	e.setOrdersTLS(t)
	other := fxtest_helpers.NewCAFile(t)
	t.Setenv("ORDERS_POSTGRES_SSLROOTCERT", other)
	err := e.ordersApp(t, &ordersPools{})
	require.Error(t, err)
	e.watch.noSecretIn(err)
	assert.Contains(t, err.Error(), `ORDERS_POSTGRES_SSLROOTCERT "`+other+`"`)
	assert.Contains(t, err.Error(), "certificate signed by unknown authority")
}

func TestTLSNamedInstanceRefusesAURLThatSaysOtherwise(t *testing.T) {
	e := newTLSEnv(t)
	e.setOrdersTLS(t)
	t.Setenv("ORDERS_POSTGRES_URL", e.url+"?sslmode=require")
	err := e.ordersApp(t, &ordersPools{})
	require.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	assert.Contains(t, err.Error(), `invalid ORDERS_POSTGRES_SSLMODE "verify-full": ORDERS_POSTGRES_URL's sslmode says "require"`)
}

func TestTLSNamedInstanceMissingFileNamesTheVariable(t *testing.T) {
	e := newTLSEnv(t)
	e.setOrdersTLS(t)
	missing := filepath.Join(t.TempDir(), "gone.crt")
	t.Setenv("ORDERS_POSTGRES_SSLCERT", missing)
	err := e.ordersApp(t, &ordersPools{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `read ORDERS_POSTGRES_SSLCERT "`+missing+`": no such file or directory`)
}

// copyFile copies src to dst with mode perm.
func copyFile(t *testing.T, src, dst string, perm os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(dst, b, perm))
}

// syncBuffer is a bytes.Buffer safe for the pool's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
