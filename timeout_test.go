package sprocketspg_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

func TestQueryTimeoutIsStatementTimeout(t *testing.T) {
	pool, _ := newPool(t, func(c *sprocketspg.Config) { c.QueryTimeout = 1500 * time.Millisecond })
	res, err := pool.Execute(ctxT(t), "SHOW statement_timeout")
	require.NoError(t, err)
	assert.Equal(t, "1500ms", res.Row["statement_timeout"])

	began := time.Now()
	_, err = pool.Execute(context.Background(), "SELECT pg_sleep(10)")
	require.Error(t, err)
	assert.True(t, sprocketspg.IsQueryTimeout(err), "%v", err)
	assert.False(t, sprocketspg.IsConnectionError(err), "%v", err)
	assert.Less(t, time.Since(began), 5*time.Second)

	_, err = pool.Execute(ctxT(t), "SELECT 1")
	assert.NoError(t, err)
}

func TestContextDeadlineCancelsOnServer(t *testing.T) {
	pool, url := newPool(t, func(c *sprocketspg.Config) {
		c.MinPoolSize = 1
		c.MaxPoolSize = 1 // one connection, so the next query proves it survived
	})
	admin := adminConn(t, url)

	res, err := pool.Execute(ctxT(t), "SELECT pg_backend_pid() AS pid")
	require.NoError(t, err)
	pid := res.Row["pid"].(int32)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err = pool.Execute(ctx, "SELECT pg_sleep(5)")
	require.Error(t, err)
	assert.True(t, sprocketspg.IsQueryTimeout(err), "%v", err)
	assert.Less(t, time.Since(began), 2*time.Second)

	// The server stopped the query: its backend is idle again within 1 s.
	assert.Eventually(t, func() bool {
		var state string
		err := admin.QueryRow(context.Background(),
			"SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = $1", pid).Scan(&state)
		return err == nil && state == "idle"
	}, time.Second, 10*time.Millisecond, "backend %d still busy", pid)

	// The same connection answers the next query.
	res, err = pool.Execute(ctxT(t), "SELECT pg_backend_pid() AS pid")
	require.NoError(t, err)
	assert.Equal(t, pid, res.Row["pid"])
}

func TestDeadConnectionsDoNotReachCallers(t *testing.T) {
	pool, url := newPool(t, func(c *sprocketspg.Config) {
		c.MinPoolSize = 3
		c.MaxPoolSize = 3
	})
	admin := adminConn(t, url)
	require.GreaterOrEqual(t, pool.Stat().TotalConns(), int32(3))

	var killed int
	err := admin.QueryRow(ctxT(t), `
		SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&killed)
	require.NoError(t, err)
	require.GreaterOrEqual(t, killed, 3)

	time.Sleep(time.Second)
	for i := 0; i < 6; i++ {
		res, err := pool.Execute(ctxT(t), "SELECT 1 AS one")
		require.NoError(t, err, "query %d after the backends were terminated", i)
		assert.Equal(t, int32(1), res.Row["one"])
	}
}

func TestPoolNeverExceedsMaxPoolSize(t *testing.T) {
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.MinPoolSize = 1
		c.MaxPoolSize = 5
	})
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		pids     = map[int32]bool{}
		maxTotal atomic.Int32
		stop     = make(chan struct{})
	)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n := pool.Stat().TotalConns(); n > maxTotal.Load() {
				maxTotal.Store(n)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := pool.Execute(ctxT(t), "SELECT pg_backend_pid() AS pid, pg_sleep(0.05)")
			if !assert.NoError(t, err) {
				return
			}
			mu.Lock()
			pids[res.Row["pid"].(int32)] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(stop)
	assert.LessOrEqual(t, len(pids), 5, "distinct server backends")
	assert.GreaterOrEqual(t, len(pids), 2, "the queries ran concurrently")
	assert.LessOrEqual(t, maxTotal.Load(), int32(5))
}

func TestConnectionTTLReplacesConnections(t *testing.T) {
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.MinPoolSize = 1
		c.MaxPoolSize = 1
		c.ConnectionTTL = time.Second
	})
	res, err := pool.Execute(ctxT(t), "SELECT pg_backend_pid() AS pid")
	require.NoError(t, err)
	first := res.Row["pid"]

	// TTL plus its 10% jitter has passed.
	time.Sleep(1300 * time.Millisecond)
	res, err = pool.Execute(ctxT(t), "SELECT pg_backend_pid() AS pid")
	require.NoError(t, err)
	assert.NotEqual(t, first, res.Row["pid"])
}

// terminateBackends ends every other session of url's database and waits
// until the server has let them go, so their FATAL message is on its way
// to the clients.
func terminateBackends(t *testing.T, url string, atLeast int) {
	t.Helper()
	admin := adminConn(t, url)
	var killed int
	err := admin.QueryRow(ctxT(t), `
		SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&killed)
	require.NoError(t, err)
	require.GreaterOrEqual(t, killed, atLeast)
	require.Eventually(t, func() bool {
		var left int
		err := admin.QueryRow(ctxT(t), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&left)
		return err == nil && left == 0
	}, 5*time.Second, time.Millisecond)
	time.Sleep(20 * time.Millisecond) // the FATAL message crosses loopback
}

// TestConnectionsKilledWhileIdleDoNotReachCallers checks the case the
// test above leaves to pgxpool's one-second rule: connections terminated
// moments before they are handed out again.
func TestConnectionsKilledWhileIdleDoNotReachCallers(t *testing.T) {
	const size = 4
	t.Run("sprocketspg", func(t *testing.T) {
		pool, url := newPool(t, func(c *sprocketspg.Config) {
			c.MinPoolSize, c.MaxPoolSize = size, size
		})
		require.EqualValues(t, size, pool.Stat().IdleConns())
		terminateBackends(t, url, size)
		// pgx's own QueryRow on the embedded pool, so that no retry of
		// Execute's can hide a dead connection.
		for i := range 2 * size {
			var one int
			err := pool.QueryRow(ctxT(t), "SELECT 1").Scan(&one)
			require.NoError(t, err, "query %d right after the backends were terminated", i)
		}
	})
	// The same against a raw pgxpool shows what the check prevents, and
	// that the test above can fail.
	t.Run("raw-pgxpool", func(t *testing.T) {
		url := fxtest_helpers.NewDatabase(t)
		pc, err := pgxpool.ParseConfig(url)
		require.NoError(t, err)
		pc.MinConns, pc.MaxConns = size, size
		raw, err := pgxpool.NewWithConfig(ctxT(t), pc)
		require.NoError(t, err)
		t.Cleanup(raw.Close)
		require.Eventually(t, func() bool { return raw.Stat().IdleConns() == size }, 5*time.Second, time.Millisecond)
		terminateBackends(t, url, size)
		failures := 0
		for range 2 * size {
			var one int
			if err := raw.QueryRow(ctxT(t), "SELECT 1").Scan(&one); err != nil {
				failures++
			}
		}
		assert.Positive(t, failures, "a raw pgxpool hands out connections the server already closed")
	})
}
