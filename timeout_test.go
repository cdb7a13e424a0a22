package sprocketspg_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
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
