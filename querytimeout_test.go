package sprocketspg_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/txn"
)

// onePool is a pool of one connection, so that what a call leaves on its
// connection is what the next call finds.
func onePool(t *testing.T, change func(*sprocketspg.Config), opts ...sprocketspg.Option) *sprocketspg.Pool {
	t.Helper()
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.MaxPoolSize, c.MinPoolSize = 1, 1
		if change != nil {
			change(c)
		}
	}, opts...)
	return pool
}

func showTimeout(t *testing.T, ctx context.Context, pool *sprocketspg.Pool) string {
	t.Helper()
	res, err := pool.Execute(ctx, "SHOW statement_timeout")
	require.NoError(t, err)
	return res.Row["statement_timeout"].(string)
}

func TestQueryTimeoutShorter(t *testing.T) {
	pool := onePool(t, nil)
	ctx := ctxT(t)
	began := time.Now()
	_, err := pool.Execute(sprocketspg.WithQueryTimeout(ctx, 100*time.Millisecond), "SELECT pg_sleep(5)")
	require.Error(t, err)
	assert.True(t, sprocketspg.IsQueryTimeout(err), "the server's timeout ended it: %v", err)
	assert.NotErrorIs(t, err, context.DeadlineExceeded, "the caller's context did not end")
	assert.Less(t, time.Since(began), 3*time.Second)
	assert.Equal(t, "30s", showTimeout(t, ctx, pool), "nothing is left on the connection")

	_, err = pool.Callproc(sprocketspg.WithQueryTimeout(ctx, 100*time.Millisecond), "pg_sleep", 5)
	assert.True(t, sprocketspg.IsQueryTimeout(err), "Callproc too: %v", err)
	assert.Equal(t, "30s", showTimeout(t, ctx, pool))
}

func TestQueryTimeoutLonger(t *testing.T) {
	// The server would cancel at 200 ms, and the client stop waiting at
	// 200 ms + 1 s; the call's own timeout raises both.
	pool := onePool(t, func(c *sprocketspg.Config) {
		c.QueryTimeout = 200 * time.Millisecond
		c.ConnectionTimeout = time.Second
	})
	ctx := ctxT(t)
	_, err := pool.Execute(ctx, "SELECT pg_sleep(0.5)")
	require.True(t, sprocketspg.IsQueryTimeout(err), "without it the pool's limit applies: %v", err)

	res, err := pool.Execute(sprocketspg.WithQueryTimeout(ctx, 5*time.Second), "SELECT pg_sleep(1.7) AS slept, 7 AS n")
	require.NoError(t, err, "longer than QueryTimeout + ConnectionTimeout, within its own")
	assert.EqualValues(t, 7, res.Row["n"])
	assert.EqualValues(t, 1, res.RowCount)
	assert.Equal(t, "200ms", showTimeout(t, ctx, pool), "nothing is left on the connection")

	res, err = pool.Execute(sprocketspg.WithQueryTimeout(ctx, 1500*time.Millisecond), "SHOW statement_timeout")
	require.NoError(t, err)
	assert.Equal(t, "1500ms", res.Row["statement_timeout"])
}

func TestQueryTimeoutInTransaction(t *testing.T) {
	pool := onePool(t, nil)
	ctx := ctxT(t)
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		show := func(ctx context.Context) string {
			res, err := tx.Execute(ctx, "SHOW statement_timeout")
			require.NoError(t, err)
			return res.Row["statement_timeout"].(string)
		}
		assert.Equal(t, "5s", show(ctx))
		assert.Equal(t, "1500ms", show(sprocketspg.WithQueryTimeout(ctx, 1500*time.Millisecond)))
		assert.Equal(t, "5s", show(ctx), "the transaction's own timeout is back")
		res, err := tx.Callproc(sprocketspg.WithQueryTimeout(ctx, 2*time.Second), "current_setting", "statement_timeout")
		require.NoError(t, err)
		assert.Equal(t, "2s", res.Row["current_setting"])
		assert.Equal(t, "5s", show(ctx))
		return nil
	}, txn.Timeout(5*time.Second))
	require.NoError(t, err)

	err = pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.Execute(sprocketspg.WithQueryTimeout(ctx, 100*time.Millisecond), "SELECT pg_sleep(5)")
		return err
	})
	require.Error(t, err)
	assert.True(t, sprocketspg.IsQueryTimeout(err), "%v", err)
	assert.Equal(t, "30s", showTimeout(t, ctx, pool), "the connection is clean after the rollback")
}

func TestQueryTimeoutOf(t *testing.T) {
	ctx := context.Background()
	_, ok := sprocketspg.QueryTimeoutOf(ctx)
	assert.False(t, ok)
	d, ok := sprocketspg.QueryTimeoutOf(sprocketspg.WithQueryTimeout(ctx, time.Second))
	assert.True(t, ok)
	assert.Equal(t, time.Second, d)
	_, ok = sprocketspg.QueryTimeoutOf(sprocketspg.WithQueryTimeout(ctx, 0))
	assert.False(t, ok, "zero leaves the limit as it is")
}

// turnCounter counts request/answer turns on a connection: a write after
// a read begins a round trip.
type turnCounter struct {
	mu       sync.Mutex
	lastRead bool
	turns    int
}

func (c *turnCounter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastRead, c.turns = true, 0
}

func (c *turnCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.turns
}

type turnConn struct {
	net.Conn
	c *turnCounter
}

func (tc *turnConn) Read(b []byte) (int, error) {
	n, err := tc.Conn.Read(b)
	if n > 0 {
		tc.c.mu.Lock()
		tc.c.lastRead = true
		tc.c.mu.Unlock()
	}
	return n, err
}

func (tc *turnConn) Write(b []byte) (int, error) {
	tc.c.mu.Lock()
	if tc.c.lastRead {
		tc.c.turns++
		tc.c.lastRead = false
	}
	tc.c.mu.Unlock()
	return tc.Conn.Write(b)
}

// TestQueryTimeoutRoundTrips counts the round trips on the wire: a call
// with its own timeout costs what one without does, on the pool and in a
// transaction.
func TestQueryTimeoutRoundTrips(t *testing.T) {
	counter := &turnCounter{}
	pool := onePool(t, nil, sprocketspg.WithPoolConfig(func(c *pgxpool.Config) {
		// A ping on acquire would add a round trip of its own.
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
		dial := c.ConnConfig.DialFunc
		c.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &turnConn{Conn: conn, c: counter}, nil
		}
	}))
	ctx := ctxT(t)
	timed := sprocketspg.WithQueryTimeout(ctx, 2*time.Second)
	const sql = "SELECT $1::int AS n"
	measure := func(run func() error) int {
		t.Helper()
		require.NoError(t, run()) // prepares the statements, once
		counter.reset()
		require.NoError(t, run())
		return counter.count()
	}
	plain := measure(func() error { _, err := pool.Execute(ctx, sql, 1); return err })
	require.Equal(t, 1, plain)
	assert.Equal(t, plain, measure(func() error { _, err := pool.Execute(timed, sql, 1); return err }),
		"Execute with its own timeout")
	assert.Equal(t, plain, measure(func() error { _, err := pool.Callproc(timed, "abs", -1); return err }),
		"Callproc with its own timeout")

	inTx := func(ctx context.Context) func() error {
		return func() error {
			return pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
				_, err := tx.Execute(ctx, sql, 1)
				return err
			})
		}
	}
	assert.Equal(t, measure(inTx(ctx)), measure(inTx(timed)), "Tx.Execute with its own timeout")
}
