package sprocketspg_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// A statement waiting on a host that froze (its kernel still completes
// TCP handshakes and acknowledges bytes, its server says nothing) fails
// within a few HostConnectTimeouts, far inside QueryTimeout, with
// ErrServerNotResponding; the pool's idle connection to that host is not
// handed out again; the outage is logged once.
func TestHostWatchFailsStatementsOnAFrozenHost(t *testing.T) {
	const hostTimeout = 500 * time.Millisecond
	dbURL := fxtest_helpers.NewDatabase(t)
	proxy := newFreezeProxy(t, hostPortOf(t, dbURL))
	core, logs := observer.New(zapcore.WarnLevel)
	pool := newPoolAt(t, withHost(t, dbURL, proxy.Addr()), func(c *sprocketspg.Config) {
		c.QueryTimeout = 30 * time.Second
		c.ConnectionTimeout = 5 * time.Second
		c.HostConnectTimeout = hostTimeout
		c.MinPoolSize, c.MaxPoolSize = 2, 2
	}, sprocketspg.WithLogger(zap.New(core)))
	require.EqualValues(t, 2, pool.Stat().TotalConns())

	done := make(chan error, 1)
	var frozenAt time.Time
	go func() {
		_, err := pool.Execute(context.Background(), "SELECT pg_sleep(20)")
		done <- err
	}()
	require.Eventually(t, func() bool { return pool.Stat().AcquiredConns() == 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(100 * time.Millisecond) // the statement is on the wire
	proxy.Freeze()
	frozenAt = time.Now()

	var err error
	select {
	case err = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the statement still waits 15 s after its host froze")
	}
	elapsed := time.Since(frozenAt)
	t.Logf("failed %v after the freeze: %v", elapsed.Round(time.Millisecond), err)
	// Waited hostTimeout, probed for up to hostTimeout, a tick each way.
	assert.Less(t, elapsed, 4*hostTimeout, "within a few HostConnectTimeouts, not QueryTimeout")
	require.ErrorIs(t, err, sprocketspg.ErrServerNotResponding)
	assert.True(t, sprocketspg.IsConnectionError(err), "IsConnectionError(%v)", err)
	assert.False(t, sprocketspg.IsQueryTimeout(err), "the server did not time the statement out: %v", err)
	problem, ok := sprocketspg.ClassifyError(err)
	require.True(t, ok)
	assert.Equal(t, http.StatusServiceUnavailable, problem.Status)

	// The other connection, idle on the frozen host, is dropped when it
	// would be handed out; the new one the pool then opens reaches the
	// frozen host too and fails within its timeout.
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pool.Execute(ctx, "SELECT 1")
	t.Logf("the next statement failed after %v: %v", time.Since(began).Round(time.Millisecond), err)
	require.Error(t, err)
	assert.NoError(t, ctx.Err(), "it failed before its context ended")
	assert.True(t, sprocketspg.IsConnectionError(err), "IsConnectionError(%v)", err)

	warned := logs.FilterMessage("postgres server stopped answering; dropping its connections").All()
	require.Len(t, warned, 1, "the outage is logged once")
	assert.Equal(t, proxy.Addr(), warned[0].ContextMap()["address"])
}

// A statement that takes longer than HostConnectTimeout on a server that
// answers is left alone: the probe it causes is answered.
func TestHostWatchLeavesSlowStatementsAlone(t *testing.T) {
	const hostTimeout = 200 * time.Millisecond
	dbURL := fxtest_helpers.NewDatabase(t)
	proxy := newFreezeProxy(t, hostPortOf(t, dbURL))
	pool := newPoolAt(t, withHost(t, dbURL, proxy.Addr()), func(c *sprocketspg.Config) {
		c.HostConnectTimeout = hostTimeout
		c.MinPoolSize, c.MaxPoolSize = 1, 1
	})
	before := proxy.Accepted()
	res, err := pool.Execute(ctxT(t), "SELECT pg_sleep(1.5), 42 AS answer")
	require.NoError(t, err)
	assert.EqualValues(t, 42, res.Row["answer"])
	assert.Greater(t, proxy.Accepted(), before, "the waiting statement made the pool probe its host")
	assert.EqualValues(t, 1, pool.Stat().TotalConns(), "no connection was given up")
}

// With a frozen host first in a multi-host URL, the first connection
// waits HostConnectTimeout on it before trying the next; the following
// ones try the host that answered first and do not wait. A URL of host
// names is ranked by the addresses the names resolved to.
func TestHostWatchTriesTheHostThatAnsweredFirst(t *testing.T) {
	for _, name := range []string{"127.0.0.1", "localhost"} {
		t.Run(name, func(t *testing.T) {
			const hostTimeout = time.Second
			dbURL := fxtest_helpers.NewDatabase(t)
			frozen := newFreezeProxy(t, hostPortOf(t, dbURL))
			frozen.Freeze()
			named := func(hostPort string) string {
				_, port, err := net.SplitHostPort(hostPort)
				require.NoError(t, err)
				return net.JoinHostPort(name, port)
			}
			multi := withHost(t, dbURL, named(frozen.Addr())+","+named(hostPortOf(t, dbURL)))
			began := time.Now()
			pool := newPoolAt(t, multi, func(c *sprocketspg.Config) {
				c.HostConnectTimeout = hostTimeout
				c.ConnectionTimeout = 5 * time.Second
				c.MinPoolSize, c.MaxPoolSize = 1, 4
			})
			started := time.Since(began)
			t.Logf("start took %v", started.Round(time.Millisecond))
			assert.GreaterOrEqual(t, started, hostTimeout, "the first connection waited on the frozen host")

			accepted := frozen.Accepted()
			for i := range 3 {
				pool.Reset() // the next statement opens a new connection
				began := time.Now()
				_, err := pool.Execute(ctxT(t), "SELECT 1")
				require.NoError(t, err)
				elapsed := time.Since(began)
				t.Logf("connection %d took %v", i+2, elapsed.Round(time.Millisecond))
				assert.Less(t, elapsed, hostTimeout/2, "the host that answered is tried first")
			}
			assert.Equal(t, accepted, frozen.Accepted(), "the frozen host was not tried again")
		})
	}
}

// A pool that must write (target_session_attrs=read-write) drops a
// connection whose server refused a write as read-only, instead of
// handing it out again, and writes again on a new connection once the
// server takes writes.
func TestHostWatchDropsAConnectionRefusedAWrite(t *testing.T) {
	srv := fxtest_helpers.StartServer(t)
	dbURL := srv.NewDatabase(t, fxtest_helpers.WithSchema("CREATE TABLE marks (n int)"))
	admin, err := pgx.Connect(ctxT(t), srv.AdminURL())
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close(context.Background()) })
	setReadOnly := func(on bool) {
		t.Helper()
		stmt := "ALTER SYSTEM RESET default_transaction_read_only"
		if on {
			stmt = "ALTER SYSTEM SET default_transaction_read_only = on"
		}
		_, err := admin.Exec(ctxT(t), stmt)
		require.NoError(t, err)
		_, err = admin.Exec(ctxT(t), "SELECT pg_reload_conf()")
		require.NoError(t, err)
	}
	t.Cleanup(func() { setReadOnly(false) })

	pool := newPoolAt(t, dbURL+"&target_session_attrs=read-write", func(c *sprocketspg.Config) {
		c.MinPoolSize, c.MaxPoolSize = 1, 1
		c.ConnectionTimeout = 2 * time.Second
	})
	pid := func() int32 {
		t.Helper()
		res, err := pool.Execute(ctxT(t), "SELECT pg_backend_pid() AS pid")
		require.NoError(t, err)
		return res.Row["pid"].(int32)
	}
	first := pid()

	setReadOnly(true)
	// The reload reaches the session between statements.
	require.Eventually(t, func() bool {
		_, err := pool.Execute(ctxT(t), "INSERT INTO marks VALUES (1)")
		var pgErr interface{ SQLState() string }
		return err != nil && errors.As(err, &pgErr) && pgErr.SQLState() == "25006"
	}, 5*time.Second, 20*time.Millisecond, "the server refuses writes")

	// The refused connection is not handed out: the pool opens another,
	// which target_session_attrs refuses while the server is read-only.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = pool.Execute(ctx, "SELECT 1")
	require.Error(t, err, "no read-write server, and the read-only connection is not reused")

	setReadOnly(false)
	require.Eventually(t, func() bool {
		_, err := pool.Execute(ctxT(t), "INSERT INTO marks VALUES (2)")
		return err == nil
	}, 10*time.Second, 50*time.Millisecond, "writes resume once the server takes them")
	assert.NotEqual(t, first, pid(), "the write went over a new connection")
	res, err := pool.Execute(ctxT(t), "SELECT count(*) AS n FROM marks WHERE n = 2")
	require.NoError(t, err)
	assert.EqualValues(t, 1, res.Row["n"], "the resumed write is stored once")
}
