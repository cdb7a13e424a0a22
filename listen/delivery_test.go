package listen_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/listen"
)

// A notification sent with the pool's Notify reaches the handler that an
// fx.Invoke registered, with its channel, payload and the sender's PID.
func TestNotificationReachesHandler(t *testing.T) {
	rec := newRecorder()
	a := newListenApp(t, fxtest_helpers.NewDatabase(t), handlers{"prices": rec}, nil)
	ctx := ctxT(t)
	require.True(t, a.listener.Listening(), "listening once start returned")

	require.NoError(t, a.pool.Notify(ctx, "prices", "sku-1"))
	n := rec.next(t)
	assert.Equal(t, "prices", n.Channel)
	assert.Equal(t, "sku-1", n.Payload)
	assert.NotZero(t, n.PID, "the sending backend's PID")

	// An empty payload is a payload too.
	require.NoError(t, a.pool.Notify(ctx, "prices", ""))
	assert.Equal(t, "", rec.nextPayload(t))

	require.Eventually(t, func() bool { return channelStats(t, a.listener, "prices").Delivered == 2 },
		deliveryTimeout, time.Millisecond)
	st := a.listener.Stats()
	assert.Equal(t, "", st.Instance)
	assert.True(t, st.Connected)
	assert.Zero(t, st.Reconnects)
	require.Len(t, st.Channels, 1)
	assert.Equal(t, listen.ChannelStats{Channel: "prices", Received: 2, Delivered: 2, Backlogs: 1}, st.Channels[0],
		"the backlog ran once, at start")
	assert.EqualValues(t, 1, rec.backlogs.Load())

	code, doc := readyz(t, a.checker)
	require.Equal(t, 200, code, doc)
	res := readyzCheck(t, doc, "postgres:listener")
	assert.Equal(t, "pass", res["status"])
	assert.EqualValues(t, 1, res["observedValue"])
	assert.Equal(t, "channels", res["observedUnit"])
}

// The largest payload PostgreSQL takes, 7999 bytes of multi-byte UTF-8,
// arrives intact; one byte more is refused by Notify before anything is
// sent.
func TestLargestPayload(t *testing.T) {
	rec := newRecorder()
	var (
		mu     sync.Mutex
		events []sprocketspg.QueryEvent
	)
	observer := fx.Provide(sprocketspg.AsObserver(func() sprocketspg.ObserverFunc {
		return func(ev sprocketspg.QueryEvent) {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, ev)
		}
	}))
	a := newListenApp(t, fxtest_helpers.NewDatabase(t), handlers{"big": rec}, nil, observer)
	ctx := ctxT(t)

	payload := strings.Repeat("é", 3999) + "!"
	require.Len(t, payload, 7999)
	require.NoError(t, a.pool.Notify(ctx, "big", payload))
	assert.Equal(t, payload, rec.nextPayload(t))

	for _, tooBig := range []string{strings.Repeat("x", 8000), payload + "x", strings.Repeat("y", 100000)} {
		err := a.pool.Notify(ctx, "big", tooBig)
		require.Error(t, err, len(tooBig))
		assert.ErrorIs(t, err, sprocketspg.ErrInvalidNotification)
		assert.ErrorIs(t, err, listen.ErrInvalidChannel, "the same sentinel")
		var pgErr *pgconn.PgError
		assert.False(t, errors.As(err, &pgErr), "refused before the server saw it: %v", err)
		t.Logf("%d bytes: %v", len(tooBig), err)
		err = a.pool.Transaction(ctx, func(tx *sprocketspg.Tx) error { return tx.Notify(ctx, "big", tooBig) })
		assert.ErrorIs(t, err, sprocketspg.ErrInvalidNotification)
	}

	// The observers see every statement sent, in order: up to the
	// marker's, only the valid payload's pg_notify was sent.
	require.NoError(t, a.pool.Notify(sprocketspg.WithMetricName(ctx, "marker"), "big", "marker"))
	assert.Equal(t, "marker", rec.nextPayload(t), "nothing refused was delivered")
	var notifies []sprocketspg.QueryEvent
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		notifies = notifies[:0]
		for _, ev := range events {
			if ev.Operation == sprocketspg.OperationExecute && strings.Contains(ev.SQL, "pg_notify") {
				notifies = append(notifies, ev)
			}
		}
		return len(notifies) > 0 && notifies[len(notifies)-1].MetricName == "marker"
	}, deliveryTimeout, time.Millisecond)
	require.Len(t, notifies, 2, "only the valid payload and the marker were sent: %+v", notifies)
	assert.NoError(t, notifies[0].Err)
	require.Eventually(t, func() bool { return channelStats(t, a.listener, "big").Delivered == 2 },
		deliveryTimeout, time.Millisecond)
	assert.Equal(t, listen.ChannelStats{Channel: "big", Received: 2, Delivered: 2, Backlogs: 1},
		channelStats(t, a.listener, "big"))
}

// 1,000 notifications sent in one transaction, and 1,000 more sent one by
// one in a tight loop, all arrive, in the order they were sent.
func TestBurstArrivesInOrder(t *testing.T) {
	const n = 1000
	rec := newRecorder()
	a := newListenApp(t, fxtest_helpers.NewDatabase(t), handlers{"burst": rec}, nil)
	ctx := ctxT(t)

	require.NoError(t, a.pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		for i := range n {
			if err := tx.Notify(ctx, "burst", "tx-"+strconv.Itoa(i)); err != nil {
				return err
			}
		}
		return nil
	}))
	for i := range n {
		require.Equal(t, "tx-"+strconv.Itoa(i), rec.nextPayload(t))
	}

	for i := range n {
		require.NoError(t, a.pool.Notify(ctx, "burst", "loop-"+strconv.Itoa(i)))
	}
	for i := range n {
		require.Equal(t, "loop-"+strconv.Itoa(i), rec.nextPayload(t))
	}
	rec.none(t)

	require.Eventually(t, func() bool { return channelStats(t, a.listener, "burst").Delivered == 2*n },
		deliveryTimeout, time.Millisecond)
	st := channelStats(t, a.listener, "burst")
	assert.EqualValues(t, 2*n, st.Received)
	assert.Zero(t, st.Dropped)
	assert.Zero(t, st.Failed)
}

// A notification sent in a transaction that rolls back is never
// delivered; one sent in a transaction that commits is, at commit.
func TestTransactionNotify(t *testing.T) {
	rec := newRecorder()
	a := newListenApp(t, fxtest_helpers.NewDatabase(t), handlers{"orders": rec}, nil)
	ctx := ctxT(t)

	errRollback := errors.New("roll back")
	err := a.pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		require.NoError(t, tx.Notify(ctx, "orders", "rolled-back"))
		return errRollback
	})
	require.ErrorIs(t, err, errRollback)
	// A marker sent afterwards arrives first: the rolled-back one was never
	// sent, since notifications arrive in the order they were committed.
	require.NoError(t, a.pool.Notify(ctx, "orders", "marker-1"))
	assert.Equal(t, "marker-1", rec.nextPayload(t))

	// Committed: delivered, but only once the transaction commits.
	committed := make(chan struct{})
	err = a.pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		require.NoError(t, tx.Notify(ctx, "orders", "committed"))
		// A notification sent outside the transaction meanwhile overtakes
		// it.
		require.NoError(t, a.pool.Notify(ctx, "orders", "outside"))
		assert.Equal(t, "outside", rec.nextPayload(t), "not delivered before commit")
		close(committed)
		return nil
	})
	require.NoError(t, err)
	<-committed
	assert.Equal(t, "committed", rec.nextPayload(t))

	// A panic rolls back too.
	assert.Panics(t, func() {
		_ = a.pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
			require.NoError(t, tx.Notify(ctx, "orders", "panicked"))
			panic("boom")
		})
	})
	require.NoError(t, a.pool.Notify(ctx, "orders", "marker-2"))
	assert.Equal(t, "marker-2", rec.nextPayload(t))
	rec.none(t)
}

// Handle refuses the channel names PostgreSQL would not keep as written,
// a nil handler and a second handler of a channel.
func TestHandleRefusesBadChannels(t *testing.T) {
	l := listen.New()
	h := listen.HandlerFunc(func(context.Context, *listen.Notification) error { return nil })
	for name, channel := range map[string]string{
		"empty":        "",
		"64 bytes":     strings.Repeat("c", 64),
		"64 bytes é":   strings.Repeat("é", 32),
		"NUL":          "a\x00b",
		"invalid UTF8": "caf\xe9",
	} {
		t.Run(name, func(t *testing.T) {
			err := l.Handle(channel, h)
			require.Error(t, err)
			assert.ErrorIs(t, err, listen.ErrInvalidChannel)
			assert.ErrorIs(t, err, sprocketspg.ErrInvalidNotification)
			assert.NotErrorIs(t, err, listen.ErrDuplicateChannel)
			t.Log(err)
		})
	}
	require.NoError(t, l.Handle(strings.Repeat("c", 63), h), "63 bytes is the longest name")
	require.NoError(t, l.Handle(strings.Repeat("é", 31)+"x", h), "63 bytes of UTF-8")

	require.NoError(t, l.Handle("dup", h))
	err := l.Handle("dup", h)
	assert.ErrorIs(t, err, listen.ErrDuplicateChannel)
	assert.Contains(t, err.Error(), `"dup"`)
	assert.NoError(t, l.Handle("Dup", h), "another channel: case counts")

	err = l.Handle("nil", nil)
	assert.Error(t, err)
	assert.NotErrorIs(t, err, listen.ErrInvalidChannel)

	assert.Len(t, l.Stats().Channels, 4, "the refused channels were not added")
	assert.False(t, l.Listening(), "not started")
}

// A channel whose name has quotes, a semicolon, spaces and capitals is
// listened to as written: it works end to end, nothing of it runs as SQL,
// and the lower-cased name is another channel.
func TestChannelNameAsWritten(t *testing.T) {
	const weird = `Weird"; DROP TABLE x; --`
	url := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema("CREATE TABLE x (id int)"))
	rec, lower := newRecorder(), newRecorder()
	a := newListenApp(t, url, handlers{weird: rec, "plain": lower}, nil)
	ctx := ctxT(t)

	require.NoError(t, a.pool.Notify(ctx, weird, "one"))
	n := rec.next(t)
	assert.Equal(t, weird, n.Channel)
	assert.Equal(t, "one", n.Payload)

	// Neither the lower-cased name nor the name unquoted reaches it.
	require.NoError(t, a.pool.Notify(ctx, strings.ToLower(weird), "lower"))
	require.NoError(t, a.pool.Notify(ctx, "weird", "unquoted"))
	require.NoError(t, a.pool.Notify(ctx, weird, "two"))
	assert.Equal(t, "two", rec.nextPayload(t), "the other names never arrived")

	// A handler of "plain" gets nothing of "PLAIN".
	require.NoError(t, a.pool.Notify(ctx, "PLAIN", "upper"))
	require.NoError(t, a.pool.Notify(ctx, "plain", "lower"))
	assert.Equal(t, "lower", lower.nextPayload(t))

	var exists bool
	require.NoError(t, connect(t, url).QueryRow(ctx, "SELECT to_regclass('x') IS NOT NULL").Scan(&exists))
	assert.True(t, exists, "table x is still there")
	rec.none(t)
	lower.none(t)
}

// A channel handled after start is listened to within a moment, on the
// same connection, and receives; a notification to it sent before is not
// delivered.
func TestHandleAfterStart(t *testing.T) {
	first := newRecorder()
	url := fxtest_helpers.NewDatabase(t)
	a := newListenApp(t, url, handlers{"first": first}, nil)
	ctx := ctxT(t)
	admin := connect(t, url)
	pids := listenerBackends(t, admin)
	require.Len(t, pids, 1)

	require.NoError(t, a.pool.Notify(ctx, "second", "before"))
	second := newRecorder()
	require.NoError(t, a.listener.Handle("second", second))
	require.Eventually(t, a.listener.Listening, deliveryTimeout, time.Millisecond)
	require.NoError(t, a.pool.Notify(ctx, "second", "after"))
	assert.Equal(t, "after", second.nextPayload(t))
	assert.EqualValues(t, 1, second.backlogs.Load(), "its backlog ran once it was listened to")

	require.NoError(t, a.pool.Notify(ctx, "first", "still"))
	assert.Equal(t, "still", first.nextPayload(t))
	assert.Equal(t, pids, listenerBackends(t, admin), "the same connection")
	assert.Zero(t, a.listener.Stats().Reconnects)
	assert.Len(t, a.listener.Stats().Channels, 2)
}

// Listening may be trusted right away: once it reports true after a
// Handle, the new channel is listened to, so a notification sent then is
// delivered. Many channels handled in a row, each checked at once.
func TestListeningAfterHandleMeansListened(t *testing.T) {
	first := newRecorder()
	a := newListenApp(t, fxtest_helpers.NewDatabase(t), handlers{"first": first}, nil)
	ctx := ctxT(t)
	const channels = 100
	var missed []int
	for i := range channels {
		rec := newRecorder()
		name := "late-" + strconv.Itoa(i)
		require.NoError(t, a.listener.Handle(name, rec))
		require.Eventually(t, a.listener.Listening, deliveryTimeout, 50*time.Microsecond)
		require.NoError(t, a.pool.Notify(ctx, name, "x"))
		require.NoError(t, a.pool.Notify(ctx, "first", name))
		require.Equal(t, name, first.nextPayload(t))
		// The first channel's marker, sent after, has arrived; the new
		// channel's, on the same connection and sent before, must have too.
		select {
		case <-rec.got:
		case <-time.After(quietPeriod):
			missed = append(missed, i)
		}
	}
	assert.Empty(t, missed, "channels whose notification, sent once Listening was true, was lost (of %d)", channels)
}

// A listener with no channel at start holds no connection, passes its
// check, and connects once a channel is handled.
func TestNoChannelsAtStart(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	a := newListenApp(t, url, nil, nil)
	ctx := ctxT(t)
	admin := connect(t, url)
	assert.Empty(t, listenerBackends(t, admin))
	assert.True(t, a.listener.Listening(), "with no channel there is nothing it fails to listen to")
	code, doc := readyz(t, a.checker)
	require.Equal(t, 200, code, doc)
	res := readyzCheck(t, doc, "postgres:listener")
	assert.Equal(t, "pass", res["status"])
	assert.EqualValues(t, 0, res["observedValue"])

	rec := newRecorder()
	require.NoError(t, a.listener.Handle("late", rec))
	require.Eventually(t, a.listener.Listening, deliveryTimeout, time.Millisecond)
	require.NoError(t, a.pool.Notify(ctx, "late", "hello"))
	assert.Equal(t, "hello", rec.nextPayload(t))
	assert.Len(t, listenerBackends(t, admin), 1)
	assert.Zero(t, a.listener.Stats().Reconnects, "the first connection is not a reconnect")
}
