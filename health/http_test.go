package health_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
)

func TestLivezHandler(t *testing.T) {
	t.Parallel()
	db, _ := newCounted(t, nil)
	c := health.NewChecker(db)
	srv := serve(t, c)

	for _, ready := range []bool{false, true} {
		c.SetReady(ready)
		r := get(t, srv, "/livez")
		assert.Equal(t, http.StatusOK, r.code)
		assert.Equal(t, "application/health+json", r.header.Get("Content-Type"))
		assert.Equal(t, "no-store", r.header.Get("Cache-Control"))
		assert.JSONEq(t, `{"status":"pass"}`, string(r.body))
	}
	assert.Zero(t, db.pings.Load(), "liveness never touches the database")
}

func TestReadyzGateBeforeSetReady(t *testing.T) {
	t.Parallel()
	db, _ := newCounted(t, nil)
	c := health.NewChecker(db)
	srv := serve(t, c)

	r := get(t, srv, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, r.code)
	assert.Equal(t, "application/health+json", r.header.Get("Content-Type"))
	assert.Equal(t, "no-store", r.header.Get("Cache-Control"))
	assert.JSONEq(t, `{"status":"fail","output":"service is starting or stopping"}`, string(r.body))

	s := get(t, srv, "/status")
	assert.Equal(t, http.StatusServiceUnavailable, s.code)
	doc := s.object(t)
	assert.Equal(t, "unavailable", doc["status"])
	assert.Equal(t, map[string]any{"pool_free": 0.0, "pool_size": 0.0}, doc["postgres"])

	assert.Zero(t, db.pings.Load(), "a closed gate does not ping")

	c.SetReady(true)
	r = get(t, srv, "/readyz")
	assert.Equal(t, http.StatusOK, r.code, "%s", r.body)
	assert.EqualValues(t, 1, db.pings.Load())
}

func TestReadyzBody(t *testing.T) {
	t.Parallel()
	db, pool := newCounted(t, nil)
	c := health.NewChecker(db)
	c.SetReady(true)
	srv := serve(t, c)

	began := time.Now().Add(-time.Second)
	r := get(t, srv, "/readyz")
	require.Equal(t, http.StatusOK, r.code, "%s", r.body)
	assert.Equal(t, "application/health+json", r.header.Get("Content-Type"))
	assert.Equal(t, "no-store", r.header.Get("Cache-Control"))

	doc := r.object(t)
	assert.ElementsMatch(t, []string{"status", "checks"}, keys(doc), "no output when passing")
	assert.Equal(t, "pass", doc["status"])
	checks, ok := doc["checks"].(map[string]any)
	require.True(t, ok, "checks is an object: %s", r.body)
	assert.ElementsMatch(t, []string{"postgres:connections", "postgres:responseTime"}, keys(checks))

	item := func(name string) map[string]any {
		list, ok := checks[name].([]any)
		require.True(t, ok, "%s is a list", name)
		require.Len(t, list, 1)
		m, ok := list[0].(map[string]any)
		require.True(t, ok)
		assert.ElementsMatch(t, []string{"componentType", "observedValue", "observedUnit", "status", "time"}, keys(m), name)
		assert.Equal(t, "datastore", m["componentType"], name)
		assert.Equal(t, "pass", m["status"], name)
		at, err := time.Parse(time.RFC3339, m["time"].(string))
		require.NoError(t, err, name)
		assert.WithinRange(t, at, began.Truncate(time.Second), time.Now().Add(time.Second), name)
		return m
	}
	conns := item("postgres:connections")
	assert.Equal(t, "connections", conns["observedUnit"])
	assert.EqualValues(t, pool.Stat().TotalConns(), conns["observedValue"])
	assert.GreaterOrEqual(t, conns["observedValue"], 1.0)

	rt := item("postgres:responseTime")
	assert.Equal(t, "ms", rt["observedUnit"])
	ms, ok := rt["observedValue"].(float64)
	require.True(t, ok)
	assert.Greater(t, ms, 0.0)
	assert.Less(t, ms, 3000.0)

	head := do(t, srv, http.MethodHead, "/readyz")
	assert.Equal(t, http.StatusOK, head.code)
	assert.Empty(t, head.body)
}

func TestReadyzSetReadyFalseIsImmediate(t *testing.T) {
	t.Parallel()
	db, _ := newCounted(t, nil)
	clock := newFakeClock()
	c := health.NewChecker(db, health.WithClock(clock.Now))
	c.SetReady(true)
	srv := serve(t, c)

	require.Equal(t, http.StatusOK, get(t, srv, "/readyz").code)
	require.Equal(t, http.StatusOK, get(t, srv, "/status").code)
	require.EqualValues(t, 1, db.pings.Load(), "the second probe reused the first result")

	// The clock stands still: the passing result is still in its window.
	c.SetReady(false)
	r := get(t, srv, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, r.code)
	assert.JSONEq(t, `{"status":"fail","output":"service is starting or stopping"}`, string(r.body))
	s := get(t, srv, "/status")
	assert.Equal(t, http.StatusServiceUnavailable, s.code)
	assert.Equal(t, "unavailable", s.object(t)["status"])
	assert.EqualValues(t, 1, db.pings.Load())

	// Reopening the gate discards what was cached before.
	c.SetReady(true)
	assert.Equal(t, http.StatusOK, get(t, srv, "/readyz").code)
	assert.EqualValues(t, 2, db.pings.Load())
}

func TestStatusHandler(t *testing.T) {
	t.Parallel()
	db, _ := newCounted(t, nil)
	c := health.NewChecker(db,
		health.WithApplication("orders"),
		health.WithEnvironment("production"),
		health.WithVersion("1.2.3"))
	c.SetReady(true)
	srv := serve(t, c)

	r := get(t, srv, "/status")
	require.Equal(t, http.StatusOK, r.code, "%s", r.body)
	assert.Equal(t, "application/json", r.header.Get("Content-Type"))
	assert.Equal(t, "no-store", r.header.Get("Cache-Control"))
	doc := r.object(t)
	assert.ElementsMatch(t, []string{"application", "environment", "postgres", "status", "version"}, keys(doc))
	assert.Equal(t, "orders", doc["application"])
	assert.Equal(t, "production", doc["environment"])
	assert.Equal(t, "1.2.3", doc["version"])
	assert.Equal(t, "ok", doc["status"])
	pg, ok := doc["postgres"].(map[string]any)
	require.True(t, ok)
	assert.ElementsMatch(t, []string{"pool_free", "pool_size"}, keys(pg))
	assert.GreaterOrEqual(t, pg["pool_size"], 1.0)
	assert.GreaterOrEqual(t, pg["pool_free"], 0.0)
	assert.LessOrEqual(t, pg["pool_free"], pg["pool_size"])
}

// TestStatusNames is not parallel: it sets environment variables.
func TestStatusNames(t *testing.T) {
	pool := newPgxpool(t, nil)
	db := health.FromPgxpool(pool)
	names := func(t *testing.T, opts ...health.Option) map[string]any {
		t.Helper()
		c := health.NewChecker(db, opts...)
		c.SetReady(true)
		doc := get(t, serve(t, c), "/status").object(t)
		return map[string]any{"application": doc["application"], "environment": doc["environment"], "version": doc["version"]}
	}

	t.Run("environment", func(t *testing.T) {
		t.Setenv("SERVICE", "orders")
		t.Setenv("ENVIRONMENT", "staging")
		t.Setenv("VERSION", "4.5.6")
		assert.Equal(t, map[string]any{"application": "orders", "environment": "staging", "version": "4.5.6"}, names(t))
	})
	t.Run("options win", func(t *testing.T) {
		t.Setenv("SERVICE", "orders")
		t.Setenv("ENVIRONMENT", "staging")
		t.Setenv("VERSION", "4.5.6")
		assert.Equal(t, map[string]any{"application": "billing", "environment": "production", "version": "7"},
			names(t, health.WithApplication("billing"), health.WithEnvironment("production"), health.WithVersion("7")))
	})
	t.Run("unknown", func(t *testing.T) {
		for _, name := range []string{"SERVICE", "ENVIRONMENT", "VERSION"} {
			t.Setenv(name, "") // restores the variable afterwards
			require.NoError(t, os.Unsetenv(name))
		}
		assert.Equal(t, map[string]any{"application": "unknown", "environment": "unknown", "version": "unknown"}, names(t))
	})
	t.Run("empty counts as unset", func(t *testing.T) {
		t.Setenv("SERVICE", "")
		t.Setenv("ENVIRONMENT", "staging")
		t.Setenv("VERSION", "")
		assert.Equal(t, map[string]any{"application": "unknown", "environment": "staging", "version": "unknown"},
			names(t, health.WithVersion("")))
	})
}

func TestHandlersMethods(t *testing.T) {
	t.Parallel()
	db, _ := newCounted(t, nil)
	c := health.NewChecker(db)
	c.SetReady(true)
	srv := serve(t, c)

	for _, path := range []string{"/livez", "/readyz", "/status"} {
		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
			r := do(t, srv, method, path)
			assert.Equal(t, http.StatusMethodNotAllowed, r.code, "%s %s", method, path)
			assert.Equal(t, "GET, HEAD", r.header.Get("Allow"), "%s %s", method, path)
		}
		head := do(t, srv, http.MethodHead, path)
		assert.Equal(t, http.StatusOK, head.code, path)
		assert.Empty(t, head.body, path)
		assert.NotEmpty(t, head.header.Get("Content-Length"), path)
		assert.Equal(t, "no-store", head.header.Get("Cache-Control"), path)
	}

	// The handlers check the method themselves, mounted without Register.
	alone := do(t, serveHandler(t, c.ReadinessHandler()), http.MethodPost, "/")
	assert.Equal(t, http.StatusMethodNotAllowed, alone.code)
	assert.Equal(t, "GET, HEAD", alone.header.Get("Allow"))
}

func serveHandler(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func TestReadyzSaturatedPool(t *testing.T) {
	t.Parallel()
	db, pool := newCounted(t, func(c *pgxpool.Config) { c.MaxConns = 2 })
	c := health.NewChecker(db)
	c.SetReady(true)
	srv := serve(t, c)

	release := saturate(t, pool)
	defer release()

	began := time.Now()
	r := get(t, srv, "/readyz")
	elapsed := time.Since(began)
	assert.Less(t, elapsed, time.Second, "readiness must not wait for a connection")
	require.Equal(t, http.StatusOK, r.code, "%s", r.body)
	doc := r.object(t)
	assert.Equal(t, "warn", doc["status"])
	assert.Equal(t, "pool saturated: all 2 connections in use", doc["output"])
	checks := doc["checks"].(map[string]any)
	assert.ElementsMatch(t, []string{"postgres:connections"}, keys(checks), "no response time without a ping")
	conns := checks["postgres:connections"].([]any)[0].(map[string]any)
	assert.Equal(t, "warn", conns["status"])
	assert.Equal(t, 2.0, conns["observedValue"])

	s := get(t, srv, "/status")
	assert.Equal(t, http.StatusOK, s.code)
	assert.Equal(t, "ok", s.object(t)["status"])
	assert.Zero(t, db.pings.Load())
}

// TestHealthServerOutage stops the test server, so it must not run in
// parallel with other tests.
func TestHealthServerOutage(t *testing.T) {
	server := fxtest_helpers.Server(t)
	db, _ := newCounted(t, nil)
	c := health.NewChecker(db)
	c.SetReady(true)
	srv := serve(t, c)
	require.Equal(t, http.StatusOK, get(t, srv, "/readyz").code)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := server.Stop(ctx); err != nil {
		t.Skipf("cannot stop the test server (%s backend): %v", server.Backend(), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		assert.NoError(t, server.Start(ctx))
	})

	down := eventually(t, srv, "/readyz", http.StatusServiceUnavailable, 2*time.Second)
	doc := down.object(t)
	assert.Equal(t, "fail", doc["status"])
	assert.NotEmpty(t, doc["output"])
	checks := doc["checks"].(map[string]any)
	conns := checks["postgres:connections"].([]any)[0].(map[string]any)
	assert.Equal(t, "fail", conns["status"])

	status := eventually(t, srv, "/status", http.StatusServiceUnavailable, 2*time.Second)
	assert.Equal(t, "unavailable", status.object(t)["status"])
	assert.Equal(t, http.StatusOK, get(t, srv, "/livez").code)

	require.NoError(t, server.Start(ctx))
	up := eventually(t, srv, "/readyz", http.StatusOK, 2*time.Second)
	assert.Equal(t, "pass", up.object(t)["status"])
	assert.Equal(t, http.StatusOK, get(t, srv, "/status").code)
}
