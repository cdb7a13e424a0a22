package sprocketspg_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
)

// currentDatabase reports which database pool's queries reach.
func currentDatabase(t *testing.T, pool *sprocketspg.Pool) string {
	t.Helper()
	res, err := pool.Execute(ctxT(t), "SELECT current_database() AS db")
	require.NoError(t, err)
	return res.Row["db"].(string)
}

func databaseOf(t *testing.T, url string) string {
	t.Helper()
	conn := adminConn(t, url)
	var name string
	require.NoError(t, conn.QueryRow(ctxT(t), "SELECT current_database()").Scan(&name))
	return name
}

func TestReaderUsesReadURL(t *testing.T) {
	primaryURL := fxtest_helpers.NewDatabase(t)
	replicaURL := fxtest_helpers.NewDatabase(t)
	pool := newPoolAt(t, primaryURL, func(c *sprocketspg.Config) { c.ReadURL = replicaURL })

	replicaDB := databaseOf(t, replicaURL)
	require.Eventually(t, func() bool { return pool.Reader() != pool }, 5*time.Second, 10*time.Millisecond,
		"the reader must be handed out once it answers")
	assert.Equal(t, replicaDB, currentDatabase(t, pool.Reader()))
	assert.Equal(t, databaseOf(t, primaryURL), currentDatabase(t, pool))
}

func TestReaderWithoutReadURLIsThePool(t *testing.T) {
	pool, _ := newPool(t, nil)
	assert.Same(t, pool, pool.Reader())
}

func TestReaderFallsBackWhileReplicaIsDown(t *testing.T) {
	srv := fxtest_helpers.StartServer(t)
	replicaURL := srv.NewDatabase(t)
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.ReadURL = replicaURL
		c.ConnectionTimeout = 2 * time.Second
	})
	require.Eventually(t, func() bool { return pool.Reader() != pool }, 5*time.Second, 10*time.Millisecond)

	ctx := ctxT(t)
	require.NoError(t, srv.Stop(ctx))
	t.Cleanup(func() { _ = srv.Start(context.Background()) })
	down := time.Now()
	require.Eventually(t, func() bool { return pool.Reader() == pool }, 3*time.Second, 10*time.Millisecond,
		"reads must fall back to the primary when the replica stops")
	t.Logf("fell back %s after the replica stopped", time.Since(down).Round(time.Millisecond))
	_, err := pool.Reader().Execute(ctx, "SELECT 1")
	require.NoError(t, err)

	require.NoError(t, srv.Start(ctx))
	require.Eventually(t, func() bool { return pool.Reader() != pool }, 5*time.Second, 10*time.Millisecond,
		"the replica must be used again once it is back")
	_, err = pool.Reader().Execute(ctx, "SELECT 1")
	require.NoError(t, err)
}

func TestReaderUnreachableAtStartDoesNotDelayStart(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := ln.Addr().String()
	require.NoError(t, ln.Close())

	began := time.Now()
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.ReadURL = "postgres://reader:secret@" + closed + "/db?sslmode=disable"
		c.ConnectionTimeout = 3 * time.Second
	})
	assert.Less(t, time.Since(began), 3*time.Second, "an unreachable replica must not hold up start-up")
	assert.Same(t, pool, pool.Reader())
	_, err = pool.Reader().Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err)
}

func TestReaderHealthReportsBoth(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := ln.Addr().String()
	require.NoError(t, ln.Close())

	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.ReadURL = "postgres://reader:secret@" + closed + "/db?sslmode=disable"
	})
	checker := sprocketspg.NewChecker(pool, health.WithCacheWindow(0))
	report := checker.Check(ctxT(t))
	require.NotNil(t, report.Replica)
	assert.Equal(t, health.StatusFail, report.Replica.Status)
	assert.Equal(t, health.StatusWarn, report.Status, "a down replica is a warning: reads fall back")
	assert.True(t, report.Available)
	assert.NotContains(t, report.Error, "secret")

	mux := http.NewServeMux()
	health.Register(mux, checker)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Contains(t, rec.Body.String(), `"postgres-replica:connections"`)
	assert.NotContains(t, rec.Body.String(), "secret")
}

func TestReadURLValidation(t *testing.T) {
	cfg := testConfig("postgres://u@localhost/db")
	cfg.ReadURL = "mysql://reader:secret@h/db"
	err := cfg.Validate()
	require.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	assert.Contains(t, err.Error(), sprocketspg.EnvReadURL)
	assert.NotContains(t, err.Error(), "secret")
	assert.NotContains(t, cfg.String(), "secret")
}

// The warning that the replica is down is logged once per outage, also
// when a query finds the replica gone before the background ping does.
func TestReaderLogsEachOutageOnce(t *testing.T) {
	srv := fxtest_helpers.StartServer(t)
	replicaURL := srv.NewDatabase(t)
	core, logs := observer.New(zapcore.InfoLevel)
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.ReadURL = replicaURL
		c.ConnectionTimeout = 2 * time.Second
	}, sprocketspg.WithLogger(zap.New(core)))
	const down = "postgres read replica unavailable; reads go to the primary"
	const up = "postgres read replica available"

	ctx := ctxT(t)
	for outage := 1; outage <= 2; outage++ {
		require.Eventually(t, func() bool { return pool.Reader() != pool }, 5*time.Second, 10*time.Millisecond)
		reader := pool.Reader()
		require.NoError(t, srv.Stop(ctx))
		// The query comes right after the stop, within the second between
		// two pings, so it usually notices first.
		_, err := reader.Execute(ctx, "SELECT 1")
		require.Error(t, err)
		require.Eventually(t, func() bool { return pool.Reader() == pool }, 3*time.Second, 10*time.Millisecond)
		// Pings go on failing for a while; none logs again.
		time.Sleep(2500 * time.Millisecond)
		assert.Equal(t, outage, logs.FilterMessage(down).Len(), "outage %d", outage)
		require.NoError(t, srv.Start(ctx))
		require.Eventually(t, func() bool { return logs.FilterMessage(up).Len() == outage+1 }, 5*time.Second, 10*time.Millisecond)
	}
}
