package sprocketspg_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
)

// gateBody is the readiness document while the gate is closed; a failed
// ping gives a document with checks instead.
const gateBody = `{"status":"fail","output":"service is starting or stopping"}`

// healthServer mounts c on a test HTTP server closed when the test ends.
func healthServer(t *testing.T, c *health.Checker) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	health.Register(mux, c)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// healthGet probes path and returns the status code and the decoded body.
func healthGet(t *testing.T, srv *httptest.Server, path string) (int, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
	require.NoError(t, err)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var body map[string]any
	require.NoError(t, json.Unmarshal(raw, &body), "%s answered %s", path, raw)
	return resp.StatusCode, body
}

// healthEventually polls path until it answers code, failing t after
// within.
func healthEventually(t *testing.T, srv *httptest.Server, path string, code int, within time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, body := healthGet(t, srv, path)
		if got == code {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still answers %d %v after %s, want %d", path, got, body, within, code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// assertReadyBody checks a passing readiness document field by field.
func assertReadyBody(t *testing.T, body map[string]any) {
	t.Helper()
	assert.Equal(t, "pass", body["status"])
	assert.NotContains(t, body, "output")
	checks, ok := body["checks"].(map[string]any)
	require.True(t, ok, "checks: %v", body)
	assert.Len(t, checks, 2)
	for name, unit := range map[string]string{"postgres:connections": "connections", "postgres:responseTime": "ms"} {
		list, ok := checks[name].([]any)
		require.True(t, ok, name)
		require.Len(t, list, 1, name)
		item, ok := list[0].(map[string]any)
		require.True(t, ok, name)
		assert.Len(t, item, 5, "%s: %v", name, item)
		assert.Equal(t, "datastore", item["componentType"], name)
		assert.Equal(t, unit, item["observedUnit"], name)
		assert.Equal(t, "pass", item["status"], name)
		_, err := time.Parse(time.RFC3339, item["time"].(string))
		assert.NoError(t, err, name)
		assert.IsType(t, 0.0, item["observedValue"], name)
	}
	assert.GreaterOrEqual(t, checks["postgres:connections"].([]any)[0].(map[string]any)["observedValue"], 1.0)
}

func TestHealthModuleStarted(t *testing.T) {
	t.Parallel()
	var checker *health.Checker
	fxtest_helpers.NewApp(t, fx.Populate(&checker),
		sprocketspg.ProvideHealthOptions(health.WithApplication("orders"), health.WithVersion("1.4.2")))
	srv := healthServer(t, checker)

	code, body := healthGet(t, srv, "/readyz")
	require.Equal(t, http.StatusOK, code, "%v", body)
	assertReadyBody(t, body)

	code, body = healthGet(t, srv, "/status")
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Len(t, body, 5)
	for _, key := range []string{"application", "environment", "version"} {
		assert.IsType(t, "", body[key], key)
	}
	assert.Equal(t, "ok", body["status"])
	assert.Equal(t, "orders", body["application"], "from ProvideHealthOptions")
	assert.Equal(t, "1.4.2", body["version"], "from ProvideHealthOptions")
	pg, ok := body["postgres"].(map[string]any)
	require.True(t, ok)
	assert.Len(t, pg, 2)
	assert.GreaterOrEqual(t, pg["pool_size"], 1.0)
	assert.GreaterOrEqual(t, pg["pool_free"], 0.0)

	code, body = healthGet(t, srv, "/livez")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, map[string]any{"status": "pass"}, body)
}

func TestHealthModuleNotStarted(t *testing.T) {
	t.Parallel()
	url := fxtest_helpers.NewDatabase(t)
	logger := zaptest.NewLogger(t, zaptest.Level(zap.DebugLevel))
	var checker *health.Checker
	// As fxtest_helpers.NewAppWithDatabase builds it, but never started.
	fxtest.New(t,
		fx.Supply(logger),
		fx.WithLogger(func() fxevent.Logger { return &fxevent.ZapLogger{Logger: logger} }),
		fx.Module("test",
			sprocketspg.Module,
			fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
				c.URL = url
				return c
			}),
		),
		fx.Populate(&checker),
	)
	srv := healthServer(t, checker)

	code, body := healthGet(t, srv, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, map[string]any{"status": "fail", "output": "service is starting or stopping"}, body)

	code, body = healthGet(t, srv, "/status")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "unavailable", body["status"])
	assert.Equal(t, map[string]any{"pool_free": 0.0, "pool_size": 0.0}, body["postgres"])

	code, _ = healthGet(t, srv, "/livez")
	assert.Equal(t, http.StatusOK, code)
}

// TestHealthModuleServerOutage stops the test server, so it must not run
// in parallel with other tests.
func TestHealthModuleServerOutage(t *testing.T) {
	server := fxtest_helpers.Server(t)
	if server.Backend() == "url" {
		t.Skip("the test server is an existing one (SPROCKETSPG_TEST_POSTGRES_URL): it cannot be stopped")
	}
	var checker *health.Checker
	fxtest_helpers.NewApp(t,
		fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
			c.ConnectionTimeout = 2 * time.Second
			return c
		}),
		fx.Populate(&checker),
	)
	srv := healthServer(t, checker)
	code, _ := healthGet(t, srv, "/readyz")
	require.Equal(t, http.StatusOK, code)

	require.NoError(t, server.Stop(ctxT(t)))
	// Whatever happens below, the server runs again for the tests after
	// this one, and before this test's app stops.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		assert.NoError(t, server.Start(ctx))
	})

	body := healthEventually(t, srv, "/readyz", http.StatusServiceUnavailable, 2*time.Second)
	assert.Equal(t, "fail", body["status"])
	assert.NotEmpty(t, body["output"])
	body = healthEventually(t, srv, "/status", http.StatusServiceUnavailable, 2*time.Second)
	assert.Equal(t, "unavailable", body["status"])
	code, _ = healthGet(t, srv, "/livez")
	assert.Equal(t, http.StatusOK, code)

	require.NoError(t, server.Start(ctxT(t)))
	body = healthEventually(t, srv, "/readyz", http.StatusOK, 2*time.Second)
	assert.Equal(t, "pass", body["status"])
	body = healthEventually(t, srv, "/status", http.StatusOK, 2*time.Second)
	assert.Equal(t, "ok", body["status"])
}

// TestHealthReadinessFailsBeforePoolCloses proves that fx Stop closes the
// readiness gate before the pool closes its connections. The probe runs
// inside pgxpool's BeforeClose hook, which pgxpool calls for each
// connection right before closing it, so it sees exactly what a load
// balancer probing at that moment would. The body is compared whole: a
// gate still open would also answer 503 (the pool is already marked not
// connected and the ping fails), but with a document carrying checks and
// the ping's error, not the gate's.
func TestHealthReadinessFailsBeforePoolCloses(t *testing.T) {
	t.Parallel()
	var (
		checker *health.Checker
		mu      sync.Mutex
		probes  []*httptest.ResponseRecorder
		stopped bool
	)
	probe := func(*pgx.Conn) {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			return // a connection closed for another reason, not by Stop
		}
		rec := httptest.NewRecorder()
		checker.ReadinessHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		probes = append(probes, rec)
	}
	app := fxtest_helpers.NewApp(t,
		sprocketspg.ProvideOptions(sprocketspg.WithPoolConfig(func(pc *pgxpool.Config) {
			pc.BeforeClose = probe
		})),
		fx.Populate(&checker),
	)
	srv := healthServer(t, checker)
	code, _ := healthGet(t, srv, "/readyz")
	require.Equal(t, http.StatusOK, code, "ready before stop")

	mu.Lock()
	stopped = true
	mu.Unlock()
	require.NoError(t, app.Stop(ctxT(t)))

	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, probes, "the pool closed no connection on stop")
	for _, rec := range probes {
		assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
		assert.JSONEq(t, gateBody, rec.Body.String())
	}
	assert.False(t, checker.Ready())
}
