package sprocketspg_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
)

const itemsSchema = `CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);`

// twoPools is a constructor's view of an app with two instances.
type twoPools struct {
	fx.In

	Default *sprocketspg.Pool
	Orders  *sprocketspg.Pool `name:"orders"`
}

// namedURL sets the URL of the instance called name, as an application
// would set a value in code.
func namedURL(name, url string) fx.Option {
	tag := `name:"` + name + `"`
	return fx.Decorate(fx.Annotate(func(c sprocketspg.Config) sprocketspg.Config {
		c.URL = url
		return c
	}, fx.ParamTags(tag), fx.ResultTags(tag)))
}

func TestNamedInstanceHasItsOwnDatabase(t *testing.T) {
	var pools twoPools
	var both []*sprocketspg.Pool
	fxtest_helpers.NewAppWithDatabase(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)),
		fxtest_helpers.NamedDatabase(t, "orders", fxtest_helpers.WithSchema(itemsSchema)),
		fx.Populate(&pools),
		// Both injected into one constructor, by tag.
		fx.Invoke(fx.Annotate(func(d, o *sprocketspg.Pool) { both = []*sprocketspg.Pool{d, o} },
			fx.ParamTags(``, `name:"orders"`))),
	)
	require.Len(t, both, 2)
	assert.Same(t, pools.Default, both[0])
	assert.Same(t, pools.Orders, both[1])
	assert.NotSame(t, pools.Default, pools.Orders)
	assert.Equal(t, "", pools.Default.Name())
	assert.Equal(t, "orders", pools.Orders.Name())

	ctx := ctxT(t)
	_, err := pools.Orders.Execute(ctx, "INSERT INTO items VALUES (1, 'through orders')")
	require.NoError(t, err)
	res, err := pools.Default.Execute(ctx, "SELECT count(*) AS n FROM items")
	require.NoError(t, err)
	assert.EqualValues(t, 0, res.Row["n"], "a row written through orders is not in the default database")
	res, err = pools.Orders.Execute(ctx, "SELECT name FROM items WHERE id = 1")
	require.NoError(t, err)
	assert.Equal(t, "through orders", res.Row["name"])
	assert.NotEqual(t, currentDatabase(t, pools.Default), currentDatabase(t, pools.Orders))
}

func TestNamedConfigComesFromPrefixedVariables(t *testing.T) {
	t.Setenv("ORDERS_POSTGRES_URL", "postgres://u@127.0.0.1:1/orders")
	t.Setenv("ORDERS_POSTGRES_MAX_POOL_SIZE", "7")
	t.Setenv("ORDERS_POSTGRES_QUERY_TIMEOUT", "2.5")
	t.Setenv(sprocketspg.EnvMaxPoolSize, "3") // the default instance's, not orders'
	t.Setenv(sprocketspg.EnvURL, "postgres://u@127.0.0.1:1/default")
	var cfg struct {
		fx.In
		Default sprocketspg.Config
		Orders  sprocketspg.Config `name:"orders"`
	}
	app := fx.New(fx.NopLogger, sprocketspg.Module, sprocketspg.Named("orders"), fx.Populate(&cfg))
	require.NoError(t, app.Err())
	assert.Equal(t, "postgres://u@127.0.0.1:1/orders", cfg.Orders.URL)
	assert.Equal(t, 7, cfg.Orders.MaxPoolSize)
	assert.Equal(t, 2500*time.Millisecond, cfg.Orders.QueryTimeout)
	assert.Equal(t, 3, cfg.Default.MaxPoolSize)
	assert.Equal(t, "postgres://u@127.0.0.1:1/default", cfg.Default.URL, "each instance reads its own URL")

	direct, err := sprocketspg.LoadConfigPrefix(sprocketspg.EnvPrefix("orders"))
	require.NoError(t, err)
	assert.Equal(t, cfg.Orders, direct, "LoadConfigPrefix does the same without fx")
}

func TestNamedConfigErrorsNameThePrefixedVariable(t *testing.T) {
	t.Run("bad value", func(t *testing.T) {
		t.Setenv("ORDERS_POSTGRES_URL", "postgres://u@127.0.0.1:1/orders")
		t.Setenv("ORDERS_POSTGRES_MAX_POOL_SIZE", "abc")
		t.Setenv(sprocketspg.EnvMaxPoolSize, "5")
		err := fx.New(fx.NopLogger, sprocketspg.Named("orders"), fx.Invoke(fx.Annotate(func(*sprocketspg.Pool) {},
			fx.ParamTags(`name:"orders"`)))).Err()
		require.Error(t, err)
		assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
		assert.Contains(t, err.Error(), `invalid ORDERS_POSTGRES_MAX_POOL_SIZE "abc"`)
	})
	t.Run("missing URL", func(t *testing.T) {
		t.Setenv(sprocketspg.EnvURL, "postgres://u@127.0.0.1:1/default") // does not leak into orders
		t.Setenv("ORDERS_POSTGRES_URL", "")
		err := fx.New(fx.NopLogger, sprocketspg.Module, sprocketspg.Named("orders")).Err()
		require.Error(t, err)
		var ce *sprocketspg.ConfigError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, "ORDERS_POSTGRES_URL", ce.Variable)
		assert.Contains(t, err.Error(), "invalid ORDERS_POSTGRES_URL: is required")
	})
	t.Run("default instance keeps its own", func(t *testing.T) {
		t.Setenv(sprocketspg.EnvURL, "")
		t.Setenv("ORDERS_POSTGRES_URL", "postgres://u@127.0.0.1:1/orders") // does not leak into the default
		err := fx.New(fx.NopLogger, sprocketspg.Module, sprocketspg.Named("orders")).Err()
		require.Error(t, err)
		var ce *sprocketspg.ConfigError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, sprocketspg.EnvURL, ce.Variable)
	})
	t.Run("min above max names the instance's max", func(t *testing.T) {
		cfg := testConfig("postgres://u@127.0.0.1:1/db")
		cfg.MinPoolSize, cfg.MaxPoolSize = 6, 5
		_, err := sprocketspg.New(ctxT(t), cfg, sprocketspg.WithName("orders"))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `invalid ORDERS_POSTGRES_MIN_POOL_SIZE "6": must not exceed ORDERS_POSTGRES_MAX_POOL_SIZE (5)`)
	})
}

func TestNamedRejectsBadNames(t *testing.T) {
	for _, name := range []string{"", "Orders", "1orders", "or-ders", "or ders", "ördes", "_x"} {
		err := fx.New(fx.NopLogger, sprocketspg.Named(name)).Err()
		require.Error(t, err, "%q", name)
		assert.ErrorIs(t, err, sprocketspg.ErrInvalidInstanceName, "%q", name)
		assert.Contains(t, err.Error(), "^[a-z][a-z0-9_]*$", "the error says the rule")
	}
	for _, name := range []string{"orders", "a", "reporting_2"} {
		t.Setenv(sprocketspg.EnvPrefix(name)+sprocketspg.EnvURL, "postgres://u@127.0.0.1:1/db")
		assert.NoError(t, fx.New(fx.NopLogger, sprocketspg.Named(name)).Err(), name)
	}
	err := fx.New(fx.NopLogger, sprocketspg.Named("Orders")).Err()
	assert.Contains(t, err.Error(), `sprocketspg.Named("Orders")`, "the error names the call")
	_, err = sprocketspg.New(ctxT(t), testConfig("postgres://u@127.0.0.1:1/db"), sprocketspg.WithName("No"))
	assert.ErrorIs(t, err, sprocketspg.ErrInvalidInstanceName)
	assert.Contains(t, err.Error(), `sprocketspg.WithName("No")`, "the error names the call made")
	assert.NotContains(t, err.Error(), "Named", "not one that was not made")
}

// One observer sees the queries of every instance, each event naming it.
func TestObserverSeesEveryInstance(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	observer := sprocketspg.ObserverFunc(func(ev sprocketspg.QueryEvent) {
		mu.Lock()
		defer mu.Unlock()
		seen[ev.Instance]++
	})
	var pools twoPools
	app := fxtest_helpers.NewApp(t,
		fxtest_helpers.NamedDatabase(t, "orders"),
		fx.Provide(sprocketspg.AsObserver(func() sprocketspg.ObserverFunc { return observer })),
		fx.Populate(&pools),
	)
	ctx := ctxT(t)
	for range 2 {
		_, err := pools.Default.Execute(ctx, "SELECT 1")
		require.NoError(t, err)
	}
	_, err := pools.Orders.Execute(ctx, "SELECT 1")
	require.NoError(t, err)
	app.RequireStop() // delivers what is queued
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, map[string]int{"": 2, "orders": 1}, seen)
}

// An instance whose server cannot be reached fails start, and the error
// names the instance.
func TestNamedInstanceFailingStartNamesIt(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := ln.Addr().String()
	require.NoError(t, ln.Close())
	t.Setenv("LEGACY_POSTGRES_URL", "postgres://u:pw-Secret@"+closed+"/legacy?sslmode=disable")
	t.Setenv("LEGACY_POSTGRES_CONNECTION_TIMEOUT", "1")
	app := fx.New(fx.NopLogger,
		sprocketspg.Module, fx.Replace(testConfig(fxtest_helpers.NewDatabase(t))),
		sprocketspg.Named("legacy"),
	)
	require.NoError(t, app.Err())
	err = app.Start(ctxT(t))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `instance "legacy"`)
	assert.NotContains(t, err.Error(), "pw-Secret")
	assert.ErrorIs(t, err, sprocketspg.ErrConnectTimeout)
}

// Three named instances and the default start and stop together, and
// leave no goroutine behind.
func TestManyInstancesStartAndStopCleanly(t *testing.T) {
	// The databases first: the test server that NewDatabase may start
	// here runs on after the test, with its goroutine.
	urls := []string{fxtest_helpers.NewDatabase(t), fxtest_helpers.NewDatabase(t),
		fxtest_helpers.NewDatabase(t), fxtest_helpers.NewDatabase(t)}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	type four struct {
		fx.In
		Default   *sprocketspg.Pool
		A         *sprocketspg.Pool      `name:"a"`
		B         *sprocketspg.Pool      `name:"b"`
		C         *sprocketspg.Pool      `name:"c"`
		Instances []sprocketspg.Instance `group:"sprocketspg_instances"`
	}
	var pools four
	app := fx.New(fx.NopLogger,
		sprocketspg.Module, fx.Replace(testConfig(urls[0])),
		sprocketspg.Named("a"), namedURL("a", urls[1]),
		sprocketspg.Named("b"), namedURL("b", urls[2]),
		sprocketspg.Named("c"), namedURL("c", urls[3]),
		fx.Populate(&pools),
	)
	require.NoError(t, app.Err())
	require.NoError(t, app.Start(ctxT(t)))
	assert.Equal(t, []*sprocketspg.Pool{pools.Default, pools.A, pools.B, pools.C},
		sprocketspg.InstancePools(pools.Instances, pools.B, nil),
		"every instance once, the default first, then by name")
	for _, p := range []*sprocketspg.Pool{pools.Default, pools.A, pools.B, pools.C} {
		assert.True(t, p.IsConnected(), p.Name())
		_, err := p.Execute(ctxT(t), "SELECT 1")
		require.NoError(t, err, p.Name())
	}
	require.NoError(t, app.Stop(ctxT(t)))
	for _, p := range []*sprocketspg.Pool{pools.Default, pools.A, pools.B, pools.C} {
		assert.False(t, p.IsConnected(), "stopping closes every instance: %s", p.Name())
	}
}

// readyz fetches /readyz of c and decodes it.
func readyz(t *testing.T, c *health.Checker) (int, map[string]any) {
	t.Helper()
	mux := http.NewServeMux()
	health.Register(mux, c)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	var doc map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &doc), rec.Body.String())
	return rec.Code, doc
}

func TestModuleCheckerCoversNamedInstances(t *testing.T) {
	for _, optional := range []bool{false, true} {
		name := "required"
		if optional {
			name = "optional"
		}
		t.Run(name, func(t *testing.T) {
			srv := fxtest_helpers.StartServer(t)
			var checker *health.Checker
			var pools twoPools
			opts := []fx.Option{
				sprocketspg.Named("orders"), namedURL("orders", srv.NewDatabase(t)),
				sprocketspg.ProvideHealthOptions(health.WithCacheWindow(0)),
				fx.Populate(&checker, &pools),
			}
			if optional {
				opts = append(opts, sprocketspg.ProvideHealthOptions(health.OptionalInstance("orders")))
			}
			fxtest_helpers.NewApp(t, opts...)

			code, doc := readyz(t, checker)
			require.Equal(t, http.StatusOK, code, doc)
			checks, _ := doc["checks"].(map[string]any)
			assert.Contains(t, checks, "postgres:connections")
			assert.Contains(t, checks, "postgres-orders:connections")

			ctx := ctxT(t)
			require.NoError(t, srv.Stop(ctx))
			t.Cleanup(func() { _ = srv.Start(context.Background()) })
			code, doc = readyz(t, checker)
			if optional {
				assert.Equal(t, http.StatusOK, code, doc)
				assert.Equal(t, "warn", doc["status"])
			} else {
				assert.Equal(t, http.StatusServiceUnavailable, code, doc)
				assert.Equal(t, "fail", doc["status"])
			}
			assert.Contains(t, doc["output"], "postgres-orders")
			_, err := pools.Default.Execute(ctx, "SELECT 1")
			require.NoError(t, err, "the other instance keeps serving")
			_, err = pools.Orders.Execute(ctx, "SELECT 1")
			require.Error(t, err)

			require.NoError(t, srv.Start(ctx))
			back := time.Now()
			require.Eventually(t, func() bool {
				code, _ := readyz(t, checker)
				return code == http.StatusOK
			}, 3*time.Second, 20*time.Millisecond, "ready again within 3 s of the server's return")
			t.Logf("ready again %s after the server's return", time.Since(back).Round(time.Millisecond))
		})
	}
}

// An app of only Named instances has a checker per instance, by name,
// and registers them all on one mux through health.Combine.
func TestOnlyNamedInstancesHaveCheckersByName(t *testing.T) {
	var checkers struct {
		fx.In
		Orders    *health.Checker `name:"orders"`
		Reporting *health.Checker `name:"reporting"`
	}
	app := fx.New(fx.NopLogger,
		sprocketspg.Named("orders"), namedURL("orders", fxtest_helpers.NewDatabase(t)),
		sprocketspg.Named("reporting"), namedURL("reporting", fxtest_helpers.NewDatabase(t)),
		fx.Populate(&checkers),
	)
	require.NoError(t, app.Err())
	require.NoError(t, app.Start(ctxT(t)))
	defer func() { require.NoError(t, app.Stop(ctxT(t))) }()

	code, doc := readyz(t, checkers.Orders)
	require.Equal(t, http.StatusOK, code, doc)
	checks, _ := doc["checks"].(map[string]any)
	assert.Contains(t, checks, "postgres-orders:connections")
	assert.NotContains(t, checks, "postgres:connections")

	code, doc = readyz(t, health.Combine(checkers.Orders, checkers.Reporting))
	require.Equal(t, http.StatusOK, code, doc)
	checks, _ = doc["checks"].(map[string]any)
	for _, name := range []string{"postgres-orders:connections", "postgres-reporting:connections"} {
		assert.Contains(t, checks, name)
	}
}

// A named pool's logs, and its read pool's, carry its name once.
func TestNamedPoolLogsNameTheInstance(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	cfg := testConfig(fxtest_helpers.NewDatabase(t))
	cfg.ReadURL = fxtest_helpers.NewDatabase(t)
	pool, err := sprocketspg.New(ctxT(t), cfg, sprocketspg.WithName("orders"), sprocketspg.WithLogger(zap.New(core)))
	require.NoError(t, err)
	defer pool.Close()
	require.Eventually(t, func() bool { return pool.Reader() != pool }, 5*time.Second, 10*time.Millisecond)
	for _, msg := range []string{"connected to postgres", "postgres read replica available"} {
		entries := logs.FilterMessage(msg).All()
		require.Len(t, entries, 1, msg)
		n := 0
		for _, f := range entries[0].Context {
			if f.Key == "instance" {
				n++
				assert.Equal(t, "orders", f.String, msg)
			}
		}
		assert.Equal(t, 1, n, "%s: one instance field", msg)
	}
	assert.Contains(t, pool.String(), `instance "orders"`)
}
