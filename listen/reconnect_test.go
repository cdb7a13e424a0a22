package listen_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// reconnectBound is the bound on how long the listener takes to
// listen again after its backend was terminated.
const reconnectBound = time.Second

// When its backend is terminated, the listener listens again within a
// second, on a new backend, runs the backlog again, and delivers what is
// sent from then on. Repeated, so that one lucky reconnect does not pass.
func TestReconnectAfterTerminate(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	rec, other := newRecorder(), newRecorder()
	a := newListenApp(t, url, handlers{"events": rec, "other": other}, nil)
	ctx := ctxT(t)
	admin := connect(t, url)
	require.EqualValues(t, 1, rec.backlogs.Load(), "backlog at start")

	const rounds = 3
	var took []time.Duration
	for round := 1; round <= rounds; round++ {
		pids := listenerBackends(t, admin)
		require.Len(t, pids, 1)
		before := a.listener.Stats().Reconnects
		began := time.Now()
		var ok bool
		require.NoError(t, admin.QueryRow(ctx, "SELECT pg_terminate_backend($1)", pids[0]).Scan(&ok))
		require.True(t, ok)
		d := waitReconnected(t, a.listener, before, began, 10*time.Second)
		took = append(took, d)
		t.Logf("round %d: listening again %s after pg_terminate_backend", round, d)
		assert.Less(t, d, reconnectBound, "round %d", round)

		st := a.listener.Stats()
		assert.Equal(t, before+1, st.Reconnects, "one outage, one reconnect")
		assert.True(t, st.Connected)
		require.Eventually(t, func() bool { return rec.backlogs.Load() == int64(round+1) }, deliveryTimeout, time.Millisecond,
			"the backlog ran again")
		require.Eventually(t, func() bool { return other.backlogs.Load() == int64(round+1) }, deliveryTimeout, time.Millisecond)
		assert.EqualValues(t, round+1, channelStats(t, a.listener, "events").Backlogs)

		// The terminated backend may linger in pg_stat_activity for a
		// moment while it exits.
		var newPIDs []int32
		require.Eventually(t, func() bool {
			newPIDs = listenerBackends(t, admin)
			return len(newPIDs) == 1 && newPIDs[0] != pids[0]
		}, deliveryTimeout, time.Millisecond, "one listener connection, a new one: %v", pids)

		payload := "after-" + strconv.Itoa(round)
		require.NoError(t, a.pool.Notify(ctx, "events", payload))
		assert.Equal(t, payload, rec.nextPayload(t))
		require.NoError(t, a.pool.Notify(ctx, "other", payload))
		assert.Equal(t, payload, other.nextPayload(t))
	}
	t.Logf("reconnect times after pg_terminate_backend: %v", took)
	code, doc := readyz(t, a.checker)
	require.Equal(t, 200, code, doc)
	assert.Equal(t, "pass", readyzCheck(t, doc, "postgres:listener")["status"])
}

// When the server stops, the listener reports warn in readiness while it
// is down, and once the server is back it listens again within moments,
// runs the backlog, passes, and delivers what is sent from then on.
func TestReconnectAfterServerRestart(t *testing.T) {
	srv := fxtest_helpers.StartServer(t)
	url := srv.NewDatabase(t)
	rec := newRecorder()
	a := newListenApp(t, url, handlers{"events": rec}, nil)
	ctx := ctxT(t)

	require.NoError(t, a.pool.Notify(ctx, "events", "before"))
	assert.Equal(t, "before", rec.nextPayload(t))
	code, doc := readyz(t, a.checker)
	require.Equal(t, 200, code, doc)
	assert.Equal(t, "pass", readyzCheck(t, doc, "postgres:listener")["status"])

	stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stopped := time.Now()
	require.NoError(t, srv.Stop(stopCtx))
	t.Logf("server stopped in %s", time.Since(stopped))
	require.Eventually(t, func() bool { return !a.listener.Stats().Connected }, deliveryTimeout, time.Millisecond)
	assert.False(t, a.listener.Listening())

	// While the server is down, a few attempts fail: the listener warns.
	time.Sleep(300 * time.Millisecond)
	code, doc = readyz(t, a.checker)
	assert.Equal(t, 503, code, "the database itself is down: %v", doc)
	res := readyzCheck(t, doc, "postgres:listener")
	assert.Equal(t, "warn", res["status"], "%v", res)
	assert.Contains(t, res["output"], "listener reconnecting since")
	assert.EqualValues(t, 1, res["observedValue"])
	t.Logf("listener while down: %v", res["output"])
	assert.EqualValues(t, 1, rec.backlogs.Load(), "no backlog while down")
	// A channel handled during the outage is listened to on reconnect.
	during := newRecorder()
	require.NoError(t, a.listener.Handle("during", during))

	began := time.Now()
	require.NoError(t, srv.Start(ctx))
	started := time.Now()
	t.Logf("server started in %s", started.Sub(began))
	d := waitReconnected(t, a.listener, 0, started, 10*time.Second)
	t.Logf("listening again %s after the server accepted connections (%s after Start was called)", d, time.Since(began))
	// The listener tries at least once a second (DefaultMaxBackoff), with
	// jitter; allow for the connection itself under load.
	assert.Less(t, d, 3*time.Second)
	assert.EqualValues(t, 1, a.listener.Stats().Reconnects, "one outage, however many attempts")

	require.Eventually(t, func() bool { return rec.backlogs.Load() == 2 }, deliveryTimeout, time.Millisecond,
		"the backlog ran again")
	require.Eventually(t, func() bool {
		code, doc := readyz(t, a.checker)
		return code == 200 && readyzCheck(t, doc, "postgres:listener")["status"] == "pass"
	}, deliveryTimeout, 10*time.Millisecond, "ready, and the listener passes")

	require.NoError(t, a.pool.Notify(ctx, "events", "after"))
	assert.Equal(t, "after", rec.nextPayload(t))
	require.NoError(t, a.pool.Notify(ctx, "during", "after"))
	assert.Equal(t, "after", during.nextPayload(t))
	assert.EqualValues(t, 1, during.backlogs.Load(), "its backlog ran once, when first listened to")
	rec.none(t)
}
