package sprocketspg_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

func TestModuleLifecycle(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	var pool *sprocketspg.Pool
	app := fxtest.New(t,
		sprocketspg.Module,
		fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config { c.URL = url; return c }),
		fx.Populate(&pool),
	)
	require.NotNil(t, pool)

	// Built but not started: no I/O has happened and nothing is reported.
	assert.False(t, pool.IsConnected())
	st := pool.Status(ctxT(t))
	assert.False(t, st.Available)
	assert.Zero(t, st.PoolSize)
	assert.Zero(t, st.PoolFree)
	assert.ErrorIs(t, st.Err, sprocketspg.ErrNotConnected)
	_, err := pool.Execute(ctxT(t), "SELECT 1")
	assert.ErrorIs(t, err, sprocketspg.ErrNotConnected)
	assert.True(t, sprocketspg.IsConnectionError(err))

	app.RequireStart()
	assert.True(t, pool.IsConnected())
	st = pool.Status(ctxT(t))
	assert.True(t, st.Available)
	assert.NoError(t, st.Err)
	assert.GreaterOrEqual(t, st.PoolSize, 1)
	assert.GreaterOrEqual(t, st.PoolFree, 1)
	assert.LessOrEqual(t, st.PoolFree, st.PoolSize)
	res, err := pool.Execute(ctxT(t), "SELECT 1 AS one")
	require.NoError(t, err)
	assert.Equal(t, int32(1), res.Row["one"])

	app.RequireStop()
	assert.False(t, pool.IsConnected())
	st = pool.Status(ctxT(t))
	assert.False(t, st.Available)
	_, err = pool.Execute(ctxT(t), "SELECT 1")
	assert.ErrorIs(t, err, sprocketspg.ErrNotConnected)
	_, err = pool.Callproc(ctxT(t), "now")
	assert.ErrorIs(t, err, sprocketspg.ErrNotConnected)
}

func TestMissingURLFailsStart(t *testing.T) {
	t.Setenv(sprocketspg.EnvURL, "")
	app := fx.New(fx.NopLogger, sprocketspg.Module)
	err := app.Start(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "POSTGRES_URL")
	assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
}

func TestBadEnvironmentFailsStart(t *testing.T) {
	t.Setenv(sprocketspg.EnvURL, "postgresql://u:hunter2-secret@localhost/db")
	t.Setenv(sprocketspg.EnvMaxPoolSize, "lots")
	err := fx.New(fx.NopLogger, sprocketspg.Module).Start(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), `POSTGRES_MAX_POOL_SIZE "lots"`)
	assert.NotContains(t, err.Error(), "hunter2-secret")
}

func TestConfigOverrides(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, "postgresql://nobody@127.0.0.1:1/unused")
	t.Setenv(sprocketspg.EnvMaxPoolSize, "7")
	t.Setenv(sprocketspg.EnvQueryTimeout, "12")

	t.Run("decorate keeps the environment's other values", func(t *testing.T) {
		var pool *sprocketspg.Pool
		app := fxtest.New(t, sprocketspg.Module,
			fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
				c.URL = url
				c.MinPoolSize = 2
				return c
			}),
			fx.Populate(&pool))
		app.RequireStart()
		defer app.RequireStop()
		cfg := pool.Config()
		assert.Equal(t, url, cfg.URL)
		assert.Equal(t, 7, cfg.MaxPoolSize)
		assert.Equal(t, 2, cfg.MinPoolSize)
		assert.Equal(t, 12*time.Second, cfg.QueryTimeout)
		res, err := pool.Execute(ctxT(t), "SELECT current_setting('statement_timeout') AS st")
		require.NoError(t, err)
		assert.Equal(t, "12s", res.Row["st"])
	})

	t.Run("replace wins over the environment", func(t *testing.T) {
		cfg := testConfig(url)
		cfg.MaxPoolSize = 3
		var pool *sprocketspg.Pool
		app := fxtest.New(t, sprocketspg.Module, fx.Replace(cfg), fx.Populate(&pool))
		app.RequireStart()
		defer app.RequireStop()
		assert.Equal(t, cfg, pool.Config())
	})

	t.Run("fxtest_helpers.NewApp composes with a caller's decorator", func(t *testing.T) {
		pool := appPool(t, fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
			c.MinPoolSize = 3
			return c
		}))
		assert.Equal(t, 3, pool.Config().MinPoolSize)
		assert.GreaterOrEqual(t, pool.Stat().TotalConns(), int32(3))
	})
}

func TestProvideOptions(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	pool := appPool(t, sprocketspg.ProvideOptions(
		sprocketspg.WithPoolConfig(func(pc *pgxpool.Config) {
			mu.Lock()
			seen = append(seen, "first")
			mu.Unlock()
			pc.ConnConfig.RuntimeParams["application_name"] = "from-group"
		}),
	))
	res, err := pool.Execute(ctxT(t), "SELECT current_setting('application_name') AS app")
	require.NoError(t, err)
	assert.Equal(t, "from-group", res.Row["app"])
	assert.Equal(t, []string{"first"}, seen)
}

func TestMinPoolSizeOpenAfterStart(t *testing.T) {
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.MinPoolSize = 4
		c.MaxPoolSize = 6
	})
	assert.GreaterOrEqual(t, pool.Stat().TotalConns(), int32(4))
	assert.GreaterOrEqual(t, pool.Status(ctxT(t)).PoolSize, 4)
}

// freeClosedPort returns a loopback port nothing listens on.
func freeClosedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return port
}

// blackHole accepts connections and never answers.
func blackHole(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().(*net.TCPAddr).Port
}

func TestUnreachableServerFailsStartInTime(t *testing.T) {
	const password = "hunter2-Secret"
	for name, port := range map[string]func(*testing.T) int{
		"refused":    freeClosedPort,
		"black hole": blackHole,
	} {
		t.Run(name, func(t *testing.T) {
			p := port(t)
			core, logs := observer.New(zapcore.DebugLevel)
			cfg := testConfig(fmt.Sprintf("postgresql://app:%s@127.0.0.1:%d/appdb?sslmode=disable", password, p))
			cfg.ConnectionTimeout = 2 * time.Second
			var pool *sprocketspg.Pool
			app := fx.New(fx.NopLogger, sprocketspg.Module, fx.Replace(cfg), fx.Supply(zap.New(core)), fx.Populate(&pool))
			require.NoError(t, app.Err())

			began := time.Now()
			err := app.Start(context.Background())
			elapsed := time.Since(began)
			require.Error(t, err)
			assert.Less(t, elapsed, cfg.ConnectionTimeout+time.Second)
			assert.Contains(t, err.Error(), fmt.Sprintf("127.0.0.1:%d", p))
			assert.NotContains(t, err.Error(), password)
			assert.True(t, sprocketspg.IsConnectionError(err), "%v", err)
			assert.False(t, pool.IsConnected())
			for _, entry := range logs.All() {
				assert.NotContains(t, entryText(entry), password)
			}
		})
	}
}

// entryText renders a log entry with all its fields.
func entryText(e observer.LoggedEntry) string {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range e.Context {
		f.AddTo(enc)
	}
	return fmt.Sprint(e.Message, " ", enc.Fields)
}

func TestLogsNeverShowPassword(t *testing.T) {
	const password = "pw-S3cret!x"
	url := fxtest_helpers.NewDatabase(t)
	admin := adminConn(t, url)
	role := "app_" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "_")
	_, err := admin.Exec(ctxT(t), "DROP ROLE IF EXISTS "+role)
	require.NoError(t, err)
	_, err = admin.Exec(ctxT(t), fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", role, password))
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+role) })

	core, logs := observer.New(zapcore.DebugLevel)
	cfg := testConfig(withUserInfo(t, url, role, password))
	pool, err := sprocketspg.New(ctxT(t), cfg, sprocketspg.WithLogger(zap.New(core)))
	require.NoError(t, err)

	ctx := sprocketspg.WithMetricName(ctxT(t), "who-am-i")
	res, err := pool.Execute(ctx, "SELECT current_user AS u")
	require.NoError(t, err)
	assert.Equal(t, role, res.Row["u"])
	_, err = pool.Execute(ctx, "SELECT * FROM missing_table")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), password)
	_, err = pool.Callproc(sprocketspg.WithMetricName(ctxT(t), "clock"), "now")
	require.NoError(t, err)
	pool.Close()

	all := logs.All()
	require.NotEmpty(t, all)
	for _, e := range all {
		assert.NotContains(t, entryText(e), password)
	}
	connected := logs.FilterMessage("connected to postgres").All()
	require.Len(t, connected, 1)
	assert.Contains(t, entryText(connected[0]), ":xxxxx@")

	queries := logs.FilterMessage("postgres query").All()
	require.Len(t, queries, 3)
	names := []string{}
	for _, q := range queries {
		fields := q.ContextMap()
		names = append(names, fields["metric_name"].(string))
		assert.Contains(t, fields, "duration")
		assert.Equal(t, zapcore.DebugLevel, q.Level)
	}
	assert.Equal(t, []string{"who-am-i", "who-am-i", "clock"}, names)
}

// withUserInfo puts user and password into a postgres:// URL.
func withUserInfo(t *testing.T, raw, user, password string) string {
	t.Helper()
	i := strings.Index(raw, "://")
	require.Positive(t, i)
	rest := raw[i+3:]
	if at := strings.Index(rest, "@"); at >= 0 {
		rest = rest[at+1:]
	}
	return raw[:i+3] + user + ":" + strings.ReplaceAll(password, "!", "%21") + "@" + rest
}

func TestStopTimesOutWithQueriesInFlight(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	var pool *sprocketspg.Pool
	app := fx.New(fx.NopLogger, sprocketspg.Module, fx.Replace(testConfig(url)), fx.Populate(&pool))
	require.NoError(t, app.Start(ctxT(t)))

	queryDone := make(chan error, 1)
	go func() {
		_, err := pool.Execute(context.Background(), "SELECT pg_sleep(1)")
		queryDone <- err
	}()
	require.Eventually(t, func() bool { return pool.Stat().AcquiredConns() == 1 }, 5*time.Second, 5*time.Millisecond)

	stopCtx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	began := time.Now()
	err := app.Stop(stopCtx)
	require.Error(t, err)
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
	assert.Less(t, time.Since(began), time.Second)
	assert.False(t, pool.IsConnected(), "not connected from the moment stop begins")

	// Called directly, Shutdown says what it was waiting for.
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShutdown()
	err = pool.Shutdown(shutdownCtx)
	require.Error(t, err)
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
	assert.Contains(t, err.Error(), "1 connections still in use")

	// The in-flight query still completes.
	assert.NoError(t, <-queryDone)
	assertNoBackends(t, url)
}

func TestStopWaitsForInFlightQueries(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	var pool *sprocketspg.Pool
	app := fx.New(fx.NopLogger, sprocketspg.Module, fx.Replace(testConfig(url)), fx.Populate(&pool))
	require.NoError(t, app.Start(ctxT(t)))

	const n = 5
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			_, err := pool.Execute(context.Background(), "SELECT pg_sleep(0.3)")
			errs <- err
		}()
	}
	require.Eventually(t, func() bool { return pool.Stat().AcquiredConns() == n }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, app.Stop(ctxT(t)))
	for i := 0; i < n; i++ {
		assert.NoError(t, <-errs)
	}
	assertNoBackends(t, url)
}

// assertNoBackends checks on the server that no connection but the
// checker's own is left in the database at url. The server is asked rather
// than pgxpool's Stat: puddle v2.2.3 keeps counting a connection that was
// being opened when the pool closed, although it closes it.
func assertNoBackends(t *testing.T, url string) {
	t.Helper()
	admin := adminConn(t, url)
	var n int
	assert.Eventually(t, func() bool {
		err := admin.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&n)
		return err == nil && n == 0
	}, 5*time.Second, 10*time.Millisecond, "backends left: %d", n)
}

func TestNoGoroutineLeftAfterStop(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t) // starts the shared server first
	ignore := goleak.IgnoreCurrent()

	var pool *sprocketspg.Pool
	app := fx.New(fx.NopLogger, sprocketspg.Module, fx.Replace(testConfig(url)), fx.Populate(&pool))
	require.NoError(t, app.Start(ctxT(t)))
	for i := 0; i < 10; i++ {
		_, err := pool.Execute(ctxT(t), "SELECT $1::int", i)
		require.NoError(t, err)
	}
	// A cancelled query starts pgx's cancel-request machinery too.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := pool.Execute(ctx, "SELECT pg_sleep(2)")
	cancel()
	require.Error(t, err)
	require.NoError(t, app.Stop(ctxT(t)))

	goleak.VerifyNone(t, ignore)
}

func TestNewWithoutFx(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	pool, err := sprocketspg.New(ctxT(t), testConfig(url))
	require.NoError(t, err)
	assert.True(t, pool.IsConnected())
	_, err = pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err)
	pool.Close()
	assert.False(t, pool.IsConnected())
	pool.Close() // a second close is harmless

	_, err = sprocketspg.New(ctxT(t), sprocketspg.Config{URL: url})
	require.Error(t, err)
	assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
}
