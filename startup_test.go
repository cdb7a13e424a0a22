package sprocketspg_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// authServer starts a server of the test's own whose pg_hba.conf checks
// the password of role app (right-Pa55), trusts the superuser and role
// ghost (which does not exist), and has no entry for anyone else. It
// returns the server and a URL of app with its right password to a
// database of it.
func authServer(t *testing.T) (*fxtest_helpers.TestServer, string) {
	t.Helper()
	srv, appURL := passwordServer(t, "right-Pa55", "host all ghost 127.0.0.1/32 trust")
	u, err := url.Parse(appURL)
	require.NoError(t, err)
	u.User = url.UserPassword("app", "right-Pa55")
	return srv, u.String()
}

// passwordServer starts a server of the test's own that checks the
// password of role app, trusts the superuser and allows what more says,
// and returns the server and a URL of app, without the password, to a
// database of it.
func passwordServer(t *testing.T, password string, more ...string) (*fxtest_helpers.TestServer, string) {
	t.Helper()
	srv := fxtest_helpers.StartServer(t)
	dbURL := srv.NewDatabase(t)
	admin := adminConn(t, srv.AdminURL())
	_, err := admin.Exec(ctxT(t), "CREATE ROLE app LOGIN PASSWORD '"+password+"'")
	require.NoError(t, err)
	require.NoError(t, srv.SetHBA(ctxT(t), append([]string{
		"local all all trust",
		"host all postgres 127.0.0.1/32 trust",
		"host all app 127.0.0.1/32 scram-sha-256",
	}, more...)...))
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	u.User = url.User("app")
	return srv, u.String()
}

// withURLParts returns raw with its user, password and database changed
// ("" keeps the password out).
func withURLParts(t *testing.T, raw, user, password, database string) string {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	if password == "" {
		u.User = url.User(user)
	} else {
		u.User = url.UserPassword(user, password)
	}
	u.Path = "/" + database
	return u.String()
}

func TestStartFailsAtOnceWhenTheServerRejects(t *testing.T) {
	_, good := authServer(t)
	u, err := url.Parse(good)
	require.NoError(t, err)
	database := strings.TrimPrefix(u.Path, "/")

	// The right password works, so what follows fails for the reason each
	// case names and no other.
	pool := newPoolAt(t, good, nil)
	pool.Close()

	tests := []struct {
		name     string
		url      string
		code     string
		user, db string
		words    string
	}{
		{"wrong password", withURLParts(t, good, "app", "wrong-Pa55", database),
			"28P01", "app", database, `password authentication failed for user "app"`},
		{"database does not exist", withURLParts(t, good, "app", "right-Pa55", "no_such_db"),
			"3D000", "app", "no_such_db", `database "no_such_db" does not exist`},
		{"role does not exist", withURLParts(t, good, "ghost", "", database),
			"28000", "ghost", database, `role "ghost" does not exist`},
		{"no pg_hba.conf entry", withURLParts(t, good, "stranger", "", database),
			"28000", "stranger", database, `no pg_hba.conf entry`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(tt.url)
			cfg.ConnectionTimeout = 10 * time.Second
			// sslmode=prefer, libpq's default, makes pgx try TLS first, which
			// the test server refuses: that line must not lead the error.
			cfg.URL = strings.Replace(cfg.URL, "sslmode=disable", "sslmode=prefer", 1)
			core, logs := observer.New(zapcore.DebugLevel)

			began := time.Now()
			_, err := sprocketspg.New(context.Background(), cfg, sprocketspg.WithLogger(zap.New(core)))
			elapsed := time.Since(began)
			require.Error(t, err)
			t.Logf("after %s: %v", elapsed.Round(time.Millisecond), err)
			assert.Less(t, elapsed, time.Second, "a rejection is not retried")
			assert.Zero(t, logs.FilterMessage("postgres not reachable yet, retrying").Len(), "no retry")

			assert.ErrorIs(t, err, sprocketspg.ErrConnectionRejected)
			assert.NotErrorIs(t, err, sprocketspg.ErrConnectTimeout)
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			assert.Equal(t, tt.code, pgErr.Code)
			msg := err.Error()
			for _, want := range []string{
				fmt.Sprintf("user %q", tt.user),
				fmt.Sprintf("database %q", tt.db),
				"127.0.0.1:" + u.Port(),
				"SQLSTATE " + tt.code,
				tt.words,
			} {
				assert.Contains(t, msg, want)
			}
			assert.NotContains(t, msg, "tls")
			assert.NotContains(t, msg, "not reachable")
			assert.NotContains(t, msg, "Pa55")
			assert.NotContains(t, msg, "\n", "one line")
		})
	}

	t.Run("through fx", func(t *testing.T) {
		cfg := testConfig(withURLParts(t, good, "app", "wrong-Pa55", database))
		began := time.Now()
		app := fx.New(fx.NopLogger, sprocketspg.Module, fx.Replace(cfg))
		err := app.Start(ctxT(t))
		require.Error(t, err)
		assert.Less(t, time.Since(began), time.Second)
		assert.ErrorIs(t, err, sprocketspg.ErrConnectionRejected)
		assert.Contains(t, err.Error(), "SQLSTATE 28P01")
	})
}

// A server that refuses connections is the common state of one that is
// still starting: start keeps trying until it answers.
func TestStartRetriesARefusedConnection(t *testing.T) {
	srv := fxtest_helpers.StartServer(t)
	dbURL := srv.NewDatabase(t)
	require.NoError(t, srv.Stop(ctxT(t)))
	go func() {
		time.Sleep(700 * time.Millisecond)
		assert.NoError(t, srv.Start(context.Background()))
	}()
	cfg := testConfig(dbURL)
	cfg.ConnectionTimeout = 20 * time.Second
	pool, err := sprocketspg.New(ctxT(t), cfg)
	require.NoError(t, err)
	pool.Close()
}

// databaseName reads the database from a URL without connecting to it,
// which would add a session.
func databaseName(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	return strings.TrimPrefix(u.Path, "/")
}

// sessionCounter counts the sessions connected to a database, from a
// connection to another one.
func sessionCounter(t *testing.T) func(database string) int {
	t.Helper()
	admin := adminConn(t, fxtest_helpers.Server(t).AdminURL())
	return func(database string) int {
		var n int
		require.NoError(t, admin.QueryRow(context.Background(),
			"SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
			database).Scan(&n))
		return n
	}
}

func TestStartOpensExactlyMinPoolSize(t *testing.T) {
	backends := sessionCounter(t)
	for _, min := range []int{0, 1, 3} {
		t.Run(fmt.Sprintf("min %d", min), func(t *testing.T) {
			dbURL := fxtest_helpers.NewDatabase(t)
			database := databaseName(t, dbURL)
			pool := newPoolAt(t, dbURL, func(c *sprocketspg.Config) {
				c.MinPoolSize = min
				c.MaxPoolSize = 5
			})
			// The session that checked the server for MinPoolSize 0 may
			// take a moment to end on the server.
			require.Eventually(t, func() bool { return backends(database) == min }, 2*time.Second, 10*time.Millisecond,
				"want %d sessions", min)
			// Nothing opens more in the background.
			time.Sleep(300 * time.Millisecond)
			assert.Equal(t, min, backends(database))
			assert.Equal(t, int32(min), pool.Stat().TotalConns())

			_, err := pool.Execute(ctxT(t), "SELECT 1")
			require.NoError(t, err)
			assert.Equal(t, max(min, 1), backends(database), "a query needs one connection")
		})
	}
	t.Run("through fx", func(t *testing.T) {
		dbURL := fxtest_helpers.NewDatabase(t)
		database := databaseName(t, dbURL)
		cfg := testConfig(dbURL)
		cfg.MinPoolSize = 2
		fxtest_helpers.NewAppWithDatabase(t, dbURL, fx.Replace(cfg))
		time.Sleep(300 * time.Millisecond)
		assert.Equal(t, 2, backends(database))
	})
}

// The pool keeps topping up to MinPoolSize after start, as pgxpool does:
// the refusal at start applies to its first fill only.
func TestMinPoolSizeIsKeptAfterStart(t *testing.T) {
	backends := sessionCounter(t)
	dbURL := fxtest_helpers.NewDatabase(t)
	database := databaseName(t, dbURL)
	pool := newPoolAt(t, dbURL, func(c *sprocketspg.Config) { c.MinPoolSize = 2 },
		sprocketspg.WithPoolConfig(func(pc *pgxpool.Config) { pc.HealthCheckPeriod = 50 * time.Millisecond }))
	require.Equal(t, 2, backends(database))

	// A connection taken out of the pool and closed, as one that died
	// would be.
	c, err := pool.Acquire(ctxT(t))
	require.NoError(t, err)
	require.NoError(t, c.Hijack().Close(ctxT(t)))
	require.Eventually(t, func() bool { return pool.Stat().TotalConns() == 2 && backends(database) == 2 },
		5*time.Second, 20*time.Millisecond, "the pool opens a connection to get back to MinPoolSize")
}
