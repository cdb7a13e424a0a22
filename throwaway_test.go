package sprocketspg_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/throwaway"
)

// observedLogger returns a logger that writes to the test log and records
// every entry at info level and above.
func observedLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	return zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core())), logs
}

// throwawayApp builds an fx application of Module and opts, logging to
// logger, without starting it.
func throwawayApp(t *testing.T, logger *zap.Logger, opts ...fx.Option) *fxtest.App {
	t.Helper()
	return fxtest.New(t, append([]fx.Option{fx.Supply(logger), fx.NopLogger}, opts...)...)
}

// neverStart is a start function that fails the test when called.
func neverStart(t *testing.T, calls *atomic.Int32) func(context.Context) (string, func() error, error) {
	return func(context.Context) (string, func() error, error) {
		calls.Add(1)
		t.Error("a throwaway server was started although a URL is set")
		return "", nil, errors.New("not expected")
	}
}

func TestThrowawayWhenUnsetStartsAndRemovesServer(t *testing.T) {
	t.Setenv(sprocketspg.EnvURL, "")
	logger, logs := observedLogger(t)
	var pool *sprocketspg.Pool
	app := throwawayApp(t, logger,
		sprocketspg.Module,
		sprocketspg.ThrowawayWhenUnset(throwaway.Starter(throwaway.WithLogf(t.Logf))),
		fx.Populate(&pool),
	)
	require.NoError(t, app.Err(), "a throwaway server needs PostgreSQL's server binaries (apt-get install postgresql) or a Docker engine")
	app.RequireStart()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			app.RequireStop()
		}
	})

	ctx := ctxT(t)
	res, err := pool.Execute(ctx, "SELECT 40 + 2 AS answer")
	require.NoError(t, err)
	assert.EqualValues(t, 42, res.Row["answer"])
	_, err = pool.Execute(ctx, "CREATE TABLE scratch (v int)")
	require.NoError(t, err, "a server of the app's own, where it may create tables")

	warns := logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("throwaway").All()
	require.Len(t, warns, 1, "one warning says a throwaway server was started")
	w := warns[0]
	for _, want := range []string{sprocketspg.EnvURL + " is unset", "throwaway PostgreSQL", "deleted", "production"} {
		assert.Contains(t, w.Message, want)
	}
	fields := w.ContextMap()
	url, _ := fields["url"].(string)
	assert.True(t, strings.HasPrefix(url, "postgres://postgres@"), "url field: %q", url)
	assert.Equal(t, url, pool.Config().URL, "the pool uses the throwaway server")

	// A local server's files are on this machine; a Docker one's are not.
	var dir string
	var dataDir string
	require.NoError(t, pool.QueryRow(ctx, "SHOW data_directory").Scan(&dataDir))
	if _, err := os.Stat(dataDir); err == nil {
		dir = filepath.Dir(dataDir)
	}

	app.RequireStop()
	stopped = true
	if dir != "" {
		assert.NoDirExists(t, dir, "the throwaway server's files outlive the app")
	}
	conn, err := tryConnectURL(url)
	if err == nil {
		_ = conn.Close(context.Background())
	}
	assert.Error(t, err, "the throwaway server still answers after the app stopped")
	assert.Equal(t, 1, logs.FilterMessage("throwaway PostgreSQL stopped and its data deleted").Len())
}

func TestThrowawayWhenUnsetLeavesSetURLAlone(t *testing.T) {
	t.Setenv(sprocketspg.EnvURL, fxtest_helpers.NewDatabase(t))
	logger, logs := observedLogger(t)
	var calls atomic.Int32
	var pool *sprocketspg.Pool
	app := throwawayApp(t, logger,
		sprocketspg.Module,
		sprocketspg.ThrowawayWhenUnset(neverStart(t, &calls)),
		fx.Populate(&pool),
	)
	app.RequireStart()
	defer app.RequireStop()

	res, err := pool.Execute(ctxT(t), "SELECT 1 AS one")
	require.NoError(t, err)
	assert.EqualValues(t, 1, res.Row["one"])
	assert.Zero(t, calls.Load())
	assert.Zero(t, logs.FilterMessageSnippet("throwaway").Len(), "nothing about a throwaway server is logged")
}

// TestThrowawayWhenUnsetSeesURLSetInCode: a URL set in code by the
// application's own decorator counts as set.
func TestThrowawayWhenUnsetSeesURLSetInCode(t *testing.T) {
	t.Setenv(sprocketspg.EnvURL, "")
	url := fxtest_helpers.NewDatabase(t)
	logger, _ := observedLogger(t)
	var calls atomic.Int32
	var pool *sprocketspg.Pool
	app := throwawayApp(t, logger,
		fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
			c.URL = url
			return c
		}),
		sprocketspg.Module,
		sprocketspg.ThrowawayWhenUnset(neverStart(t, &calls)),
		fx.Populate(&pool),
	)
	app.RequireStart()
	defer app.RequireStop()

	_, err := pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err)
	assert.Zero(t, calls.Load())
}

func TestThrowawayWhenUnsetStartFailureFailsNew(t *testing.T) {
	t.Setenv(sprocketspg.EnvURL, "")
	logger, _ := observedLogger(t)
	app := fx.New(
		fx.Supply(logger),
		fx.NopLogger,
		sprocketspg.Module,
		sprocketspg.ThrowawayWhenUnset(func(context.Context) (string, func() error, error) {
			return "", nil, errors.New("no PostgreSQL server binaries found and no Docker engine answered")
		}),
	)
	err := app.Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "POSTGRES_URL is unset and no throwaway PostgreSQL could be started")
	assert.Contains(t, err.Error(), "no PostgreSQL server binaries found")
}

// TestThrowawayWhenUnsetChecksConfigFirst: a setting that NewPool would
// refuse fails fx.New before a server is started, since nothing would stop
// that server.
func TestThrowawayWhenUnsetChecksConfigFirst(t *testing.T) {
	t.Setenv(sprocketspg.EnvURL, "")
	t.Setenv(sprocketspg.EnvMaxPoolSize, "2")
	t.Setenv(sprocketspg.EnvMinPoolSize, "5")
	logger, _ := observedLogger(t)
	var calls atomic.Int32
	app := fx.New(
		fx.Supply(logger),
		fx.NopLogger,
		sprocketspg.Module,
		sprocketspg.ThrowawayWhenUnset(func(context.Context) (string, func() error, error) {
			calls.Add(1)
			return "", nil, errors.New("not expected")
		}),
	)
	err := app.Err()
	require.Error(t, err)
	assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	assert.Contains(t, err.Error(), sprocketspg.EnvMinPoolSize)
	assert.NotContains(t, err.Error(), "is required", "the URL is not what is wrong")
	assert.Zero(t, calls.Load(), "no server started for a Config that cannot work")
}

// TestThrowawayWhenUnsetChecksTLSFirst: a POSTGRES_SSLMODE that the
// server's URL (sslmode=disable) contradicts fails fx.New before a server
// is started.
func TestThrowawayWhenUnsetChecksTLSFirst(t *testing.T) {
	t.Setenv(sprocketspg.EnvURL, "")
	t.Setenv(sprocketspg.EnvSSLMode, "require")
	logger, _ := observedLogger(t)
	var calls atomic.Int32
	app := fx.New(
		fx.Supply(logger),
		fx.NopLogger,
		sprocketspg.Module,
		sprocketspg.ThrowawayWhenUnset(func(context.Context) (string, func() error, error) {
			calls.Add(1)
			return "", nil, errors.New("not expected")
		}),
	)
	err := app.Err()
	require.Error(t, err)
	assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	assert.Contains(t, err.Error(), sprocketspg.EnvSSLMode)
	assert.Zero(t, calls.Load(), "no server started for a Config that cannot work")
}

// TestThrowawayWhenUnsetStopFailureFailsStop: an error removing the server
// is reported by Stop, after the pool has closed.
func TestThrowawayWhenUnsetStopFailureFailsStop(t *testing.T) {
	t.Setenv(sprocketspg.EnvURL, "")
	url := fxtest_helpers.NewDatabase(t)
	logger, logs := observedLogger(t)
	var pool *sprocketspg.Pool
	app := fx.New(
		fx.Supply(logger),
		fx.NopLogger,
		sprocketspg.Module,
		sprocketspg.ThrowawayWhenUnset(func(context.Context) (string, func() error, error) {
			return url, func() error {
				if logs.FilterMessage("closed postgres pool").Len() != 1 {
					t.Error("the server is removed before the pool has closed")
				}
				return errors.New("remove files: permission denied")
			}, nil
		}),
		fx.Populate(&pool),
	)
	require.NoError(t, app.Err())
	ctx := ctxT(t)
	require.NoError(t, app.Start(ctx))
	err := app.Stop(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "stop throwaway PostgreSQL: remove files: permission denied")
	assert.Equal(t, 1, logs.FilterLevelExact(zapcore.WarnLevel).Len())
}

func tryConnectURL(url string) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return pgx.Connect(ctx, url)
}

// TestThrowawayWhenUnsetStopsServerWhenStartFails: when the application
// fails to start, fx undoes what started, and the server goes too.
func TestThrowawayWhenUnsetStopsServerWhenStartFails(t *testing.T) {
	t.Setenv(sprocketspg.EnvURL, "")
	t.Setenv(sprocketspg.EnvConnectionTimeout, "1")
	logger, _ := observedLogger(t)
	var stops atomic.Int32
	app := fx.New(
		fx.Supply(logger),
		fx.NopLogger,
		sprocketspg.Module,
		sprocketspg.ThrowawayWhenUnset(func(context.Context) (string, func() error, error) {
			// Nothing listens on port 1, so the pool cannot connect.
			return "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable", func() error {
				stops.Add(1)
				return nil
			}, nil
		}),
	)
	require.NoError(t, app.Err())
	require.Error(t, app.Start(ctxT(t)))
	assert.Equal(t, int32(1), stops.Load(), "the server is removed when start-up fails")
}
