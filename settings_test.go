package sprocketspg_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/txn"
)

func TestApplicationNameIsWhatTheServerShows(t *testing.T) {
	show := func(t *testing.T, pool *sprocketspg.Pool) string {
		t.Helper()
		res, err := pool.Execute(ctxT(t), "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
		require.NoError(t, err)
		return res.Row["application_name"].(string)
	}
	t.Run("set", func(t *testing.T) {
		pool, _ := newPool(t, func(c *sprocketspg.Config) { c.ApplicationName = "orders-api" })
		assert.Equal(t, "orders-api", show(t, pool))
	})
	t.Run("SERVICE", func(t *testing.T) {
		t.Setenv("SERVICE", "billing")
		pool, _ := newPool(t, nil)
		assert.Equal(t, "billing", show(t, pool))
	})
	t.Run("executable", func(t *testing.T) {
		t.Setenv("SERVICE", "")
		pool, _ := newPool(t, nil)
		assert.Equal(t, filepath.Base(os.Args[0]), show(t, pool))
	})
	t.Run("URL", func(t *testing.T) {
		t.Setenv("SERVICE", "billing")
		pool := newPoolAt(t, fxtest_helpers.NewDatabase(t)+"&application_name=from-url", nil)
		assert.Equal(t, "from-url", show(t, pool))
	})
	t.Run("named instance", func(t *testing.T) {
		t.Setenv("ORDERS_POSTGRES_APPLICATION_NAME", "orders-worker")
		var pools twoPools
		fxtest_helpers.NewApp(t, fxtest_helpers.NamedDatabase(t, "orders"), fx.Populate(&pools))
		assert.Equal(t, "orders-worker", show(t, pools.Orders))
		assert.NotEqual(t, "orders-worker", show(t, pools.Default))
	})
}

func TestSearchPathApplies(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(
		`CREATE SCHEMA app; CREATE TABLE app.things (n int); INSERT INTO app.things VALUES (7);`))
	pool := newPoolAt(t, url, func(c *sprocketspg.Config) { c.SearchPath = "app, public" })
	res, err := pool.Execute(ctxT(t), "SELECT n FROM things")
	require.NoError(t, err, "things is found in app")
	assert.EqualValues(t, 7, res.Row["n"])
}

func TestAcquireTimeoutFailsFast(t *testing.T) {
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.MinPoolSize, c.MaxPoolSize = 1, 1
		c.AcquireTimeout = 100 * time.Millisecond
	})
	held, err := pool.Acquire(ctxT(t))
	require.NoError(t, err)
	defer held.Release()

	calls := map[string]func(ctx context.Context) error{
		"Execute": func(ctx context.Context) error {
			_, err := pool.Execute(ctx, "SELECT 1")
			return err
		},
		"Callproc": func(ctx context.Context) error {
			_, err := pool.Callproc(ctx, "now")
			return err
		},
		"Transaction": func(ctx context.Context) error {
			return pool.Transaction(ctx, func(*sprocketspg.Tx) error { return nil }, txn.Timeout(time.Second))
		},
		"Reader": func(ctx context.Context) error {
			_, err := pool.Reader().Execute(ctx, "SELECT 1")
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			began := time.Now()
			err := call(ctxT(t))
			elapsed := time.Since(began)
			require.Error(t, err)
			t.Logf("after %s: %v", elapsed.Round(time.Millisecond), err)
			assert.ErrorIs(t, err, sprocketspg.ErrPoolExhausted)
			assert.GreaterOrEqual(t, elapsed, 90*time.Millisecond)
			assert.Less(t, elapsed, time.Second)
			assert.Contains(t, err.Error(), "all 1 connections in use")
			p, ok := sprocketspg.ClassifyError(err)
			require.True(t, ok)
			assert.Equal(t, http.StatusServiceUnavailable, p.Status)
		})
	}
	held.Release()
	_, err = pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err, "a free connection is taken at once")

	// The caller's own deadline, shorter than the acquire timeout, is the
	// caller's.
	held2, err := pool.Acquire(ctxT(t))
	require.NoError(t, err)
	defer held2.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = pool.Execute(ctx, "SELECT 1")
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.False(t, errors.Is(err, sprocketspg.ErrPoolExhausted))
}

func TestIdleSettingsReachThePool(t *testing.T) {
	backends := sessionCounter(t)
	url := fxtest_helpers.NewDatabase(t)
	database := databaseName(t, url)
	pool := newPoolAt(t, url, func(c *sprocketspg.Config) {
		c.MinPoolSize = 0
		c.MinIdleConns = 2
		c.HealthCheckPeriod = 100 * time.Millisecond
		c.MaxConnIdleTime = 300 * time.Millisecond
	})
	require.Eventually(t, func() bool { return backends(database) == 2 }, 5*time.Second, 20*time.Millisecond,
		"MinIdleConns connections are kept ready")

	// A burst opens more; those above MinIdleConns go once idle for longer
	// than MaxConnIdleTime.
	conns := make([]*pgxpool.Conn, 4)
	for i := range conns {
		c, err := pool.Acquire(ctxT(t))
		require.NoError(t, err)
		conns[i] = c
	}
	for _, c := range conns {
		c.Release()
	}
	require.GreaterOrEqual(t, backends(database), 4)
	require.Eventually(t, func() bool { return backends(database) == 2 }, 5*time.Second, 20*time.Millisecond,
		"idle connections beyond MinIdleConns are closed after MaxConnIdleTime")
}

func TestPoolSettingsAreChecked(t *testing.T) {
	for variable, change := range map[string]func(*sprocketspg.Config){
		sprocketspg.EnvMaxConnIdleTime:   func(c *sprocketspg.Config) { c.MaxConnIdleTime = -time.Second },
		sprocketspg.EnvHealthCheckPeriod: func(c *sprocketspg.Config) { c.HealthCheckPeriod = -time.Second },
		sprocketspg.EnvAcquireTimeout:    func(c *sprocketspg.Config) { c.AcquireTimeout = -time.Second },
		sprocketspg.EnvMinIdleConns:      func(c *sprocketspg.Config) { c.MinIdleConns = 99 },
	} {
		cfg := testConfig("postgres://u@127.0.0.1:1/db")
		change(&cfg)
		err := cfg.Validate()
		require.Error(t, err, variable)
		assert.Contains(t, err.Error(), variable)
	}
	t.Setenv("ORDERS_POSTGRES_ACQUIRE_TIMEOUT", "-1")
	_, err := sprocketspg.LoadConfigPrefix("ORDERS_")
	require.Error(t, err)
	assert.Contains(t, err.Error(), `invalid ORDERS_POSTGRES_ACQUIRE_TIMEOUT "-1"`)
}

// A provider of credentials is asked for every new connection.
func TestWithCredentialsIsCalledPerConnection(t *testing.T) {
	var calls atomic.Int32
	url := fxtest_helpers.NewDatabase(t)
	pool := newPoolAt(t, url, func(c *sprocketspg.Config) { c.MinPoolSize, c.MaxPoolSize = 2, 3 },
		sprocketspg.WithCredentials(func(ctx context.Context) (string, string, error) {
			calls.Add(1)
			_, hasDeadline := ctx.Deadline()
			if !hasDeadline {
				return "", "", errors.New("no deadline: the call is not bounded")
			}
			return "postgres", "token-" + time.Now().String(), nil
		}))
	assert.EqualValues(t, 2, calls.Load(), "one call per connection opened at start")
	conns := make([]*pgxpool.Conn, 3)
	for i := range conns {
		c, err := pool.Acquire(ctxT(t))
		require.NoError(t, err)
		conns[i] = c
	}
	for _, c := range conns {
		c.Release()
	}
	assert.EqualValues(t, 3, calls.Load(), "and one for the connection opened later")

	// A failing provider fails start at once, saying so, not as an
	// unreachable server.
	began := time.Now()
	cfg := testConfig(url)
	cfg.ConnectionTimeout = 10 * time.Second
	_, err := sprocketspg.New(ctxT(t), cfg, sprocketspg.WithCredentials(func(context.Context) (string, string, error) {
		return "", "", errors.New("the token service said 403")
	}))
	require.Error(t, err)
	assert.Less(t, time.Since(began), time.Second)
	assert.ErrorIs(t, err, sprocketspg.ErrCredentials)
	assert.NotErrorIs(t, err, sprocketspg.ErrConnectTimeout)
	assert.Contains(t, err.Error(), "the token service said 403")
}
