package sprocketspg_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// haConnectionTimeout is the pool's ConnectionTimeout in the HA tests:
// short, as a service that must fail over quickly would set it.
const haConnectionTimeout = 2 * time.Second

// multiHostURL returns a URL of the postgres database naming servers in
// the given order, with target_session_attrs set to attrs.
func multiHostURL(attrs string, servers ...*fxtest_helpers.TestServer) string {
	addrs := make([]string, len(servers))
	for i, s := range servers {
		addrs[i] = s.Address()
	}
	return "postgres://postgres@" + strings.Join(addrs, ",") +
		"/postgres?sslmode=disable&target_session_attrs=" + attrs
}

// serverPort returns the TCP port s listens on.
func serverPort(t *testing.T, s *fxtest_helpers.TestServer) int32 {
	t.Helper()
	_, port, err := net.SplitHostPort(s.Address())
	require.NoError(t, err)
	n, err := strconv.Atoi(port)
	require.NoError(t, err)
	return int32(n)
}

// startReplicaSet starts a primary and a streaming standby and logs how
// long that took.
func startReplicaSet(t *testing.T) (primary, standby *fxtest_helpers.TestServer) {
	t.Helper()
	began := time.Now()
	primary, standby = fxtest_helpers.StartReplicaSet(t)
	t.Logf("primary and standby started in %s", time.Since(began).Round(time.Millisecond))
	return primary, standby
}

// whereAmI asks the server a pool's connection reached whether it is a
// standby and which port it listens on.
func whereAmI(t *testing.T, ctx context.Context, pool *sprocketspg.Pool) (inRecovery bool, port int32) {
	t.Helper()
	res, err := pool.Execute(ctx, "SELECT pg_is_in_recovery() AS in_recovery, inet_server_port() AS port")
	require.NoError(t, err)
	require.NotNil(t, res.Row)
	return res.Row["in_recovery"].(bool), res.Row["port"].(int32)
}

// waitReplayed waits until standby has replayed all the WAL primary has
// written so far, so that what was committed on primary is on standby.
// The position is the WAL insert location, not pg_current_wal_lsn: the
// test servers commit asynchronously, so a commit can still sit in the WAL
// buffers, past the write location, when the statement returns.
func waitReplayed(t *testing.T, primary, standby *fxtest_helpers.TestServer) {
	t.Helper()
	ctx := ctxT(t)
	var lsn string
	require.NoError(t, adminConn(t, primary.AdminURL()).QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn))
	sc := adminConn(t, standby.AdminURL())
	deadline := time.Now().Add(10 * time.Second)
	for {
		var replayed bool
		require.NoError(t, sc.QueryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", lsn).Scan(&replayed))
		if replayed {
			return
		}
		require.True(t, time.Now().Before(deadline), "standby has not replayed the primary's WAL up to %s within 10s", lsn)
		time.Sleep(5 * time.Millisecond)
	}
}

func TestHAMultiHost(t *testing.T) {
	primary, standby := startReplicaSet(t)
	ctx := ctxT(t)
	short := func(c *sprocketspg.Config) { c.ConnectionTimeout = haConnectionTimeout }

	t.Run("read-write skips the standby listed first", func(t *testing.T) {
		pool := newPoolAt(t, multiHostURL("read-write", standby, primary), short)
		for range 5 {
			inRecovery, port := whereAmI(t, ctx, pool)
			assert.False(t, inRecovery, "connected to a standby")
			assert.Equal(t, serverPort(t, primary), port, "connected to the primary")
		}
		// A standby refuses even a temporary table.
		_, err := pool.Execute(ctx, "CREATE TEMP TABLE w (v int)")
		require.NoError(t, err, "the connection takes writes")
	})

	t.Run("prefer-standby reads from the standby listed second", func(t *testing.T) {
		pool := newPoolAt(t, multiHostURL("prefer-standby", primary, standby), short)
		for range 5 {
			inRecovery, port := whereAmI(t, ctx, pool)
			assert.True(t, inRecovery, "connected to the primary")
			assert.Equal(t, serverPort(t, standby), port, "connected to the standby")
		}
	})
}

// writeAttempt is one INSERT of the failover test's writer.
type writeAttempt struct {
	start, end time.Time
	err        error
}

func TestHAFailover(t *testing.T) {
	primary, standby := startReplicaSet(t)
	ctx := ctxT(t)
	_, err := adminConn(t, primary.AdminURL()).Exec(ctx,
		"CREATE TABLE events (id bigserial PRIMARY KEY, phase text NOT NULL)")
	require.NoError(t, err)

	pool := newPoolAt(t, multiHostURL("read-write", standby, primary), func(c *sprocketspg.Config) {
		c.ConnectionTimeout = haConnectionTimeout
		c.MinPoolSize = 2
		c.MaxPoolSize = 4
	})
	const before = 10
	for range before {
		_, err := pool.Execute(ctx, "INSERT INTO events (phase) VALUES ($1)", "before")
		require.NoError(t, err)
	}
	_, port := whereAmI(t, ctx, pool)
	require.Equal(t, serverPort(t, primary), port, "writes go to the primary")
	waitReplayed(t, primary, standby)

	// The writer inserts in a loop, as a service under load would, through
	// the stop and the promotion, recording every attempt.
	var (
		mu       sync.Mutex
		attempts []writeAttempt
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			wctx, cancel := context.WithTimeout(ctx, haConnectionTimeout)
			a := writeAttempt{start: time.Now()}
			_, a.err = pool.Execute(wctx, "INSERT INTO events (phase) VALUES ($1)", "during")
			a.end = time.Now()
			cancel()
			mu.Lock()
			attempts = append(attempts, a)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	})
	stopWriter := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	t.Cleanup(stopWriter)
	// firstSuccess returns the first successful attempt that started at
	// or after from.
	firstSuccess := func(from time.Time) (writeAttempt, bool) {
		mu.Lock()
		defer mu.Unlock()
		for _, a := range attempts {
			if a.err == nil && !a.start.Before(from) {
				return a, true
			}
		}
		return writeAttempt{}, false
	}
	warm := time.Now()
	require.Eventually(t, func() bool { _, ok := firstSuccess(warm); return ok },
		5*time.Second, 5*time.Millisecond, "the writer's inserts succeed before the failover")

	require.NoError(t, primary.Stop(ctx))
	stopped := time.Now()
	require.NoError(t, standby.Promote(ctx))
	promoted := time.Now()

	// A write that started after the old primary was down can only have
	// reached the new one. pg_promote polls for the end of recovery every
	// 100 ms, so writes may succeed before Promote returns.
	var first writeAttempt
	require.Eventually(t, func() bool {
		var ok bool
		first, ok = firstSuccess(stopped)
		return ok
	}, 5*time.Second, 5*time.Millisecond, "no write succeeded within 5s of the promotion")
	stopWriter()
	t.Logf("first successful write %s after the primary stopped and Promote was called (Promote returned after %s)",
		first.end.Sub(stopped).Round(time.Millisecond), promoted.Sub(stopped).Round(time.Millisecond))
	assert.Less(t, first.end.Sub(stopped), 5*time.Second, "writes succeed again within 5s of the promotion")

	failed := map[string]int{}
	var nFailed int
	for _, a := range attempts {
		if a.err == nil {
			continue
		}
		nFailed++
		failed[a.err.Error()]++
		assert.True(t, sprocketspg.IsConnectionError(a.err),
			"a write failed during the switch with an error that is not a connection error: %v", a.err)
	}
	t.Logf("%d writes, %d failed during the switch", len(attempts), nFailed)
	for msg, n := range failed {
		t.Logf("  %d× %s", n, msg)
	}

	inRecovery, port := whereAmI(t, ctx, pool)
	assert.False(t, inRecovery)
	assert.Equal(t, serverPort(t, standby), port, "the pool found the promoted standby by itself")
	res, err := pool.Execute(ctx, "SELECT count(*) AS n FROM events WHERE phase = 'before'")
	require.NoError(t, err)
	assert.Equal(t, int64(before), res.Row["n"], "rows written and replicated before the failover survive it")
	_, err = pool.Execute(ctx, "INSERT INTO events (phase) VALUES ('after')")
	require.NoError(t, err)
}
