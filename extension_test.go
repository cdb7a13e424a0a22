package sprocketspg_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/instance"
)

// extEvents records what extensions did, in order, from any goroutine.
type extEvents struct {
	mu   sync.Mutex
	list []string
}

func (e *extEvents) add(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, fmt.Sprintf(format, args...))
}

func (e *extEvents) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.list...)
}

// recordingExt is an extension called name whose Start and Stop record
// themselves in ev and return startErr and stopErr.
func recordingExt(ev *extEvents, name string, startErr, stopErr error) instance.Extension {
	return instance.Extension{
		Name: name,
		Start: func(context.Context, instance.Handle) error {
			ev.add("start %s", name)
			return startErr
		},
		Stop: func(context.Context) error {
			ev.add("stop %s", name)
			return stopErr
		},
	}
}

// uniqueAppName is an application_name no other pool of any test uses, so
// that the server's sessions of one pool can be counted.
func uniqueAppName(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("ext_%d_%d", os.Getpid(), time.Now().UnixNano())
}

// backendsOf counts the server's sessions whose application_name is app.
func backendsOf(t *testing.T, app string) func() int {
	t.Helper()
	admin := adminConn(t, fxtest_helpers.Server(t).AdminURL())
	return func() int {
		var n int
		require.NoError(t, admin.QueryRow(ctxT(t),
			"SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app).Scan(&n))
		return n
	}
}

// selectOne runs SELECT 1 on pool.
func selectOne(ctx context.Context, pool *pgxpool.Pool) error {
	if pool == nil {
		return errors.New("no pool")
	}
	var one int
	if err := pool.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return err
	}
	if one != 1 {
		return fmt.Errorf("SELECT 1 gave %d", one)
	}
	return nil
}

func TestExtensionsStartAfterConnectInOrder(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	app := uniqueAppName(t)
	backends := backendsOf(t, app)
	var ev extEvents
	ext := func(name string) instance.Extension {
		return instance.Extension{
			Name: name,
			Start: func(ctx context.Context, h instance.Handle) error {
				pool := h.Pool()
				if pool == nil {
					ev.add("start %s: no pool", name)
					return nil
				}
				if err := selectOne(ctx, pool); err != nil {
					ev.add("start %s: %v", name, err)
					return nil
				}
				// The pool's connections are the instance's, open already.
				ev.add("start %s: name %q, logger %t, backends %d", name, h.Name(), h.Logger() != nil, backends())
				return nil
			},
		}
	}
	pool := newPoolAt(t, url, func(c *sprocketspg.Config) {
		c.ApplicationName = app
		c.MinPoolSize = 2
	}, sprocketspg.WithExtension(ext("first")), sprocketspg.WithExtension(ext("second")),
		sprocketspg.WithExtension(instance.Extension{Name: "no hooks"}),
		sprocketspg.WithExtension(ext("third")))

	assert.Equal(t, []string{
		`start first: name "", logger true, backends 2`,
		`start second: name "", logger true, backends 2`,
		`start third: name "", logger true, backends 2`,
	}, ev.all())
	assert.True(t, pool.IsConnected(), "connected once New returns")
	assert.Equal(t, "", pool.Handle().Name())
	assert.Same(t, pool.Pool, pool.Handle().Pool(), "the handle's pool is the embedded one")
}

func TestExtensionStartFailure(t *testing.T) {
	errBoom := errors.New("boom in the extension")
	errStop := errors.New("stop of the earlier extension failed")
	for _, tc := range []struct {
		name    string
		stopErr error
	}{
		{"earlier stop succeeds", nil},
		{"earlier stop fails too", errStop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := uniqueAppName(t)
			backends := backendsOf(t, app)
			url := fxtest_helpers.NewDatabase(t)
			var ev extEvents
			var seenBackends atomic.Int64
			earlier := recordingExt(&ev, "earlier", nil, tc.stopErr)
			failing := instance.Extension{
				Name: "failing-ext",
				Start: func(ctx context.Context, h instance.Handle) error {
					seenBackends.Store(int64(backends()))
					ev.add("start failing-ext")
					return fmt.Errorf("wrapped: %w", errBoom)
				},
				Stop: func(context.Context) error {
					ev.add("stop failing-ext")
					return nil
				},
			}
			later := recordingExt(&ev, "later", nil, nil)
			cfg := testConfig(url)
			cfg.ApplicationName = app
			cfg.MinPoolSize = 3
			pool, err := sprocketspg.New(ctxT(t), cfg, sprocketspg.WithExtension(earlier),
				sprocketspg.WithExtension(failing), sprocketspg.WithExtension(later))
			require.Error(t, err)
			assert.Nil(t, pool)
			assert.ErrorIs(t, err, errBoom)
			assert.Contains(t, err.Error(), "failing-ext")
			assert.Contains(t, err.Error(), "boom in the extension")
			if tc.stopErr != nil {
				assert.ErrorIs(t, err, errStop, "the earlier extension's stop error is kept")
				assert.Contains(t, err.Error(), "earlier")
			}
			assert.Equal(t, []string{"start earlier", "start failing-ext", "stop earlier"}, ev.all(),
				"the earlier extension is stopped; the failing one and the later one are not")
			assert.EqualValues(t, 3, seenBackends.Load(), "the pool was connected while the extension started")
			assert.Eventually(t, func() bool { return backends() == 0 }, 5*time.Second, 10*time.Millisecond,
				"the pool's connections are closed")
		})
	}
}

func TestExtensionStartErrorHasNoPassword(t *testing.T) {
	const secret = "ext-Secret-4711"
	url := fxtest_helpers.NewDatabase(t)
	// The test server trusts local connections, so the password is only
	// carried along, which is all an error could leak.
	withPassword := withURLParts(t, url, "postgres", secret, databaseName(t, url))
	cfg := testConfig(withPassword)
	_, err := sprocketspg.New(ctxT(t), cfg, sprocketspg.WithExtension(instance.Extension{
		Name: "leaky",
		Start: func(ctx context.Context, h instance.Handle) error {
			return fmt.Errorf("cannot use postgres://postgres:%s@somewhere/db, password %s", secret, secret)
		},
	}))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "leaky")
	assert.NotContains(t, err.Error(), secret)
	assert.NotContains(t, fmt.Sprintf("%+v", err), secret)
}

func TestExtensionsStopInReverseBeforeThePoolCloses(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	var ev extEvents
	handles := map[string]instance.Handle{}
	var mu sync.Mutex
	var pool *sprocketspg.Pool
	ext := func(name string) instance.Extension {
		return instance.Extension{
			Name: name,
			Start: func(_ context.Context, h instance.Handle) error {
				mu.Lock()
				handles[name] = h
				mu.Unlock()
				ev.add("start %s", name)
				return nil
			},
			Stop: func(ctx context.Context) error {
				mu.Lock()
				h := handles[name]
				mu.Unlock()
				// The pool no longer counts as connected, but its
				// connections are still open for the extension.
				ev.add("stop %s: connected %t, query %v", name, pool.IsConnected(), selectOne(ctx, h.Pool()))
				return nil
			},
		}
	}
	noStart := instance.Extension{Name: "stop only", Stop: func(context.Context) error {
		ev.add("stop only")
		return nil
	}}
	cfg := testConfig(url)
	var err error
	pool, err = sprocketspg.New(ctxT(t), cfg, sprocketspg.WithExtension(ext("a")),
		sprocketspg.WithExtension(noStart), sprocketspg.WithExtension(ext("b")), sprocketspg.WithExtension(ext("c")))
	require.NoError(t, err)
	require.Equal(t, []string{"start a", "start b", "start c"}, ev.all())

	require.NoError(t, pool.Shutdown(ctxT(t)))
	assert.Equal(t, []string{
		"start a", "start b", "start c",
		"stop c: connected false, query <nil>",
		"stop b: connected false, query <nil>",
		"stop only",
		"stop a: connected false, query <nil>",
	}, ev.all(), "an extension without Start counts as started")
	assert.Error(t, selectOne(ctxT(t), handles["a"].Pool()), "the pool is closed after the extensions stopped")

	require.NoError(t, pool.Shutdown(ctxT(t)), "a second Shutdown")
	assert.Len(t, ev.all(), 7, "extensions stop once")
}

func TestExtensionStopErrorsAreReturnedByShutdown(t *testing.T) {
	app := uniqueAppName(t)
	backends := backendsOf(t, app)
	errA := errors.New("a could not stop")
	errC := errors.New("c could not stop")
	var ev extEvents
	pool, _ := newPool(t, func(c *sprocketspg.Config) { c.ApplicationName = app },
		sprocketspg.WithExtension(recordingExt(&ev, "ext-a", nil, errA)),
		sprocketspg.WithExtension(recordingExt(&ev, "ext-b", nil, nil)),
		sprocketspg.WithExtension(recordingExt(&ev, "ext-c", nil, errC)))

	err := pool.Shutdown(ctxT(t))
	require.Error(t, err)
	assert.ErrorIs(t, err, errA)
	assert.ErrorIs(t, err, errC)
	assert.Contains(t, err.Error(), "ext-a")
	assert.Contains(t, err.Error(), "ext-c")
	assert.NotContains(t, err.Error(), "ext-b")
	assert.Equal(t, []string{"start ext-a", "start ext-b", "start ext-c", "stop ext-c", "stop ext-b", "stop ext-a"}, ev.all(),
		"a failing stop does not keep the others from stopping")
	assert.False(t, pool.IsConnected())
	assert.Eventually(t, func() bool { return backends() == 0 }, 5*time.Second, 10*time.Millisecond,
		"a failing stop does not keep the pool open")
}

func TestExtensionStopNotCalledWithoutStart(t *testing.T) {
	t.Run("server unreachable", func(t *testing.T) {
		var ev extEvents
		cfg := testConfig("postgres://postgres@127.0.0.1:1/nowhere?sslmode=disable")
		cfg.ConnectionTimeout = 300 * time.Millisecond
		_, err := sprocketspg.New(ctxT(t), cfg, sprocketspg.WithExtension(recordingExt(&ev, "never", nil, nil)))
		require.Error(t, err)
		assert.Empty(t, ev.all())
	})
	t.Run("pool never started", func(t *testing.T) {
		var ev extEvents
		var pool *sprocketspg.Pool
		app := fx.New(fx.NopLogger, sprocketspg.Module, fx.Replace(testConfig(fxtest_helpers.NewDatabase(t))),
			fx.Populate(&pool),
			fx.Invoke(fx.Annotate(func(hs []instance.Handle) error {
				for _, h := range hs {
					if err := h.Attach(recordingExt(&ev, "never", nil, nil)); err != nil {
						return err
					}
				}
				return nil
			}, fx.ParamTags(`group:"`+instance.HandlesGroup+`"`))))
		require.NoError(t, app.Err())
		require.NoError(t, pool.Shutdown(ctxT(t)))
		assert.Empty(t, ev.all())
		require.Error(t, pool.Handle().Attach(recordingExt(&ev, "late", nil, nil)), "attach after Shutdown")
	})
}

func TestHandleAttachAfterStartFails(t *testing.T) {
	var ev extEvents
	pool, _ := newPool(t, nil)
	err := pool.Handle().Attach(recordingExt(&ev, "late-ext", nil, nil))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "late-ext")
	assert.Contains(t, err.Error(), "already started")
	require.NoError(t, pool.Shutdown(ctxT(t)))
	assert.Empty(t, ev.all(), "an extension refused is never run")
}

// Attach from inside an extension's Start or Stop must fail at once, as
// it does after start, rather than wait for the start or stop that runs
// the extension.
func TestHandleAttachDuringStartOrStopDoesNotBlock(t *testing.T) {
	attach := func(h instance.Handle) (err error, returned bool) {
		done := make(chan error, 1)
		go func() { done <- h.Attach(instance.Extension{Name: "nested"}) }()
		select {
		case err := <-done:
			return err, true
		case <-time.After(2 * time.Second):
			return nil, false
		}
	}
	var h instance.Handle
	var startErr, stopErr error
	var startReturned, stopReturned bool
	pool, _ := newPool(t, nil, sprocketspg.WithExtension(instance.Extension{
		Name: "attacher",
		Start: func(_ context.Context, handle instance.Handle) error {
			h = handle
			startErr, startReturned = attach(handle)
			return nil
		},
		Stop: func(context.Context) error {
			stopErr, stopReturned = attach(h)
			return nil
		},
	}))
	require.NoError(t, pool.Shutdown(ctxT(t)))
	if assert.True(t, startReturned, "Handle.Attach inside Start blocks until the pool's start returns (deadlock on Pool.mu)") {
		assert.Error(t, startErr)
	}
	if assert.True(t, stopReturned, "Handle.Attach inside Stop blocks until Shutdown returns (deadlock on Pool.mu)") {
		assert.Error(t, stopErr)
	}
}

// The read pool starts after the extensions; when it cannot be made, the
// extensions already started must be stopped like any other failure of
// start.
func TestExtensionsStoppedWhenReadPoolFails(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	replicaURL := fxtest_helpers.NewDatabase(t)
	replicaDB := databaseName(t, replicaURL)
	var ev extEvents
	cfg := testConfig(url)
	cfg.ReadURL = replicaURL
	_, err := sprocketspg.New(ctxT(t), cfg,
		// pgxpool refuses a pool of no connections: the read pool alone
		// cannot be made.
		sprocketspg.WithPoolConfig(func(pc *pgxpool.Config) {
			if pc.ConnConfig.Database == replicaDB {
				pc.MaxConns = 0
			}
		}),
		sprocketspg.WithExtension(recordingExt(&ev, "started", nil, nil)))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "read pool")
	assert.Equal(t, []string{"start started", "stop started"}, ev.all(),
		"an extension started before the read pool failed is stopped")
}

func TestHandlesGroupWithFx(t *testing.T) {
	var pools twoPools
	var checker *health.Checker
	var ev extEvents
	var stops extEvents
	var dbs sync.Map // instance name -> database its Start saw
	// Registered first, so it runs after the app's stop (NewApp's cleanup).
	t.Cleanup(func() {
		assert.ElementsMatch(t, []string{`stop "": ready false`, `stop "orders": ready false`}, stops.all(),
			"extensions stop after readiness closes")
	})
	fxtest_helpers.NewApp(t,
		fxtest_helpers.NamedDatabase(t, "orders"),
		fx.Populate(&pools, &checker),
		fx.Invoke(fx.Annotate(func(hs []instance.Handle) error {
			for _, h := range hs {
				ev.add("handle %q", h.Name())
				err := h.Attach(instance.Extension{
					Name: "probe",
					Start: func(ctx context.Context, h instance.Handle) error {
						pool := pools.Default
						if h.Name() == "orders" {
							pool = pools.Orders
						}
						var db string
						if err := h.Pool().QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
							return err
						}
						dbs.Store(h.Name(), db)
						ev.add("start %q: ready %t, connected %t", h.Name(), checker.Ready(), pool.IsConnected())
						return nil
					},
					Stop: func(context.Context) error {
						stops.add("stop %q: ready %t", h.Name(), checker.Ready())
						return nil
					},
				})
				if err != nil {
					return err
				}
			}
			return nil
		}, fx.ParamTags(`group:"`+instance.HandlesGroup+`"`))),
	)
	got := ev.all()
	require.Len(t, got, 4, "%q", got)
	assert.ElementsMatch(t, []string{`handle ""`, `handle "orders"`}, got[:2], "one handle per instance")
	assert.ElementsMatch(t, []string{`start "": ready false, connected false`, `start "orders": ready false, connected false`}, got[2:],
		"extensions start before readiness opens and before the pool counts as connected")
	assert.True(t, checker.Ready())
	def, _ := dbs.Load("")
	orders, _ := dbs.Load("orders")
	assert.Equal(t, currentDatabase(t, pools.Default), def)
	assert.Equal(t, currentDatabase(t, pools.Orders), orders)
	assert.Equal(t, "orders", pools.Orders.Handle().Name())
}

func TestHandleConnConfig(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	var userHook atomic.Int32
	pool := newPoolAt(t, url, func(c *sprocketspg.Config) {
		c.ApplicationName = "conn-config-app"
		c.QueryTimeout = 17 * time.Second
		c.SearchPath = "pg_catalog, public"
	}, sprocketspg.WithPoolConfig(func(pc *pgxpool.Config) {
		pc.BeforeConnect = func(context.Context, *pgx.ConnConfig) error {
			userHook.Add(1)
			return nil
		}
	}))
	h := pool.Handle()
	ctx := ctxT(t)

	show := func(t *testing.T, conn *pgx.Conn, setting string) string {
		t.Helper()
		var v string
		require.NoError(t, conn.QueryRow(ctx, "SELECT current_setting($1)", setting).Scan(&v))
		return v
	}
	connect := func(t *testing.T, cc *pgx.ConnConfig) *pgx.Conn {
		t.Helper()
		conn, err := pgx.ConnectConfig(ctx, cc)
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		return conn
	}

	t.Run("own URL", func(t *testing.T) {
		before := userHook.Load()
		cc, err := h.ConnConfig(ctx, "", "")
		require.NoError(t, err)
		assert.Nil(t, cc.Tracer, "the pool's tracers are not part of it")
		assert.Equal(t, "conn-config-app", cc.RuntimeParams["application_name"])
		assert.Equal(t, "17000", cc.RuntimeParams["statement_timeout"])
		assert.Equal(t, "pg_catalog, public", cc.RuntimeParams["search_path"])
		assert.Equal(t, before+1, userHook.Load(), "the user's BeforeConnect ran")
		conn := connect(t, cc)
		assert.Equal(t, "conn-config-app", show(t, conn, "application_name"))
		assert.Equal(t, "17s", show(t, conn, "statement_timeout"))
		assert.Equal(t, databaseName(t, url), currentDB(t, conn))
		assert.Equal(t, "pg_catalog, public", show(t, conn, "search_path"))

		other, err := h.ConnConfig(ctx, "", "")
		require.NoError(t, err)
		other.RuntimeParams["application_name"] = "changed"
		again, err := h.ConnConfig(ctx, "", "")
		require.NoError(t, err)
		assert.Equal(t, "conn-config-app", again.RuntimeParams["application_name"], "each config is a copy")
	})
	t.Run("other URL", func(t *testing.T) {
		otherURL := fxtest_helpers.NewDatabase(t)
		cc, err := h.ConnConfig(ctx, otherURL, "POSTGRES_MIGRATION_URL")
		require.NoError(t, err)
		assert.Nil(t, cc.Tracer)
		conn := connect(t, cc)
		assert.Equal(t, databaseName(t, otherURL), currentDB(t, conn))
		assert.Equal(t, "conn-config-app", show(t, conn, "application_name"), "the instance's settings are kept")
		assert.Equal(t, "17s", show(t, conn, "statement_timeout"))
	})
	t.Run("unparseable URL", func(t *testing.T) {
		const secret = "conn-Secret-2207"
		for _, bad := range []string{
			"postgres://u:" + secret + "@db.example.com:notaport/app",
			"mysql://u:" + secret + "@db.example.com/app",
		} {
			_, err := h.ConnConfig(ctx, bad, "POSTGRES_MIGRATION_URL")
			require.Error(t, err, bad)
			assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
			var ce *sprocketspg.ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, "POSTGRES_MIGRATION_URL", ce.Variable)
			assert.Contains(t, err.Error(), "POSTGRES_MIGRATION_URL")
			assert.NotContains(t, err.Error(), sprocketspg.EnvURL+" ", "the instance's own URL variable is not blamed")
			assert.NotContains(t, err.Error(), secret)
			assert.NotContains(t, ce.Value, secret)
		}
	})
}

// currentDB is the database conn is connected to.
func currentDB(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var db string
	require.NoError(t, conn.QueryRow(ctxT(t), "SELECT current_database()").Scan(&db))
	return db
}

func TestHandleConnConfigNamedInstance(t *testing.T) {
	pool := newPoolAt(t, fxtest_helpers.NewDatabase(t), nil, sprocketspg.WithName("orders"))
	h := pool.Handle()
	assert.Equal(t, "orders", h.Name())
	_, err := h.ConnConfig(ctxT(t), "postgres://u@h:notaport/db", "ORDERS_POSTGRES_MIGRATION_URL")
	require.Error(t, err)
	var ce *sprocketspg.ConfigError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "ORDERS_POSTGRES_MIGRATION_URL", ce.Variable)
	assert.NotContains(t, err.Error(), "ORDERS_POSTGRES_URL")
}

func TestHandleConnConfigPasswordFile(t *testing.T) {
	srv, appURL := passwordServer(t, firstPassword)
	file := filepath.Join(t.TempDir(), "password")
	require.NoError(t, os.WriteFile(file, []byte(firstPassword+"\n"), 0o600))
	pool := newPoolAt(t, appURL, func(c *sprocketspg.Config) { c.PasswordFile = file })
	h := pool.Handle()
	ctx := ctxT(t)

	cc, err := h.ConnConfig(ctx, "", "")
	require.NoError(t, err)
	assert.Equal(t, firstPassword, cc.Password, "the password comes from the file")
	conn, err := pgx.ConnectConfig(ctx, cc)
	require.NoError(t, err)
	var user string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_user").Scan(&user))
	assert.Equal(t, "app", user)
	require.NoError(t, conn.Close(ctx))

	// Another database of the same server, as the same user without a
	// password in its URL: the file's password is used there too.
	other := srv.NewDatabase(t)
	otherApp := withURLParts(t, other, "app", "", databaseName(t, other))
	cc, err = h.ConnConfig(ctx, otherApp, "POSTGRES_MIGRATION_URL")
	require.NoError(t, err)
	assert.Equal(t, firstPassword, cc.Password)
	conn, err = pgx.ConnectConfig(ctx, cc)
	require.NoError(t, err)
	assert.Equal(t, databaseName(t, other), currentDB(t, conn))
	require.NoError(t, conn.Close(ctx))

	// A password in that URL as well as the file is refused, naming both
	// and showing neither password.
	withPassword := withURLParts(t, other, "app", secondPassword, databaseName(t, other))
	_, err = h.ConnConfig(ctx, withPassword, "POSTGRES_MIGRATION_URL")
	require.Error(t, err)
	assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	assert.Contains(t, err.Error(), sprocketspg.EnvPasswordFile)
	assert.Contains(t, err.Error(), "POSTGRES_MIGRATION_URL")
	assert.NotContains(t, err.Error(), secondPassword)
	assert.NotContains(t, err.Error(), firstPassword)

	// The file is read for each config: once it is gone, ConnConfig says
	// so, without the password.
	require.NoError(t, os.Remove(file))
	_, err = h.ConnConfig(ctx, "", "")
	require.Error(t, err)
	assert.ErrorIs(t, err, sprocketspg.ErrCredentials)
	assert.Contains(t, err.Error(), sprocketspg.EnvPasswordFile)
	assert.NotContains(t, err.Error(), firstPassword)
}

// readyChecks returns the checks of a readiness document.
func readyChecks(t *testing.T, body map[string]any) map[string]any {
	t.Helper()
	checks, ok := body["checks"].(map[string]any)
	require.True(t, ok, "no checks in %v", body)
	return checks
}

// oneCheck returns the single observation under name.
func oneCheck(t *testing.T, checks map[string]any, name string) map[string]any {
	t.Helper()
	list, ok := checks[name].([]any)
	require.True(t, ok, "no check %s in %v", name, checks)
	require.Len(t, list, 1)
	obs, ok := list[0].(map[string]any)
	require.True(t, ok)
	return obs
}

func TestExtensionComponentsInModuleChecker(t *testing.T) {
	var checker *health.Checker
	var ordersFail atomic.Bool
	component := func(name string) health.Component {
		return health.Component{Name: "schemaVersion", Check: func(context.Context) health.ComponentReport {
			if name == "orders" && ordersFail.Load() {
				return health.ComponentReport{Status: health.StatusFail, ObservedValue: 2, ObservedUnit: "version",
					Output: "schema at 2, want 3"}
			}
			return health.ComponentReport{Status: health.StatusPass, ObservedValue: 3, ObservedUnit: "version"}
		}}
	}
	fxtest_helpers.NewApp(t,
		fxtest_helpers.NamedDatabase(t, "orders"),
		sprocketspg.ProvideHealthOptions(health.WithCacheWindow(0)),
		fx.Populate(&checker),
		fx.Invoke(fx.Annotate(func(hs []instance.Handle) error {
			for _, h := range hs {
				if err := h.Attach(instance.Extension{Name: "schema", Components: []health.Component{component(h.Name())}}); err != nil {
					return err
				}
			}
			return nil
		}, fx.ParamTags(`group:"`+instance.HandlesGroup+`"`))),
	)
	srv := healthServer(t, checker)

	code, body := healthGet(t, srv, "/readyz")
	require.Equal(t, http.StatusOK, code, body)
	assert.Equal(t, "pass", body["status"])
	checks := readyChecks(t, body)
	for _, name := range []string{"postgres:schemaVersion", "postgres-orders:schemaVersion"} {
		obs := oneCheck(t, checks, name)
		assert.Equal(t, "pass", obs["status"], name)
		assert.EqualValues(t, 3, obs["observedValue"], name)
		assert.Equal(t, "version", obs["observedUnit"], name)
		assert.Equal(t, "datastore", obs["componentType"], name)
		assert.NotContains(t, obs, "output", name)
	}
	assert.Contains(t, checks, "postgres:connections", "the databases' own checks stay")
	assert.Contains(t, checks, "postgres-orders:connections")

	ordersFail.Store(true)
	code, body = healthGet(t, srv, "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code, body)
	assert.Equal(t, "fail", body["status"])
	assert.Contains(t, body["output"], "postgres-orders")
	assert.Contains(t, body["output"], "schemaVersion: schema at 2, want 3")
	checks = readyChecks(t, body)
	obs := oneCheck(t, checks, "postgres-orders:schemaVersion")
	assert.Equal(t, "fail", obs["status"])
	assert.EqualValues(t, 2, obs["observedValue"])
	assert.Equal(t, "schema at 2, want 3", obs["output"])
	assert.Equal(t, "pass", oneCheck(t, checks, "postgres:schemaVersion")["status"], "the default instance still passes")

	ordersFail.Store(false)
	code, body = healthGet(t, srv, "/readyz")
	assert.Equal(t, http.StatusOK, code, body)
}

func TestExtensionComponentsWithoutFx(t *testing.T) {
	var warn atomic.Bool
	pool, _ := newPool(t, nil, sprocketspg.WithExtension(instance.Extension{
		Name: "listener",
		Components: []health.Component{{Name: "listener", Check: func(context.Context) health.ComponentReport {
			if warn.Load() {
				return health.ComponentReport{Status: health.StatusWarn, Output: "reconnecting"}
			}
			return health.ComponentReport{Status: health.StatusPass, ObservedValue: "listening"}
		}}},
	}))
	checker := sprocketspg.NewChecker(pool, health.WithCacheWindow(0))
	r := checker.Check(ctxT(t))
	assert.Equal(t, health.StatusPass, r.Status)
	require.Len(t, r.Components, 1)
	assert.Equal(t, "listener", r.Components[0].Name)
	assert.Equal(t, "listening", r.Components[0].ObservedValue)

	warn.Store(true)
	srv := healthServer(t, checker)
	code, body := healthGet(t, srv, "/readyz")
	assert.Equal(t, http.StatusOK, code, "a warning component keeps the service ready")
	assert.Equal(t, "warn", body["status"])
	obs := oneCheck(t, readyChecks(t, body), "postgres:listener")
	assert.Equal(t, "warn", obs["status"])
	assert.Equal(t, "reconnecting", obs["output"])
	assert.True(t, strings.Contains(body["output"].(string), "listener: reconnecting"), body["output"])
}

// An error of a connection's preparation (here a pgx hook of the user's
// that quotes the connection string) is scrubbed of the password and names
// the server it concerns, for another URL as for the instance's own.
func TestHandleConnConfigPreparationErrorOfOtherURL(t *testing.T) {
	const ownSecret, otherSecret = "own-Secret-5150", "other-Secret-8086"
	url := fxtest_helpers.NewDatabase(t)
	otherURL := fxtest_helpers.NewDatabase(t)
	ownDB, otherDB := databaseName(t, url), databaseName(t, otherURL)
	var refuse atomic.Bool
	pool := newPoolAt(t, withURLParts(t, url, "postgres", ownSecret, ownDB), nil,
		sprocketspg.WithPoolConfig(func(pc *pgxpool.Config) {
			pc.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
				if refuse.Load() {
					return fmt.Errorf("hook refuses %s", cc.ConnString())
				}
				return nil
			}
		}))
	refuse.Store(true)
	ctx := ctxT(t)

	_, err := pool.Handle().ConnConfig(ctx, "", "")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "hook refuses")
	assert.NotContains(t, err.Error(), ownSecret, "the instance's own URL")

	_, err = pool.Handle().ConnConfig(ctx, withURLParts(t, otherURL, "postgres", otherSecret, otherDB), "POSTGRES_MIGRATION_URL")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "hook refuses")
	assert.NotContains(t, err.Error(), otherSecret, "another URL's password leaks from ConnConfig's error")
	assert.Contains(t, err.Error(), `database "`+otherDB+`"`, "the error names the instance's server, not the one of the URL")
}
