package health_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
)

func TestMain(m *testing.M) { os.Exit(fxtest_helpers.RunTests(m)) }

// newPgxpool connects a pgxpool to a fresh database, with a short connect
// timeout so that outages show quickly, and closes it when the test ends.
func newPgxpool(t *testing.T, change func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(fxtest_helpers.NewDatabase(t))
	require.NoError(t, err)
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	if change != nil {
		change(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	require.NoError(t, pool.Ping(ctx))
	t.Cleanup(pool.Close)
	return pool
}

// countingDB counts the pings that reach a real pool. It delegates
// everything to the pool.
type countingDB struct {
	health.Database
	pings atomic.Int64
}

func (d *countingDB) Ping(ctx context.Context) error {
	d.pings.Add(1)
	return d.Database.Ping(ctx)
}

// newCounted returns a counting Database over a fresh pool, and the pool.
func newCounted(t *testing.T, change func(*pgxpool.Config)) (*countingDB, *pgxpool.Pool) {
	t.Helper()
	pool := newPgxpool(t, change)
	return &countingDB{Database: health.FromPgxpool(pool)}, pool
}

// serve mounts c on a test HTTP server closed when the test ends.
func serve(t *testing.T, c *health.Checker) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	health.Register(mux, c)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// response is what a probe got.
type response struct {
	code   int
	header http.Header
	body   []byte
}

// object decodes the body as a JSON object.
func (r response) object(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.body, &m), "body %s", r.body)
	return m
}

func do(t *testing.T, srv *httptest.Server, method, path string) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, srv.URL+path, nil)
	require.NoError(t, err)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return response{code: resp.StatusCode, header: resp.Header, body: body}
}

func get(t *testing.T, srv *httptest.Server, path string) response {
	t.Helper()
	return do(t, srv, http.MethodGet, path)
}

// eventually polls path until it answers code, failing t after within.
func eventually(t *testing.T, srv *httptest.Server, path string, code int, within time.Duration) response {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r := get(t, srv, path)
		if r.code == code {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still answers %d %s after %s, want %d", path, r.code, r.body, within, code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fakeClock is a clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// keys returns the keys of m, for comparisons with ElementsMatch.
func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
