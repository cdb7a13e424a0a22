package sprocketspg_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/txn"
)

// The response deadline is set when a statement starts only if the one the
// connection has is not between the limit (QueryTimeout+ConnectionTimeout)
// and the limit plus a slack away: a busy connection sets it about once per
// slack, never more than the limit plus the slack away.
func TestResponseDeadlineIsSetOnlyWhenNeeded(t *testing.T) {
	const queryTimeout, connectionTimeout = 2 * time.Second, 2 * time.Second
	const limit = queryTimeout + connectionTimeout
	const slack = time.Second // rearmSlack, below limit/4
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.QueryTimeout, c.ConnectionTimeout = queryTimeout, connectionTimeout
		c.MinPoolSize, c.MaxPoolSize = 1, 1
	})
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	c := conn.Conn()
	within := func(until int64, at time.Time) {
		t.Helper()
		deadline := time.Unix(0, until)
		assert.False(t, deadline.Before(at.Add(limit)), "the deadline %s is less than the limit after %s", deadline, at)
		assert.False(t, deadline.After(time.Now().Add(limit+slack)), "the deadline %s is more than the limit and the slack away", deadline)
	}

	began := time.Now()
	_, err = c.Exec(ctx, "SELECT 1")
	require.NoError(t, err)
	first := sprocketspg.ResponseDeadlineOf(pool, c)
	require.Positive(t, first, "a statement sets a deadline")
	within(first, began)

	// Within the slack, the next statements keep it.
	for range 5 {
		_, err = c.Exec(ctx, "SELECT 1")
		require.NoError(t, err)
	}
	if time.Since(began) < slack/2 {
		assert.Equal(t, first, sprocketspg.ResponseDeadlineOf(pool, c), "statements soon after keep the deadline")
	}

	// Past the slack, a statement sets a later one.
	time.Sleep(slack + 100*time.Millisecond)
	began = time.Now()
	_, err = c.Exec(ctx, "SELECT 1")
	require.NoError(t, err)
	second := sprocketspg.ResponseDeadlineOf(pool, c)
	assert.Greater(t, second, first)
	within(second, began)

	// A context that ends a statement makes pgconn move the deadline and
	// clear it; the pool then knows of none, and the next statement sets
	// one.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = c.Exec(short, "SELECT pg_sleep(2)")
	cancel()
	require.Error(t, err, "pgx reports the server's 57014")
	assert.Zero(t, sprocketspg.ResponseDeadlineOf(pool, c), "after a cancelled statement no deadline is known")
	began = time.Now()
	_, err = c.Exec(ctx, "SELECT 1")
	require.NoError(t, err)
	within(sprocketspg.ResponseDeadlineOf(pool, c), began)
}

// A transaction with a longer statement timeout waits longer for answers;
// the statement after it brings the deadline back within the limit.
func TestResponseDeadlineFollowsALongerTimeout(t *testing.T) {
	const queryTimeout, connectionTimeout = 2 * time.Second, 2 * time.Second
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.QueryTimeout, c.ConnectionTimeout = queryTimeout, connectionTimeout
		c.MinPoolSize, c.MaxPoolSize = 1, 1
	})
	ctx := context.Background()
	var inside int64
	began := time.Now()
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.Exec(ctx, "SELECT 1")
		inside = sprocketspg.ResponseDeadlineOf(pool, tx.Conn())
		return err
	}, txn.Timeout(time.Minute))
	require.NoError(t, err)
	assert.GreaterOrEqual(t, inside, began.Add(time.Minute+connectionTimeout).UnixNano(),
		"a statement of the transaction may wait for its own timeout plus the margin")

	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(ctx, "SELECT 1")
	require.NoError(t, err)
	after := sprocketspg.ResponseDeadlineOf(pool, conn.Conn())
	assert.Less(t, after, time.Now().Add(queryTimeout+connectionTimeout+2*time.Second).UnixNano(),
		"after the transaction the deadline is back within the limit")
}

// A deadline that passed while its connection sat idle does not fail what
// reads the connection without a statement: pgxpool's ping of an idle
// connection, and pgconn's own calls on an acquired one.
func TestResponseDeadlinePassedWhileIdle(t *testing.T) {
	const queryTimeout, connectionTimeout = 200 * time.Millisecond, 300 * time.Millisecond
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.QueryTimeout, c.ConnectionTimeout = queryTimeout, connectionTimeout
		c.MinPoolSize, c.MaxPoolSize = 1, 1
	})
	ctx := context.Background()
	var pid uint32
	require.NoError(t, pool.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid))
	// Idle for longer than the limit and the slack, and than the second
	// after which pgxpool pings a connection before handing it out.
	time.Sleep(1500 * time.Millisecond)
	require.NoError(t, pool.Ping(ctx))

	time.Sleep(1500 * time.Millisecond)
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	assert.Equal(t, pid, conn.Conn().PgConn().PID(), "the same connection, not one opened after a failed ping")
	assert.Greater(t, sprocketspg.ResponseDeadlineOf(pool, conn.Conn()), time.Now().UnixNano(), "acquired with a deadline to come")
	_, err = conn.Conn().PgConn().Exec(ctx, "SELECT 1").ReadAll()
	require.NoError(t, err, "pgconn's own call on the acquired connection")
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT 1").Scan(&n))
}

// A connection taken from the pool to wait for notifications waits past
// the response deadline once ClearResponseDeadline cleared it, and its
// next statement sets the deadline again. Without the clear, the wait
// fails when the deadline passes.
func TestClearResponseDeadlineForWaitForNotification(t *testing.T) {
	const queryTimeout, connectionTimeout = 200 * time.Millisecond, 300 * time.Millisecond
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.QueryTimeout, c.ConnectionTimeout = queryTimeout, connectionTimeout
		c.MinPoolSize, c.MaxPoolSize = 2, 2
	})
	ctx := ctxT(t)
	wait := func(clear bool) error {
		conn, err := pool.Acquire(ctx)
		require.NoError(t, err)
		defer conn.Release()
		_, err = conn.Exec(ctx, "LISTEN deadline_test")
		require.NoError(t, err)
		if clear {
			sprocketspg.ClearResponseDeadline(conn.Conn())
			assert.Zero(t, sprocketspg.ResponseDeadlineOf(pool, conn.Conn()))
		}
		// Notified after the limit and the slack have passed.
		notified := make(chan error, 1)
		go func() {
			time.Sleep(1200 * time.Millisecond)
			_, err := pool.Execute(ctx, "SELECT pg_notify('deadline_test', 'hello')")
			notified <- err
		}()
		defer func() { require.NoError(t, <-notified) }()
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			return err
		}
		assert.Equal(t, "hello", n.Payload)
		_, err = conn.Exec(ctx, "UNLISTEN *")
		require.NoError(t, err)
		assert.Greater(t, sprocketspg.ResponseDeadlineOf(pool, conn.Conn()), time.Now().UnixNano(),
			"the next statement sets the deadline again")
		return nil
	}
	require.NoError(t, wait(true), "a cleared connection waits as long as it must")
	assert.Error(t, wait(false), "the deadline left between statements ends a wait without a statement")
}
