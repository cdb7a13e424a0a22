package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
)

// newPgxpoolAt connects a pgxpool to the database at url, as newPgxpool
// does to a fresh database of the test binary's server.
func newPgxpoolAt(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	require.NoError(t, pool.Ping(ctx))
	t.Cleanup(pool.Close)
	return pool
}

// checksOf returns the readiness document's checks.
func checksOf(t *testing.T, doc map[string]any) map[string]any {
	t.Helper()
	checks, ok := doc["checks"].(map[string]any)
	require.True(t, ok, "checks is an object: %v", doc)
	return checks
}

// checkStatus returns the status of the single observation under name.
func checkStatus(t *testing.T, checks map[string]any, name string) string {
	t.Helper()
	list, ok := checks[name].([]any)
	require.True(t, ok, "%s is a list: %v", name, checks)
	require.Len(t, list, 1, name)
	m, ok := list[0].(map[string]any)
	require.True(t, ok, name)
	s, _ := m["status"].(string)
	return s
}

// names returns the Names of reports, in order.
func names(reports []health.Report) []string {
	out := make([]string, 0, len(reports))
	for _, r := range reports {
		out = append(out, r.Name)
	}
	return out
}

// sleepingDB is a real pool whose Ping runs a query that takes d, so that
// a test can tell concurrent pings from sequential ones.
type sleepingDB struct {
	pool *pgxpool.Pool
	d    time.Duration
}

func (s sleepingDB) Ping(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, "SELECT pg_sleep($1)", s.d.Seconds())
	if err != nil {
		return fmt.Errorf("sleeping ping: %w", err)
	}
	return nil
}

func (s sleepingDB) Stats() health.Stats { return health.StatsFromPgxpool(s.pool.Stat()) }

// errBox holds an error, or none, in an atomic.Value, which cannot hold
// nil.
type errBox struct{ err error }

// switchableDB is a real pool whose Ping fails with a given error until
// it is cleared, for tests of a database that fails and recovers.
type switchableDB struct {
	health.Database
	err atomic.Value // errBox
}

func (d *switchableDB) Ping(ctx context.Context) error {
	if b, _ := d.err.Load().(errBox); b.err != nil {
		return b.err
	}
	return d.Database.Ping(ctx)
}

func TestWithNameCheckNames(t *testing.T) {
	t.Parallel()
	db, _ := newCounted(t, nil)
	replica, _ := newCounted(t, nil)
	c := health.NewChecker(db, health.WithName("orders"), health.WithReplica(replica))
	c.SetReady(true)

	r := c.Check(context.Background())
	assert.Equal(t, health.StatusPass, r.Status, r.Error)
	assert.Equal(t, "orders", r.Name)
	require.NotNil(t, r.Replica)
	assert.Equal(t, "orders", r.Replica.Name, "a replica's report carries its database's name")
	assert.Nil(t, r.Instances)

	doc := get(t, serve(t, c), "/readyz").object(t)
	assert.ElementsMatch(t, []string{
		"postgres-orders:connections", "postgres-orders:responseTime",
		"postgres-orders-replica:connections", "postgres-orders-replica:responseTime",
	}, keys(checksOf(t, doc)))
}

func TestWithNameNamesErrors(t *testing.T) {
	t.Parallel()
	pool := newPgxpool(t, nil)
	down := failingDB{Database: health.FromPgxpool(pool), err: errors.New("connection refused")}

	unnamed := health.NewChecker(down).Check(context.Background())
	assert.Equal(t, "connection refused", unnamed.Error, "one unnamed database: the error word for word")
	assert.Equal(t, unnamed, unnamed.Databases()[0])

	named := health.NewChecker(down, health.WithName("orders")).Check(context.Background())
	assert.Equal(t, health.StatusFail, named.Status)
	assert.Equal(t, "postgres-orders: connection refused", named.Error)
	own := named.Databases()
	require.Len(t, own, 1)
	assert.Equal(t, "connection refused", own[0].Error, "the database's own report has its own error")
}

func TestInstancesAllPass(t *testing.T) {
	t.Parallel()
	main, _ := newCounted(t, nil)
	orders, _ := newCounted(t, nil)
	billing, _ := newCounted(t, nil)
	c := health.NewChecker(main,
		health.WithInstance("orders", orders, nil),
		health.WithInstance("billing", billing, nil))
	c.SetReady(true)

	r := c.Check(context.Background())
	assert.Equal(t, health.StatusPass, r.Status, r.Error)
	assert.True(t, r.Available)
	assert.Empty(t, r.Error)
	assert.Empty(t, r.Name)
	assert.Equal(t, []string{"billing", "orders"}, names(r.Instances), "sorted by name")
	for _, in := range r.Instances {
		assert.Equal(t, health.StatusPass, in.Status, in.Name)
		assert.Positive(t, in.Latency, in.Name)
	}
	assert.Equal(t, []string{"", "billing", "orders"}, names(r.Databases()))
	for _, db := range []*countingDB{main, orders, billing} {
		assert.EqualValues(t, 1, db.pings.Load())
	}

	ready := get(t, serve(t, c), "/readyz")
	require.Equal(t, http.StatusOK, ready.code, "%s", ready.body)
	doc := ready.object(t)
	assert.ElementsMatch(t, []string{"status", "checks"}, keys(doc), "no output when passing")
	assert.ElementsMatch(t, []string{
		"postgres:connections", "postgres:responseTime",
		"postgres-billing:connections", "postgres-billing:responseTime",
		"postgres-orders:connections", "postgres-orders:responseTime",
	}, keys(checksOf(t, doc)))
}

func TestInstancesPingConcurrently(t *testing.T) {
	t.Parallel()
	const sleep = 600 * time.Millisecond
	dbs := make([]sleepingDB, 3)
	for i := range dbs {
		dbs[i] = sleepingDB{pool: newPgxpool(t, nil), d: sleep}
	}
	c := health.NewChecker(dbs[0],
		health.WithTimeout(2*time.Second),
		health.WithInstance("a", dbs[1], nil),
		health.WithInstance("b", dbs[2], dbs[2]))

	began := time.Now()
	r := c.Check(context.Background())
	elapsed := time.Since(began)
	assert.Equal(t, health.StatusPass, r.Status, r.Error)
	assert.GreaterOrEqual(t, elapsed, sleep)
	assert.Less(t, elapsed, 3*sleep, "four pings of %s each, one after the other, would take %s", sleep, 4*sleep)
}

func TestInstanceRulesPerDatabase(t *testing.T) {
	t.Parallel()

	t.Run("saturated instance warns without a ping", func(t *testing.T) {
		t.Parallel()
		main, _ := newCounted(t, nil)
		orders, pool := newCounted(t, func(c *pgxpool.Config) { c.MaxConns = 2 })
		c := health.NewChecker(main, health.WithTimeout(10*time.Second), health.WithInstance("orders", orders, nil))
		c.SetReady(true)
		release := saturate(t, pool)
		defer release()

		began := time.Now()
		ready := get(t, serve(t, c), "/readyz")
		assert.Less(t, time.Since(began), time.Second, "readiness must not wait for a connection")
		require.Equal(t, http.StatusOK, ready.code, "%s", ready.body)
		doc := ready.object(t)
		assert.Equal(t, "warn", doc["status"])
		assert.Equal(t, "postgres-orders: pool saturated: all 2 connections in use", doc["output"])
		checks := checksOf(t, doc)
		assert.ElementsMatch(t, []string{"postgres:connections", "postgres:responseTime", "postgres-orders:connections"},
			keys(checks), "no response time without a ping")
		assert.Equal(t, "pass", checkStatus(t, checks, "postgres:connections"))
		assert.Equal(t, "warn", checkStatus(t, checks, "postgres-orders:connections"))
		assert.Zero(t, orders.pings.Load())
	})

	t.Run("failing replica of an instance warns", func(t *testing.T) {
		t.Parallel()
		main, _ := newCounted(t, nil)
		orders, pool := newCounted(t, nil)
		replica := failingDB{Database: health.FromPgxpool(pool), err: errors.New("replica is gone")}
		c := health.NewChecker(main, health.WithInstance("orders", orders, replica))
		c.SetReady(true)

		r := c.Check(context.Background())
		assert.Equal(t, health.StatusWarn, r.Status)
		assert.True(t, r.Available)
		assert.Equal(t, "postgres-orders: read replica: replica is gone", r.Error)
		require.Len(t, r.Instances, 1)
		require.NotNil(t, r.Instances[0].Replica)
		assert.Equal(t, health.StatusFail, r.Instances[0].Replica.Status)

		checks := checksOf(t, get(t, serve(t, c), "/readyz").object(t))
		assert.Equal(t, "warn", checkStatus(t, checks, "postgres-orders:connections"))
		assert.Equal(t, "fail", checkStatus(t, checks, "postgres-orders-replica:connections"))
	})

	t.Run("failing main database with a passing instance", func(t *testing.T) {
		t.Parallel()
		pool := newPgxpool(t, nil)
		main := failingDB{Database: health.FromPgxpool(pool), err: errors.New("main is gone")}
		orders, _ := newCounted(t, nil)
		c := health.NewChecker(main, health.WithInstance("orders", orders, nil))
		c.SetReady(true)

		r := c.Check(context.Background())
		assert.Equal(t, health.StatusFail, r.Status)
		assert.Equal(t, "postgres: main is gone", r.Error)
		own := r.Databases()
		assert.Equal(t, health.StatusFail, own[0].Status)
		assert.Equal(t, "main is gone", own[0].Error)
		assert.Equal(t, health.StatusPass, own[1].Status)

		ready := get(t, serve(t, c), "/readyz")
		assert.Equal(t, http.StatusServiceUnavailable, ready.code)
		checks := checksOf(t, ready.object(t))
		assert.Equal(t, "fail", checkStatus(t, checks, "postgres:connections"))
		assert.Equal(t, "pass", checkStatus(t, checks, "postgres-orders:connections"))
	})
}

func TestOptionalInstance(t *testing.T) {
	t.Parallel()
	pool := newPgxpool(t, nil)
	down := failingDB{Database: health.FromPgxpool(pool), err: errors.New("connection refused")}
	up, _ := newCounted(t, nil)

	tests := []struct {
		name       string
		opts       []health.Option
		wantStatus health.Status
		wantCode   int
		wantError  string
	}{
		{
			name:       "required instance down",
			opts:       []health.Option{health.WithInstance("orders", down, nil)},
			wantStatus: health.StatusFail,
			wantCode:   http.StatusServiceUnavailable,
			wantError:  "postgres-orders: connection refused",
		},
		{
			name:       "optional instance down",
			opts:       []health.Option{health.WithInstance("orders", down, nil), health.OptionalInstance("orders")},
			wantStatus: health.StatusWarn,
			wantCode:   http.StatusOK,
			wantError:  "postgres-orders: connection refused",
		},
		{
			name:       "marked before it is added",
			opts:       []health.Option{health.OptionalInstance("orders"), health.WithInstance("orders", down, nil)},
			wantStatus: health.StatusWarn,
			wantCode:   http.StatusOK,
			wantError:  "postgres-orders: connection refused",
		},
		{
			name:       "another name marked",
			opts:       []health.Option{health.WithInstance("orders", down, nil), health.OptionalInstance("reporting")},
			wantStatus: health.StatusFail,
			wantCode:   http.StatusServiceUnavailable,
			wantError:  "postgres-orders: connection refused",
		},
		{
			name:       "optional instance up",
			opts:       []health.Option{health.WithInstance("orders", up, nil), health.OptionalInstance("orders")},
			wantStatus: health.StatusPass,
			wantCode:   http.StatusOK,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			main, _ := newCounted(t, nil)
			c := health.NewChecker(main, tt.opts...)
			c.SetReady(true)
			srv := serve(t, c)

			r := c.Check(context.Background())
			assert.Equal(t, tt.wantStatus, r.Status)
			assert.Equal(t, tt.wantStatus != health.StatusFail, r.Available)
			assert.Equal(t, tt.wantError, r.Error)

			ready := get(t, srv, "/readyz")
			assert.Equal(t, tt.wantCode, ready.code, "%s", ready.body)
			assert.Equal(t, string(tt.wantStatus), ready.object(t)["status"])

			status := get(t, srv, "/status")
			assert.Equal(t, tt.wantCode, status.code, "%s", status.body)
		})
	}

	t.Run("optional main database", func(t *testing.T) {
		t.Parallel()
		orders, _ := newCounted(t, nil)
		c := health.NewChecker(down, health.OptionalInstance(""), health.WithInstance("orders", orders, nil))
		r := c.Check(context.Background())
		assert.Equal(t, health.StatusWarn, r.Status)
		assert.True(t, r.Available)
		assert.Equal(t, "postgres: connection refused", r.Error)
		assert.Equal(t, health.StatusFail, r.Databases()[0].Status)
	})
}

// TestInstanceOutage stops a server of its own, under the instance
// "orders", while the main database stays on the test binary's server.
func TestInstanceOutage(t *testing.T) {
	t.Parallel()
	server := fxtest_helpers.StartServer(t)
	mainPool := newPgxpool(t, nil)
	ordersPool := newPgxpoolAt(t, server.NewDatabase(t))
	mainDB, ordersDB := health.FromPgxpool(mainPool), health.FromPgxpool(ordersPool)

	opts := []health.Option{health.WithCacheWindow(0), health.WithInstance("orders", ordersDB, nil)}
	required := health.NewChecker(mainDB, opts...)
	optional := health.NewChecker(mainDB, append(opts, health.OptionalInstance("orders"))...)
	for _, c := range []*health.Checker{required, optional} {
		c.SetReady(true)
	}
	requiredSrv, optionalSrv := serve(t, required), serve(t, optional)
	require.Equal(t, http.StatusOK, get(t, requiredSrv, "/readyz").code)
	require.Equal(t, http.StatusOK, get(t, optionalSrv, "/readyz").code)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := server.Stop(ctx); err != nil {
		t.Skipf("cannot stop the test's own server (%s backend): %v", server.Backend(), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		assert.NoError(t, server.Start(ctx))
	})

	down := eventually(t, requiredSrv, "/readyz", http.StatusServiceUnavailable, 3*time.Second)
	doc := down.object(t)
	assert.Equal(t, "fail", doc["status"])
	output, _ := doc["output"].(string)
	assert.True(t, strings.HasPrefix(output, "postgres-orders: "), "output names the instance: %q", output)
	checks := checksOf(t, doc)
	assert.Contains(t, checks, "postgres:connections")
	assert.Contains(t, checks, "postgres:responseTime")
	assert.Contains(t, checks, "postgres-orders:connections")
	assert.Equal(t, "pass", checkStatus(t, checks, "postgres:connections"))
	assert.Equal(t, "fail", checkStatus(t, checks, "postgres-orders:connections"))

	// The other instance keeps serving.
	_, err := mainPool.Exec(ctx, "SELECT 1")
	require.NoError(t, err)

	status := get(t, requiredSrv, "/status")
	assert.Equal(t, http.StatusServiceUnavailable, status.code)
	sdoc := status.object(t)
	assert.Equal(t, "unavailable", sdoc["status"])
	instances, ok := sdoc["instances"].(map[string]any)
	require.True(t, ok, "%s", status.body)
	assert.ElementsMatch(t, []string{"orders"}, keys(instances))
	assert.ElementsMatch(t, []string{"pool_free", "pool_size", "status"}, keys(instances["orders"].(map[string]any)))
	assert.Equal(t, "unavailable", instances["orders"].(map[string]any)["status"])

	// The optional instance down is warn, and the service stays ready.
	warn := get(t, optionalSrv, "/readyz")
	require.Equal(t, http.StatusOK, warn.code, "%s", warn.body)
	wdoc := warn.object(t)
	assert.Equal(t, "warn", wdoc["status"])
	output, _ = wdoc["output"].(string)
	assert.True(t, strings.HasPrefix(output, "postgres-orders: "), "output names the instance: %q", output)
	assert.Equal(t, "fail", checkStatus(t, checksOf(t, wdoc), "postgres-orders:connections"))
	ostatus := get(t, optionalSrv, "/status")
	assert.Equal(t, http.StatusOK, ostatus.code, "%s", ostatus.body)
	odoc := ostatus.object(t)
	assert.Equal(t, "ok", odoc["status"])
	assert.Equal(t, "unavailable", odoc["instances"].(map[string]any)["orders"].(map[string]any)["status"])

	require.NoError(t, server.Start(ctx))
	up := eventually(t, requiredSrv, "/readyz", http.StatusOK, 3*time.Second)
	assert.Equal(t, "pass", up.object(t)["status"], "%s", up.body)
	assert.Equal(t, "pass", get(t, optionalSrv, "/readyz").object(t)["status"])
	back := get(t, requiredSrv, "/status")
	assert.Equal(t, http.StatusOK, back.code)
	assert.Equal(t, "ok", back.object(t)["instances"].(map[string]any)["orders"].(map[string]any)["status"])
}

func TestStatusDocumentInstances(t *testing.T) {
	t.Parallel()
	originalKeys := []string{"application", "environment", "postgres", "status", "version"}
	poolKeys := []string{"pool_free", "pool_size"}

	t.Run("one database, named or not", func(t *testing.T) {
		t.Parallel()
		for _, opts := range [][]health.Option{nil, {health.WithName("orders")}} {
			db, _ := newCounted(t, nil)
			c := health.NewChecker(db, opts...)
			srv := serve(t, c)
			closed := get(t, srv, "/status").object(t)
			assert.ElementsMatch(t, originalKeys, keys(closed))
			c.SetReady(true)
			doc := get(t, srv, "/status").object(t)
			assert.ElementsMatch(t, originalKeys, keys(doc))
			assert.ElementsMatch(t, poolKeys, keys(doc["postgres"].(map[string]any)))
		}
	})

	t.Run("several databases", func(t *testing.T) {
		t.Parallel()
		main, mainPool := newCounted(t, nil)
		orders, ordersPool := newCounted(t, func(c *pgxpool.Config) { c.MinConns = 2 })
		reporting, _ := newCounted(t, nil)
		c := health.NewChecker(main,
			health.WithApplication("svc"), health.WithEnvironment("test"), health.WithVersion("1"),
			health.WithInstance("reporting", reporting, nil),
			health.WithInstance("orders", orders, nil))
		srv := serve(t, c)

		closed := get(t, srv, "/status")
		assert.Equal(t, http.StatusServiceUnavailable, closed.code)
		assert.JSONEq(t, `{"application":"svc","environment":"test","postgres":{"pool_free":0,"pool_size":0},`+
			`"instances":{"orders":{"pool_free":0,"pool_size":0,"status":"unavailable"},`+
			`"reporting":{"pool_free":0,"pool_size":0,"status":"unavailable"}},"status":"unavailable","version":"1"}`,
			string(closed.body))
		assert.Zero(t, main.pings.Load()+orders.pings.Load()+reporting.pings.Load(), "a closed gate does not ping")

		c.SetReady(true)
		r := get(t, srv, "/status")
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		doc := r.object(t)
		assert.ElementsMatch(t, append(originalKeys, "instances"), keys(doc))
		assert.Equal(t, "ok", doc["status"])
		assert.ElementsMatch(t, poolKeys, keys(doc["postgres"].(map[string]any)))
		instances, ok := doc["instances"].(map[string]any)
		require.True(t, ok, "%s", r.body)
		assert.ElementsMatch(t, []string{"orders", "reporting"}, keys(instances))
		for name, v := range instances {
			in, ok := v.(map[string]any)
			require.True(t, ok, name)
			assert.ElementsMatch(t, []string{"pool_free", "pool_size", "status"}, keys(in), name)
			assert.Equal(t, "ok", in["status"], name)
			assert.GreaterOrEqual(t, in["pool_size"], 1.0, name)
		}
		assert.EqualValues(t, ordersPool.Stat().TotalConns(), instances["orders"].(map[string]any)["pool_size"])
		assert.EqualValues(t, mainPool.Stat().TotalConns(), doc["postgres"].(map[string]any)["pool_size"],
			"postgres is the main database's pool")
		// Keys in the original's order, with instances where it sorts.
		assert.True(t, strings.HasPrefix(string(r.body), `{"application":"svc","environment":"test","instances":{"orders":`), "%s", r.body)
	})
}

func TestCombine(t *testing.T) {
	t.Parallel()
	ordersDB, ordersPool := newCounted(t, nil)
	reportingDB, _ := newCounted(t, nil)
	orders := health.NewChecker(ordersDB, health.WithName("orders"), health.WithApplication("svc"))
	reporting := health.NewChecker(reportingDB, health.WithName("reporting"), health.OptionalInstance("reporting"),
		health.WithTimeout(time.Second))
	orders.SetReady(true)
	reporting.SetReady(true)

	c := health.Combine(orders, reporting)
	assert.True(t, c.Ready(), "open while every part's gate is")
	srv := serve(t, c)

	ready := get(t, srv, "/readyz")
	require.Equal(t, http.StatusOK, ready.code, "%s", ready.body)
	doc := ready.object(t)
	assert.Equal(t, "pass", doc["status"])
	assert.ElementsMatch(t, []string{
		"postgres-orders:connections", "postgres-orders:responseTime",
		"postgres-reporting:connections", "postgres-reporting:responseTime",
	}, keys(checksOf(t, doc)))

	r := c.Check(context.Background())
	assert.Equal(t, "orders", r.Name, "without an unnamed database the first Checker's is the main one")
	assert.Equal(t, []string{"reporting"}, names(r.Instances))

	status := get(t, srv, "/status")
	require.Equal(t, http.StatusOK, status.code, "%s", status.body)
	sdoc := status.object(t)
	assert.Equal(t, "svc", sdoc["application"], "the first Checker's names")
	assert.EqualValues(t, ordersPool.Stat().TotalConns(), sdoc["postgres"].(map[string]any)["pool_size"])
	assert.ElementsMatch(t, []string{"reporting"}, keys(sdoc["instances"].(map[string]any)))

	t.Run("unnamed database is the main one", func(t *testing.T) {
		t.Parallel()
		def, _ := newCounted(t, nil)
		defaultChecker := health.NewChecker(def)
		defaultChecker.SetReady(true)
		r := health.Combine(orders, defaultChecker).Check(context.Background())
		assert.Empty(t, r.Name)
		assert.Equal(t, []string{"orders"}, names(r.Instances))
		assert.Equal(t, []string{"", "orders"}, names(r.Databases()))
	})

	t.Run("parts keep their optional flag", func(t *testing.T) {
		t.Parallel()
		pool := newPgxpool(t, nil)
		down := health.NewChecker(failingDB{Database: health.FromPgxpool(pool), err: errors.New("connection refused")},
			health.WithName("reporting"), health.OptionalInstance("reporting"))
		down.SetReady(true)
		c := health.Combine(orders, down)
		ready := get(t, serve(t, c), "/readyz")
		assert.Equal(t, http.StatusOK, ready.code, "%s", ready.body)
		assert.Equal(t, "warn", ready.object(t)["status"])
		assert.Equal(t, "postgres-reporting: connection refused", c.Check(context.Background()).Error)

		required := health.NewChecker(failingDB{Database: health.FromPgxpool(pool), err: errors.New("connection refused")},
			health.WithName("reporting"))
		required.SetReady(true)
		ready = get(t, serve(t, health.Combine(orders, required)), "/readyz")
		assert.Equal(t, http.StatusServiceUnavailable, ready.code, "%s", ready.body)
	})

	t.Run("instances of the parts come along", func(t *testing.T) {
		t.Parallel()
		extra, _ := newCounted(t, nil)
		withInstance := health.NewChecker(reportingDB, health.WithName("reporting"), health.WithInstance("archive", extra, nil))
		withInstance.SetReady(true)
		r := health.Combine(orders, withInstance).Check(context.Background())
		assert.Equal(t, []string{"orders", "archive", "reporting"}, names(r.Databases()))
		assert.Equal(t, health.StatusPass, r.Status, r.Error)
	})

	t.Run("combined again", func(t *testing.T) {
		t.Parallel()
		def, _ := newCounted(t, nil)
		defaultChecker := health.NewChecker(def)
		defaultChecker.SetReady(true)
		nested := health.Combine(health.Combine(orders, reporting), defaultChecker)
		assert.True(t, nested.Ready())
		r := nested.Check(context.Background())
		assert.Equal(t, []string{"", "orders", "reporting"}, names(r.Databases()))
	})
}

func TestCombineGate(t *testing.T) {
	t.Parallel()
	ordersDB, _ := newCounted(t, nil)
	reportingDB, _ := newCounted(t, nil)
	clock := newFakeClock()
	orders := health.NewChecker(ordersDB, health.WithName("orders"), health.WithClock(clock.Now))
	reporting := health.NewChecker(reportingDB, health.WithName("reporting"))
	c := health.Combine(orders, reporting)
	srv := serve(t, c)
	gateClosed := `{"status":"fail","output":"service is starting or stopping"}`

	// Neither part is ready yet.
	assert.False(t, c.Ready())
	r := get(t, srv, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, r.code)
	assert.JSONEq(t, gateClosed, string(r.body))

	orders.SetReady(true)
	assert.False(t, c.Ready(), "one part is still not ready")
	r = get(t, srv, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, r.code)
	assert.JSONEq(t, gateClosed, string(r.body))
	assert.Equal(t, http.StatusServiceUnavailable, get(t, srv, "/status").code)
	assert.Zero(t, ordersDB.pings.Load()+reportingDB.pings.Load(), "a closed gate does not ping")

	reporting.SetReady(true)
	require.Equal(t, http.StatusOK, get(t, srv, "/readyz").code)
	require.Equal(t, http.StatusOK, get(t, srv, "/readyz").code)
	assert.EqualValues(t, 1, ordersDB.pings.Load(), "the second probe reused the first result")

	// The combined Checker's own gate, on top of the parts'.
	c.SetReady(false)
	assert.True(t, orders.Ready())
	assert.True(t, reporting.Ready())
	r = get(t, srv, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, r.code)
	assert.JSONEq(t, gateClosed, string(r.body))
	c.SetReady(true)
	require.Equal(t, http.StatusOK, get(t, srv, "/readyz").code)
	assert.EqualValues(t, 2, ordersDB.pings.Load(), "reopening the gate discards what was cached")

	// A part's gate closing and opening again discards the combined
	// Checker's result too, though its clock stands still.
	reporting.SetReady(false)
	assert.Equal(t, http.StatusServiceUnavailable, get(t, srv, "/readyz").code)
	reporting.SetReady(true)
	require.Equal(t, http.StatusOK, get(t, srv, "/readyz").code)
	assert.EqualValues(t, 3, ordersDB.pings.Load())
}

func TestCombineDrain(t *testing.T) {
	t.Parallel()
	a, _ := newCounted(t, nil)
	b, _ := newCounted(t, nil)
	short := health.NewChecker(a, health.WithName("a"), health.WithDrainDelay(50*time.Millisecond))
	long := health.NewChecker(b, health.WithName("b"), health.WithDrainDelay(300*time.Millisecond))
	short.SetReady(true)
	long.SetReady(true)
	c := health.Combine(short, long)
	assert.Equal(t, 300*time.Millisecond, c.DrainDelay(), "the longest of the parts'")

	began := time.Now()
	require.NoError(t, c.Drain(context.Background()))
	assert.GreaterOrEqual(t, time.Since(began), 300*time.Millisecond)
	assert.False(t, c.Ready())
	assert.True(t, short.Ready(), "the parts' gates are their owners'")
	assert.True(t, long.Ready())
	assert.Equal(t, http.StatusServiceUnavailable, get(t, serve(t, c), "/readyz").code)
}

func TestCombinePanics(t *testing.T) {
	t.Parallel()
	db, _ := newCounted(t, nil)
	c := health.NewChecker(db)
	assert.PanicsWithValue(t, "health: Combine needs at least one Checker", func() { health.Combine() })
	assert.PanicsWithValue(t, "health: Combine of a nil Checker", func() { health.Combine(nil) })
	assert.PanicsWithValue(t, "health: Combine of a nil Checker", func() { health.Combine(c, nil) })
}

func TestDuplicateNamesKeepTheFirst(t *testing.T) {
	t.Parallel()
	main, _ := newCounted(t, nil)
	first, _ := newCounted(t, nil)
	second, _ := newCounted(t, nil)
	shadow, _ := newCounted(t, nil)
	core, logs := observer.New(zapcore.WarnLevel)

	c := health.NewChecker(main,
		health.WithName("orders"),
		health.WithInstance("orders", shadow, nil),
		health.WithInstance("reporting", first, nil),
		health.WithInstance("reporting", second, nil),
		health.WithInstance("archive", nil, nil),
		health.WithLogger(zap.New(core)))
	r := c.Check(context.Background())
	assert.Equal(t, health.StatusPass, r.Status, r.Error)
	assert.Equal(t, []string{"orders", "reporting"}, names(r.Databases()))
	assert.EqualValues(t, 1, main.pings.Load())
	assert.EqualValues(t, 1, first.pings.Load())
	assert.Zero(t, second.pings.Load(), "the second database named reporting is left out")
	assert.Zero(t, shadow.pings.Load(), "the main database keeps its name")

	var left []string
	for _, e := range logs.All() {
		left = append(left, e.ContextMap()["database"].(string))
	}
	assert.Equal(t, []string{"postgres-archive", "postgres-orders", "postgres-reporting"}, left)

	t.Run("combine", func(t *testing.T) {
		t.Parallel()
		core, logs := observer.New(zapcore.WarnLevel)
		a := health.NewChecker(first, health.WithName("orders"), health.WithLogger(zap.New(core)))
		b := health.NewChecker(second, health.WithName("orders"))
		combined := health.Combine(a, b)
		assert.Equal(t, []string{"orders"}, names(combined.Check(context.Background()).Databases()))
		require.Equal(t, 1, logs.Len())
		assert.Equal(t, "postgres-orders", logs.All()[0].ContextMap()["database"])
	})
}

func TestLogChangesNameTheDatabase(t *testing.T) {
	t.Parallel()
	pool := newPgxpool(t, nil)
	main, _ := newCounted(t, nil)
	down := &switchableDB{Database: health.FromPgxpool(pool)}
	down.err.Store(errBox{errors.New("connection refused")})
	core, logs := observer.New(zapcore.InfoLevel)
	c := health.NewChecker(main, health.WithCacheWindow(0), health.WithLogger(zap.New(core)),
		health.WithInstance("orders", down, nil), health.OptionalInstance("orders"))

	c.Check(context.Background())
	require.Equal(t, 1, logs.Len(), "only the change is logged: %v", logs.All())
	e := logs.All()[0]
	assert.Equal(t, "postgres health check failing", e.Message)
	assert.Equal(t, "postgres-orders", e.ContextMap()["database"])
	assert.Equal(t, true, e.ContextMap()["optional"])
	assert.Equal(t, "connection refused", e.ContextMap()["error"])

	c.Check(context.Background())
	assert.Equal(t, 1, logs.Len(), "no change, no log")

	down.err.Store(errBox{})
	c.Check(context.Background())
	require.Equal(t, 2, logs.Len())
	e = logs.All()[1]
	assert.Equal(t, "postgres health check passing again", e.Message)
	assert.Equal(t, "postgres-orders", e.ContextMap()["database"])
	assert.Equal(t, "fail", e.ContextMap()["previous"])
}

func TestPrintingInstances(t *testing.T) {
	t.Parallel()
	main, _ := newCounted(t, nil)
	orders, _ := newCounted(t, nil)
	secret := "s3cret-value"
	pool := newPgxpool(t, nil)
	down := failingDB{Database: health.FromPgxpool(pool),
		err: errors.New("connect postgres://app:" + secret + "@db/reporting failed")}
	c := health.NewChecker(main, health.WithName("billing"), health.OptionalInstance("billing"),
		health.WithInstance("orders", orders, orders), health.WithInstance("reporting", down, nil))

	s := c.String()
	assert.Contains(t, s, "Name:billing Optional:true")
	assert.Contains(t, s, "Instances:[{Name:orders Database:*health_test.countingDB Replica:*health_test.countingDB} {Name:reporting Database:health_test.failingDB}]")
	goSyntax := fmt.Sprintf("%#v", c)
	assert.Contains(t, goSyntax, `name:"billing", optional:true`)
	assert.Contains(t, goSyntax, `{name:"reporting", db:health_test.failingDB, optional:false}`)
	js, err := json.Marshal(c)
	require.NoError(t, err)
	assert.Contains(t, string(js), `"instances":[{"name":"orders"`)

	r := c.Check(context.Background())
	require.Equal(t, health.StatusFail, r.Status)
	outputs := map[string]string{
		"checker %v": fmt.Sprintf("%v", c),
		"report %v":  fmt.Sprintf("%v", r),
		"report %+v": fmt.Sprintf("%+v", r),
		"report %#v": fmt.Sprintf("%#v", r),
		"report %s":  fmt.Sprintf("%s", r),
		"readyz":     string(get(t, serveReady(t, c), "/readyz").body),
	}
	var logged strings.Builder
	logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&logged), zapcore.DebugLevel))
	logger.Info("report", zap.Object("report", r), zap.Object("checker", c))
	outputs["zap"] = logged.String()
	for name, out := range outputs {
		assert.NotContains(t, out, secret, name)
	}
	assert.Contains(t, outputs["report %v"], `Name:"billing" Instances:[{Status:pass`)
	assert.Contains(t, outputs["report %v"], `Name:"reporting" Instances:[]}`)
	assert.Contains(t, outputs["report %#v"], `Name:"billing", Instances:[]health.Report{health.Report{Status:"pass"`)
	assert.Contains(t, outputs["zap"], `"instances":[{"name":"orders","status":"pass"`)
	assert.Contains(t, outputs["zap"], `"name":"billing"`)
}

// serveReady opens c's gate and serves it.
func serveReady(t *testing.T, c *health.Checker) *httptest.Server {
	t.Helper()
	c.SetReady(true)
	return serve(t, c)
}
