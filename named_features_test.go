package sprocketspg_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/discovery"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/internal/dnstest"
)

// The tests of this file check that a Named instance has each feature of
// the module from its own ORDERS_POSTGRES_* variables, set with t.Setenv
// as a deployment would set them.

// countingResolver is a discovery.Resolver that counts the lookups of each
// name before passing them on.
type countingResolver struct {
	next discovery.Resolver

	mu      sync.Mutex
	lookups map[string]int
}

func (r *countingResolver) LookupSRV(ctx context.Context, name string) (discovery.Answer, error) {
	r.mu.Lock()
	r.lookups[name]++
	r.mu.Unlock()
	return r.next.LookupSRV(ctx, name)
}

func (r *countingResolver) count(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lookups[name]
}

// Both instances resolve postgresql+srv:// URLs through the one
// discovery.Resolver of the application, each its own SRV name.
func TestNamedSRVDiscoveryWithSharedResolver(t *testing.T) {
	const ordersSRVName = "_orders._postgresql.example.com"
	defaultDB, ordersDB := fxtest_helpers.NewDatabase(t), fxtest_helpers.NewDatabase(t)
	defaultSRV, port := srvTestURL(t, defaultDB) // db.example.com: srvTestName
	ordersSRV, ordersPort := srvTestURL(t, ordersDB)
	require.Equal(t, port, ordersPort, "both databases are on the test binary's server")
	ordersSRV = strings.Replace(ordersSRV, "db.example.com", "orders.example.com", 1)

	dns := dnstest.Start(t)
	dns.SetSRV(srvTestName, 60, dnstest.SRV{Target: "127.0.0.1", Port: port})
	dns.SetSRV(ordersSRVName, 60, dnstest.SRV{Target: "127.0.0.1", Port: port})

	t.Setenv("ORDERS_POSTGRES_URL", ordersSRV)
	var shared *countingResolver
	decorations := 0
	var pools twoPools
	fxtest_helpers.NewAppWithDatabase(t, defaultSRV,
		sprocketspg.Named("orders"),
		fx.Decorate(func(discovery.Resolver) discovery.Resolver {
			decorations++
			shared = &countingResolver{
				next:    discovery.NewDNSResolver(discovery.WithServer(dns.Addr()), discovery.WithTimeout(500*time.Millisecond)),
				lookups: map[string]int{},
			}
			return shared
		}),
		fx.Populate(&pools),
	)
	require.Equal(t, ordersSRV, pools.Orders.Config().URL, "the instance's URL comes from ORDERS_POSTGRES_URL")
	require.Equal(t, 1, decorations, "one Resolver for the application")

	ctx := ctxT(t)
	for _, p := range []*sprocketspg.Pool{pools.Default, pools.Orders} {
		res, err := p.Execute(ctx, "SELECT 1 AS one")
		require.NoError(t, err, "instance %q", p.Name())
		assert.EqualValues(t, 1, res.Row["one"])
		assert.Equal(t, int(port), srvTestServerPort(t, p), "instance %q reaches the server the SRV record names", p.Name())
	}
	assert.Equal(t, databaseOf(t, ordersDB), currentDatabase(t, pools.Orders), "orders resolved its own SRV name")
	assert.Equal(t, databaseOf(t, defaultDB), currentDatabase(t, pools.Default))

	// Each instance's lookups went through the shared resolver, and only
	// through it: the DNS server saw no query the resolver did not pass on.
	for _, name := range []string{srvTestName, ordersSRVName} {
		assert.Positive(t, shared.count(name), "%s looked up through the shared resolver", name)
		assert.Equal(t, shared.count(name), dns.Queries(name), "%s: every DNS query came from the shared resolver", name)
	}
	assert.Contains(t, pools.Orders.String(), "SRV "+ordersSRVName)
	assert.Contains(t, pools.Orders.String(), `instance "orders"`)
}

// ORDERS_POSTGRES_READ_URL gives the named instance a Reader on the read
// URL; the default instance, with no read URL of its own, has none.
func TestNamedReadURLFromEnv(t *testing.T) {
	primary, replica := fxtest_helpers.NewDatabase(t), fxtest_helpers.NewDatabase(t)
	t.Setenv("ORDERS_POSTGRES_URL", primary)
	t.Setenv("ORDERS_POSTGRES_READ_URL", replica)
	t.Setenv(sprocketspg.EnvReadURL, "") // unset for the default instance
	var pools twoPools
	fxtest_helpers.NewApp(t, sprocketspg.Named("orders"), fx.Populate(&pools))

	assert.Equal(t, replica, pools.Orders.Config().ReadURL)
	require.Eventually(t, func() bool { return pools.Orders.Reader() != pools.Orders }, 10*time.Second, 10*time.Millisecond,
		"the named instance hands out its read pool once it answers")
	reader := pools.Orders.Reader()
	assert.Equal(t, databaseOf(t, replica), currentDatabase(t, reader), "Reader goes to ORDERS_POSTGRES_READ_URL")
	assert.Equal(t, databaseOf(t, primary), currentDatabase(t, pools.Orders), "the pool itself goes to ORDERS_POSTGRES_URL")
	assert.Equal(t, "orders", reader.Name(), "the read pool belongs to the instance")
	assert.NotEqual(t, currentDatabase(t, reader), currentDatabase(t, pools.Default))

	assert.Empty(t, pools.Default.Config().ReadURL, "ORDERS_POSTGRES_READ_URL does not leak into the default instance")
	assert.Same(t, pools.Default, pools.Default.Reader())
}

// teeLogger decorates the app's *zap.Logger so that it also writes to
// core, keeping the test's own log output.
func teeLogger(core zapcore.Core) fx.Option {
	return fx.Decorate(func(l *zap.Logger) *zap.Logger {
		return zap.New(zapcore.NewTee(l.Core(), core))
	})
}

// statementLogs are the query log entries (statement and slow-query logs)
// of sql.
func statementLogs(logs *observer.ObservedLogs, sql string) []observer.LoggedEntry {
	return logs.Filter(func(e observer.LoggedEntry) bool {
		return strings.HasSuffix(e.Message, "postgres Query") && e.ContextMap()["sql"] == sql
	}).AllUntimed()
}

// instanceFields returns the values of entry's instance fields.
func instanceFields(e observer.LoggedEntry) []string {
	var out []string
	for _, f := range e.Context {
		if f.Key == "instance" {
			out = append(out, f.String)
		}
	}
	return out
}

// ORDERS_POSTGRES_LOG_QUERIES and ORDERS_POSTGRES_SLOW_QUERY_THRESHOLD turn
// on the named instance's statement and slow-query logs, which name it,
// and leave the default instance's off.
func TestNamedQueryLogsFromEnv(t *testing.T) {
	t.Setenv("ORDERS_POSTGRES_URL", fxtest_helpers.NewDatabase(t))
	t.Setenv("ORDERS_POSTGRES_LOG_QUERIES", "true")
	t.Setenv("ORDERS_POSTGRES_SLOW_QUERY_THRESHOLD", "200ms")
	t.Setenv(sprocketspg.EnvLogQueries, "")
	t.Setenv(sprocketspg.EnvSlowQuery, "")
	core, logs := observer.New(zapcore.InfoLevel)
	var pools twoPools
	fxtest_helpers.NewApp(t, sprocketspg.Named("orders"), teeLogger(core), fx.Populate(&pools))
	require.True(t, pools.Orders.Config().LogQueries)
	require.Equal(t, 200*time.Millisecond, pools.Orders.Config().SlowQueryThreshold)
	require.False(t, pools.Default.Config().LogQueries)
	require.Zero(t, pools.Default.Config().SlowQueryThreshold)

	ctx := ctxT(t)
	const (
		ordersFast  = "SELECT 'orders-fast' AS q"
		ordersSlow  = "SELECT pg_sleep(0.4), 'orders-slow' AS q"
		defaultFast = "SELECT 'default-fast' AS q"
		defaultSlow = "SELECT pg_sleep(0.4), 'default-slow' AS q"
	)
	for _, q := range []struct {
		pool *sprocketspg.Pool
		sql  string
	}{{pools.Orders, ordersFast}, {pools.Orders, ordersSlow}, {pools.Default, defaultFast}, {pools.Default, defaultSlow}} {
		_, err := q.pool.Execute(ctx, q.sql)
		require.NoError(t, err, q.sql)
	}

	fast := statementLogs(logs, ordersFast)
	require.Len(t, fast, 1, "ORDERS_POSTGRES_LOG_QUERIES logs the statement once")
	assert.Equal(t, "postgres Query", fast[0].Message)
	assert.Equal(t, zapcore.InfoLevel, fast[0].Level)
	assert.Equal(t, []string{"orders"}, instanceFields(fast[0]), "the statement log names the instance, once")
	assert.Contains(t, fast[0].ContextMap(), "duration")

	slow := statementLogs(logs, ordersSlow)
	require.Len(t, slow, 1, "the slow statement is logged once")
	assert.Equal(t, "slow postgres Query", slow[0].Message, "ORDERS_POSTGRES_SLOW_QUERY_THRESHOLD makes it a slow-query log")
	assert.Equal(t, zapcore.WarnLevel, slow[0].Level)
	assert.Equal(t, []string{"orders"}, instanceFields(slow[0]))

	assert.Empty(t, statementLogs(logs, defaultFast), "the default instance logs no statement: only ORDERS_ is set")
	assert.Empty(t, statementLogs(logs, defaultSlow), "nor a slow one")
	for _, e := range logs.Filter(func(e observer.LoggedEntry) bool {
		return strings.HasPrefix(fmt.Sprint(e.ContextMap()["sql"]), "SELECT")
	}).AllUntimed() {
		assert.Equal(t, []string{"orders"}, instanceFields(e), "every statement logged is the named instance's: %s %v", e.Message, e.ContextMap())
	}
}

// preparedStatements counts the prepared statements of the connection
// that runs a transaction of pool, after a query with an argument on it.
func preparedStatements(t *testing.T, pool *sprocketspg.Pool) int64 {
	t.Helper()
	var n int64
	err := pool.Transaction(ctxT(t), func(tx *sprocketspg.Tx) error {
		res, err := tx.Execute(ctxT(t), "SELECT $1::int + 1 AS n", 41)
		if err != nil {
			return err
		}
		if got := res.Row["n"]; got != int32(42) {
			return fmt.Errorf("got %v (%T), want 42", got, got)
		}
		res, err = tx.Execute(ctxT(t), "SELECT count(*) AS n FROM pg_prepared_statements")
		if err != nil {
			return err
		}
		n = res.Row["n"].(int64)
		return nil
	})
	require.NoError(t, err)
	return n
}

// ORDERS_POSTGRES_QUERY_EXEC_MODE sets how the named pool sends queries:
// with simple_protocol nothing is prepared on its connections, while the
// default instance keeps pgx's statement cache.
func TestNamedQueryExecModeFromEnv(t *testing.T) {
	t.Setenv("ORDERS_POSTGRES_URL", fxtest_helpers.NewDatabase(t))
	t.Setenv("ORDERS_POSTGRES_QUERY_EXEC_MODE", "simple_protocol")
	t.Setenv(sprocketspg.EnvQueryExecMode, "")
	var pools twoPools
	fxtest_helpers.NewApp(t, sprocketspg.Named("orders"), fx.Populate(&pools))

	assert.Equal(t, "simple_protocol", pools.Orders.Config().QueryExecMode)
	assert.Equal(t, pgx.QueryExecModeSimpleProtocol, pools.Orders.Pool.Config().ConnConfig.DefaultQueryExecMode)
	assert.Equal(t, pgx.QueryExecModeCacheStatement, pools.Default.Pool.Config().ConnConfig.DefaultQueryExecMode,
		"the default instance keeps pgx's default")

	assert.Zero(t, preparedStatements(t, pools.Orders), "simple_protocol prepares nothing on the named pool")
	assert.Positive(t, preparedStatements(t, pools.Default), "cache_statement prepares on the default pool")
}

// ORDERS_POSTGRES_QUERY_TIMEOUT is the named pool's statement_timeout; the
// default instance keeps its own.
func TestNamedQueryTimeoutFromEnv(t *testing.T) {
	t.Setenv("ORDERS_POSTGRES_URL", fxtest_helpers.NewDatabase(t))
	t.Setenv("ORDERS_POSTGRES_QUERY_TIMEOUT", "1")
	t.Setenv(sprocketspg.EnvQueryTimeout, "")
	var pools twoPools
	fxtest_helpers.NewApp(t, sprocketspg.Named("orders"), fx.Populate(&pools))
	require.Equal(t, time.Second, pools.Orders.Config().QueryTimeout)
	require.Equal(t, 60*time.Second, pools.Default.Config().QueryTimeout, "the default's default")

	ctx := ctxT(t)
	show := func(p *sprocketspg.Pool) string {
		res, err := p.Execute(ctx, "SHOW statement_timeout")
		require.NoError(t, err)
		return res.Row["statement_timeout"].(string)
	}
	assert.Equal(t, "1s", show(pools.Orders))
	assert.Equal(t, "1min", show(pools.Default))

	began := time.Now()
	_, err := pools.Orders.Execute(ctx, "SELECT pg_sleep(3)")
	elapsed := time.Since(began)
	require.Error(t, err)
	assert.True(t, sprocketspg.IsQueryTimeout(err), "a query timeout: %v", err)
	assert.Less(t, elapsed, 2500*time.Millisecond, "the server stopped it after ORDERS_POSTGRES_QUERY_TIMEOUT")
	assert.Contains(t, err.Error(), `instance "orders"`)

	// Longer than the named instance's timeout, well within the default's.
	_, err = pools.Default.Execute(ctx, "SELECT pg_sleep(1.5)")
	require.NoError(t, err, "the default instance keeps its own timeout")
	_, err = pools.Orders.Execute(ctx, "SELECT 1")
	require.NoError(t, err, "the connection of the cancelled statement is still usable")
}

// jsonLogger returns a logger that writes every entry, from debug up, as
// JSON to the buffer it returns (tls_test.go's syncBuffer): each field in
// full, errors with their verbose form.
func jsonLogger() (*zap.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	enc := zapcore.NewJSONEncoder(zap.NewDevelopmentEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(buf), zapcore.DebugLevel)), buf
}

// withPassword returns dbURL with password as its password, unless it has
// one already: then that is the secret to look for. The test servers trust
// local connections, so any password logs in.
func withPassword(t *testing.T, dbURL, password string) (string, string) {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	if pw, ok := u.User.Password(); ok && pw != "" {
		return dbURL, pw
	}
	u.User = url.UserPassword(u.User.Username(), password)
	return u.String(), password
}

// linesWith returns the lines of logs that contain s.
func linesWith(logs, s string) []string {
	var out []string
	for line := range strings.Lines(logs) {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}

// secretApp is an fx app, not started, with Module and Named("orders") and
// logger as its *zap.Logger and its event logger.
func secretApp(t *testing.T, logger *zap.Logger, opts ...fx.Option) *fxtest.App {
	t.Helper()
	return fxtest.New(t, append([]fx.Option{
		fx.Supply(logger),
		fx.WithLogger(func() fxevent.Logger { return &fxevent.ZapLogger{Logger: logger} }),
		sprocketspg.Module,
		sprocketspg.Named("orders"),
	}, opts...)...)
}

// The passwords of a named instance's URL and read URL appear in none of
// its logs, at any level, nor in any error or printed value.
func TestNamedInstanceNeverShowsItsPassword(t *testing.T) {
	t.Run("running", func(t *testing.T) {
		ordersURL, secret := withPassword(t, fxtest_helpers.NewDatabase(t), "pw-Orders-7f3c9a")
		readURL, readSecret := withPassword(t, fxtest_helpers.NewDatabase(t), "pw-Reader-41d8e2")
		t.Setenv(sprocketspg.EnvURL, fxtest_helpers.NewDatabase(t))
		t.Setenv("ORDERS_POSTGRES_URL", ordersURL)
		t.Setenv("ORDERS_POSTGRES_READ_URL", readURL)
		t.Setenv("ORDERS_POSTGRES_LOG_QUERIES", "true")
		t.Setenv("ORDERS_POSTGRES_SLOW_QUERY_THRESHOLD", "1ms")
		logger, buf := jsonLogger()
		var pools twoPools
		var checker *health.Checker
		var cfg struct {
			fx.In
			Orders sprocketspg.Config `name:"orders"`
		}
		app := secretApp(t, logger, fx.Populate(&pools, &checker, &cfg))
		require.NoError(t, app.Err())
		app.RequireStart()
		stopped := false
		t.Cleanup(func() {
			if !stopped {
				app.RequireStop()
			}
		})
		require.Eventually(t, func() bool { return pools.Orders.Reader() != pools.Orders }, 10*time.Second, 10*time.Millisecond)

		ctx := ctxT(t)
		var texts []string
		note := func(err error) {
			t.Helper()
			require.Error(t, err)
			texts = append(texts, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err))
		}
		_, err := pools.Orders.Execute(ctx, "SELECT 1")
		require.NoError(t, err)
		_, err = pools.Orders.Reader().Execute(ctx, "SELECT 1")
		require.NoError(t, err)
		_, err = pools.Orders.Execute(ctx, "SELECT * FROM no_such_table")
		note(err)
		_, err = pools.Orders.Reader().Execute(ctx, "SELECT * FROM no_such_table")
		note(err)
		_, err = pools.Orders.Callproc(ctx, "no_such_function", 1)
		note(err)
		note(pools.Orders.Transaction(ctx, func(tx *sprocketspg.Tx) error {
			_, err := tx.Execute(ctx, "SELECT 1/0")
			return err
		}))
		_, err = pools.Orders.ExecuteBatch(ctx, []sprocketspg.Statement{{SQL: "SELECT 1"}, {SQL: "SELECT * FROM no_such_table"}})
		note(err)
		_, err = pools.Orders.Execute(sprocketspg.WithQueryTimeout(ctx, 50*time.Millisecond), "SELECT pg_sleep(1)")
		note(err)

		// What a service prints or serves of the instance.
		texts = append(texts, pools.Orders.String(), fmt.Sprintf("%+v", pools.Orders), fmt.Sprintf("%#v", pools.Orders),
			pools.Orders.Reader().String(), cfg.Orders.String(), fmt.Sprintf("%+v", cfg.Orders), fmt.Sprintf("%#v", cfg.Orders),
			fmt.Sprintf("%+v", pools.Orders.Config()), checker.String())
		logger.Info("printed", zap.Object("pool", pools.Orders), zap.Object("config", cfg.Orders),
			zap.Object("status", pools.Orders.Status(ctx)))
		srv := healthServer(t, checker)
		for _, path := range []string{"/readyz", "/status"} {
			code, body := healthGet(t, srv, path)
			assert.Equal(t, http.StatusOK, code, "%s %v", path, body)
			texts = append(texts, fmt.Sprint(body))
		}

		app.RequireStop()
		stopped = true
		_, err = pools.Orders.Execute(ctx, "SELECT 1")
		note(err)
		note(pools.Orders.Ping(ctx))
		note(pools.Orders.Status(ctx).Err)

		logs := buf.String()
		// The capture works: the instance's logs are there, and its
		// statements and errors with them.
		for _, want := range []string{`"instance":"orders"`, "connected to postgres", "postgres read replica available",
			`"M":"postgres Query"`, "no_such_table", "closed postgres pool"} {
			require.True(t, strings.Contains(logs, want), "the logs hold %s", want)
		}
		for _, s := range []string{secret, readSecret} {
			assert.Empty(t, linesWith(logs, s), "log lines show a password")
			for _, text := range texts {
				assert.NotContains(t, text, s)
			}
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		const secret, readSecret = "pw-Gone-0b5e71", "pw-GoneReader-9a2c44"
		closed := srvTestClosedPort(t)
		t.Setenv(sprocketspg.EnvURL, fxtest_helpers.NewDatabase(t))
		t.Setenv("ORDERS_POSTGRES_URL", fmt.Sprintf("postgres://app:%s@127.0.0.1:%d/orders?sslmode=disable", secret, closed))
		t.Setenv("ORDERS_POSTGRES_READ_URL", fmt.Sprintf("postgres://reader:%s@127.0.0.1:%d/orders?sslmode=disable", readSecret, closed))
		t.Setenv("ORDERS_POSTGRES_CONNECTION_TIMEOUT", "1")
		logger, buf := jsonLogger()
		app := secretApp(t, logger)
		require.NoError(t, app.Err())
		err := app.Start(ctxT(t))
		require.Error(t, err)
		assert.ErrorIs(t, err, sprocketspg.ErrConnectTimeout)
		assert.Contains(t, err.Error(), `instance "orders"`)
		require.NoError(t, app.Stop(ctxT(t)))

		logs := buf.String()
		require.True(t, strings.Contains(logs, "postgres not reachable yet, retrying"), "the debug logs of the attempts are captured")
		require.True(t, strings.Contains(logs, fmt.Sprintf("127.0.0.1:%d", closed)), "the logs name the server")
		for _, s := range []string{secret, readSecret} {
			assert.Empty(t, linesWith(logs, s), "log lines show a password")
			assert.NotContains(t, err.Error(), s)
			assert.NotContains(t, fmt.Sprintf("%+v", err), s)
		}
	})

	t.Run("bad URL", func(t *testing.T) {
		const secret = "pw-Bad-51c0de"
		t.Setenv(sprocketspg.EnvURL, "postgres://u@127.0.0.1:1/db")
		t.Setenv("ORDERS_POSTGRES_URL", "postgres://app:"+secret+"@127.0.0.1:notaport/orders")
		t.Setenv("ORDERS_POSTGRES_READ_URL", "mysql://reader:"+secret+"@127.0.0.1/orders")
		logger, buf := jsonLogger()
		err := fx.New(fx.Supply(logger), fx.WithLogger(func() fxevent.Logger { return &fxevent.ZapLogger{Logger: logger} }),
			sprocketspg.Module, sprocketspg.Named("orders")).Err()
		require.Error(t, err)
		assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
		assert.Contains(t, err.Error(), "ORDERS_POSTGRES_")
		assert.NotContains(t, err.Error(), secret)
		assert.NotContains(t, fmt.Sprintf("%+v", err), secret)
		assert.Empty(t, linesWith(buf.String(), secret), "log lines show a password")
	})
}

// Two NamedDatabase instances and NewApp's default get three fresh
// databases of their own; the rest of each instance's settings still come
// from its variables.
func TestFxtestHelpersTwoNamedDatabases(t *testing.T) {
	// NamedDatabase's database wins over the variable, as NewApp's does.
	t.Setenv("ORDERS_POSTGRES_URL", "postgres://nobody@127.0.0.1:1/not_this_one")
	t.Setenv("ORDERS_POSTGRES_MAX_POOL_SIZE", "3")
	t.Setenv("REPORTING_POSTGRES_MAX_POOL_SIZE", "4")
	t.Setenv(sprocketspg.EnvMaxPoolSize, "")
	var pools struct {
		fx.In
		Default   *sprocketspg.Pool
		Orders    *sprocketspg.Pool `name:"orders"`
		Reporting *sprocketspg.Pool `name:"reporting"`
	}
	fxtest_helpers.NewApp(t,
		fxtest_helpers.NamedDatabase(t, "orders"),
		fxtest_helpers.NamedDatabase(t, "reporting"),
		fx.Populate(&pools),
	)
	all := map[string]*sprocketspg.Pool{"default": pools.Default, "orders": pools.Orders, "reporting": pools.Reporting}
	assert.Equal(t, 3, pools.Orders.Config().MaxPoolSize, "ORDERS_POSTGRES_MAX_POOL_SIZE")
	assert.Equal(t, 4, pools.Reporting.Config().MaxPoolSize, "REPORTING_POSTGRES_MAX_POOL_SIZE")
	assert.Equal(t, 10, pools.Default.Config().MaxPoolSize)
	assert.NotContains(t, pools.Orders.Config().URL, "not_this_one")

	dbs := map[string]string{}
	for name, p := range all {
		db := currentDatabase(t, p)
		assert.NotEqual(t, "postgres", db, name)
		for other, seen := range dbs {
			assert.NotEqual(t, seen, db, "%s and %s share a database", name, other)
		}
		dbs[name] = db
	}

	ctx := ctxT(t)
	for name, p := range all {
		_, err := p.Execute(ctx, "CREATE TABLE only_in_"+name+" (id int)")
		require.NoError(t, err, name)
		_, err = p.Execute(ctx, "INSERT INTO only_in_"+name+" VALUES (1)")
		require.NoError(t, err, name)
	}
	for name, p := range all {
		res, err := p.Execute(ctx, "SELECT relname FROM pg_class WHERE relname LIKE 'only_in_%' AND relkind = 'r' ORDER BY relname")
		require.NoError(t, err, name)
		var tables []string
		for _, row := range res.Rows {
			tables = append(tables, row["relname"].(string))
		}
		assert.Equal(t, []string{"only_in_" + name}, tables, "%s sees its own table alone", name)
		for other := range all {
			if other == name {
				continue
			}
			_, err := p.Execute(ctx, "SELECT * FROM only_in_"+other)
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr, "%s sees %s's table", name, other)
			assert.Equal(t, "42P01", pgErr.Code, "undefined_table")
		}
	}
}

// With the default cache window, stopping the named instance's server
// turns Module's /readyz 503 naming postgres-orders, and /readyz is 200
// again within 3 s of the server's return; /status shows the instance in
// its own field.
func TestNamedInstanceOutageWithDefaultCacheWindow(t *testing.T) {
	srv := fxtest_helpers.StartServer(t)
	t.Setenv("ORDERS_POSTGRES_URL", srv.NewDatabase(t))
	t.Setenv("ORDERS_POSTGRES_CONNECTION_TIMEOUT", "2")
	var checker *health.Checker
	var pools twoPools
	fxtest_helpers.NewApp(t, sprocketspg.Named("orders"), fx.Populate(&checker, &pools))
	require.Contains(t, checker.String(), "CacheWindow:"+health.DefaultCacheWindow.String(), "the default window")
	hs := healthServer(t, checker)

	code, doc := healthGet(t, hs, "/readyz")
	require.Equal(t, http.StatusOK, code, doc)
	checks, _ := doc["checks"].(map[string]any)
	for _, name := range []string{"postgres:connections", "postgres-orders:connections"} {
		assert.Contains(t, checks, name)
	}
	code, status := healthGet(t, hs, "/status")
	require.Equal(t, http.StatusOK, code, status)
	instances, ok := status["instances"].(map[string]any)
	require.True(t, ok, "/status has an instances field: %v", status)
	require.Contains(t, instances, "orders")
	orders := instances["orders"].(map[string]any)
	assert.Equal(t, "ok", orders["status"])
	assert.GreaterOrEqual(t, orders["pool_size"], 1.0)
	assert.Contains(t, status, "postgres", "the default pool keeps the original's field")
	assert.NotContains(t, status["postgres"], "orders")

	ctx := ctxT(t)
	require.NoError(t, srv.Stop(ctx))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = srv.Start(ctx)
	})
	doc = healthEventually(t, hs, "/readyz", http.StatusServiceUnavailable, 10*time.Second)
	assert.Equal(t, "fail", doc["status"])
	assert.Contains(t, doc["output"], "postgres-orders")
	checks, _ = doc["checks"].(map[string]any)
	assert.Equal(t, "pass", checkOf(t, checks, "postgres:connections")["status"], "the default instance is fine")
	assert.Equal(t, "fail", checkOf(t, checks, "postgres-orders:connections")["status"])
	status = healthEventually(t, hs, "/status", http.StatusServiceUnavailable, 10*time.Second)
	assert.Equal(t, "unavailable", status["instances"].(map[string]any)["orders"].(map[string]any)["status"])
	_, err := pools.Default.Execute(ctx, "SELECT 1")
	require.NoError(t, err, "the default instance keeps serving")

	require.NoError(t, srv.Start(ctx))
	back := time.Now()
	deadline := back.Add(3 * time.Second)
	for {
		code, doc = healthGet(t, hs, "/readyz")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still %d %v %s after the server's return", code, doc, time.Since(back))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("ready again %s after the server's return", time.Since(back).Round(time.Millisecond))
	assert.Equal(t, "pass", doc["status"])
	status = healthEventually(t, hs, "/status", http.StatusOK, 10*time.Second)
	assert.Equal(t, "ok", status["instances"].(map[string]any)["orders"].(map[string]any)["status"])
}

// checkOf returns the single observation of checks under name.
func checkOf(t *testing.T, checks map[string]any, name string) map[string]any {
	t.Helper()
	list, ok := checks[name].([]any)
	require.True(t, ok, "%s: %v", name, checks)
	require.Len(t, list, 1, name)
	m, ok := list[0].(map[string]any)
	require.True(t, ok, name)
	return m
}

// After start, the errors of calls on a named instance name it; the
// default instance's read as they always have.
func TestNamedInstanceErrorsNameIt(t *testing.T) {
	t.Setenv("ORDERS_POSTGRES_URL", fxtest_helpers.NewDatabase(t))
	var pools twoPools
	app := fxtest_helpers.NewApp(t, sprocketspg.Named("orders"), fx.Populate(&pools))
	ctx := ctxT(t)
	boom := errors.New("boom")

	type failure struct {
		what  string
		err   error
		check func(*testing.T, error)
	}
	failures := func(p *sprocketspg.Pool) []failure {
		_, execErr := p.Execute(ctx, "SELECT * FROM no_such_table")
		txErr := p.Transaction(ctx, func(*sprocketspg.Tx) error { return boom })
		_, batchErr := p.ExecuteBatch(ctx, []sprocketspg.Statement{{SQL: "SELECT 1"}, {SQL: "SELECT 1/0"}})
		_, nameErr := p.Callproc(ctx, "a;b")
		// A Tx statement's error, returned through Transaction.
		stmtErr := p.Transaction(ctx, func(tx *sprocketspg.Tx) error {
			_, err := tx.Execute(ctx, "SELECT 1/0")
			return err
		})
		return []failure{
			{"Callproc of a bad routine name", nameErr, func(t *testing.T, err error) {
				assert.Contains(t, err.Error(), "invalid routine name")
			}},
			{"Tx.Execute's error through Transaction", stmtErr, func(t *testing.T, err error) {
				var pgErr *pgconn.PgError
				require.ErrorAs(t, err, &pgErr)
				assert.Equal(t, "22012", pgErr.Code)
			}},
			{"Execute of a missing table", execErr, func(t *testing.T, err error) {
				var pgErr *pgconn.PgError
				require.ErrorAs(t, err, &pgErr)
				assert.Equal(t, "42P01", pgErr.Code)
			}},
			{"Transaction whose function fails", txErr, func(t *testing.T, err error) {
				assert.ErrorIs(t, err, boom)
			}},
			{"ExecuteBatch with a failing statement", batchErr, func(t *testing.T, err error) {
				var be *sprocketspg.BatchError
				require.ErrorAs(t, err, &be)
				assert.Equal(t, 1, be.Index)
			}},
		}
	}
	afterStop := func(p *sprocketspg.Pool) []failure {
		_, execErr := p.Execute(ctx, "SELECT 1")
		txErr := p.Transaction(ctx, func(*sprocketspg.Tx) error { return nil })
		_, batchErr := p.ExecuteBatch(ctx, []sprocketspg.Statement{{SQL: "SELECT 1"}})
		notConnected := func(t *testing.T, err error) { assert.ErrorIs(t, err, sprocketspg.ErrNotConnected) }
		return []failure{
			{"Execute after stop", execErr, notConnected},
			{"Transaction after stop", txErr, notConnected},
			{"ExecuteBatch after stop", batchErr, notConnected},
		}
	}
	assertNamed := func(t *testing.T, fs []failure) {
		for _, f := range fs {
			require.Error(t, f.err, f.what)
			t.Logf("orders: %s: %v", f.what, f.err)
			assert.Equal(t, 1, strings.Count(f.err.Error(), `instance "orders"`), "named once: %s: %v", f.what, f.err)
			f.check(t, f.err)
		}
	}
	assertDefault := func(t *testing.T, fs []failure) {
		for _, f := range fs {
			require.Error(t, f.err, f.what)
			assert.NotContains(t, f.err.Error(), `instance "`, f.what)
			f.check(t, f.err)
		}
	}

	assertNamed(t, failures(pools.Orders))
	assertDefault(t, failures(pools.Default))
	// The calls fail on their own: the pools go on serving.
	for _, p := range []*sprocketspg.Pool{pools.Orders, pools.Default} {
		_, err := p.Execute(ctx, "SELECT 1")
		require.NoError(t, err, p.Name())
	}

	app.RequireStop()
	assertNamed(t, afterStop(pools.Orders))
	assertDefault(t, afterStop(pools.Default))
}
