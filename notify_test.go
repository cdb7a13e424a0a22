package sprocketspg_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// notifySchema is a table that a channel name spliced into SQL would drop.
const notifySchema = `CREATE TABLE t (id integer PRIMARY KEY); INSERT INTO t VALUES (1);`

// notificationWait bounds the wait for a notification that must arrive.
const notificationWait = 10 * time.Second

// listenConn opens a plain pgx connection to url, outside any Pool, and
// runs each of listens (LISTEN statements, as written) on it. An ended
// wait leaves the connection usable (a deadline, not a cancel request),
// so that a test can wait for a notification that must not come and
// then for one that must.
func listenConn(t *testing.T, url string, listens ...string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	require.NoError(t, err)
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: pc.Conn()}
	}
	ctx := ctxT(t)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	for _, sql := range listens {
		_, err := conn.Exec(ctx, sql)
		require.NoError(t, err, sql)
	}
	return conn
}

// nextNotification waits for conn's next notification.
func nextNotification(t *testing.T, conn *pgx.Conn) *pgconn.Notification {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), notificationWait)
	defer cancel()
	n, err := conn.WaitForNotification(ctx)
	require.NoError(t, err, "want a notification within %s", notificationWait)
	return n
}

// noNotification fails t when conn gets a notification within d.
func noNotification(t *testing.T, conn *pgx.Conn, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	n, err := conn.WaitForNotification(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded, "want no notification, got %+v", n)
	require.False(t, conn.IsClosed(), "the listening connection survives the ended wait")
}

func TestNotifyDelivers(t *testing.T) {
	rec := &recorder{}
	url := fxtest_helpers.NewDatabase(t)
	pool := newPoolAt(t, url, nil, sprocketspg.WithObserver(rec))
	conn := listenConn(t, url, `LISTEN "orders"`)

	require.NoError(t, pool.Notify(ctxT(t), "orders", "order 42 paid"))
	n := nextNotification(t, conn)
	assert.Equal(t, "orders", n.Channel)
	assert.Equal(t, "order 42 paid", n.Payload)
	assert.NotZero(t, n.PID, "the sending backend's PID")

	// An empty payload is a payload.
	require.NoError(t, pool.Notify(ctxT(t), "orders", ""))
	n = nextNotification(t, conn)
	assert.Equal(t, "orders", n.Channel)
	assert.Empty(t, n.Payload)
}

func TestNotifyChannelIsAParameter(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(notifySchema))
	pool := newPoolAt(t, url, nil)
	const (
		injection = `x'); DROP TABLE t; --`
		quoted    = `Say "Hi" Now`
		// A 63-byte name, the longest PostgreSQL keeps, with a multi-byte
		// character: a byte short of the limit is not cut.
		longest = "é" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012345678"
	)
	require.Len(t, longest, 63)
	// The LISTEN statements are written out quoted, not built with the
	// code under test.
	conn := listenConn(t, url,
		`LISTEN "x'); DROP TABLE t; --"`,
		`LISTEN "Say ""Hi"" Now"`,
		`LISTEN "`+longest+`"`,
	)
	ctx := ctxT(t)

	for _, channel := range []string{injection, quoted, longest} {
		require.NoError(t, pool.Notify(ctx, channel, "payload of "+channel), channel)
		n := nextNotification(t, conn)
		assert.Equal(t, channel, n.Channel, "delivered to exactly the name given")
		assert.Equal(t, "payload of "+channel, n.Payload)
	}

	// The same in a transaction.
	require.NoError(t, pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		return tx.Notify(ctx, injection, "in tx")
	}))
	n := nextNotification(t, conn)
	assert.Equal(t, injection, n.Channel)
	assert.Equal(t, "in tx", n.Payload)

	res, err := pool.Execute(ctx, "SELECT count(*) AS n FROM t")
	require.NoError(t, err, "the table survives")
	assert.EqualValues(t, 1, res.Row["n"])
}

func TestNotifyChannelIsCaseSensitive(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	pool := newPoolAt(t, url, nil)
	conn := listenConn(t, url, `LISTEN "Foo"`)
	ctx := ctxT(t)

	// "foo" is another channel, which nobody listens to; notifications
	// reach a listener in the order they were sent, so "Foo"'s must be the
	// first to arrive.
	require.NoError(t, pool.Notify(ctx, "foo", "lower"))
	require.NoError(t, pool.Notify(ctx, "FOO", "upper"))
	require.NoError(t, pool.Notify(ctx, "Foo", "exact"))
	n := nextNotification(t, conn)
	assert.Equal(t, "Foo", n.Channel)
	assert.Equal(t, "exact", n.Payload, "only the channel as written reaches LISTEN \"Foo\"")

	// An unquoted LISTEN folds to lower case, and hears "foo" only.
	lower := listenConn(t, url, `LISTEN Foo`)
	require.NoError(t, pool.Notify(ctx, "Foo", "exact again"))
	require.NoError(t, pool.Notify(ctx, "foo", "folded"))
	n = nextNotification(t, lower)
	assert.Equal(t, "foo", n.Channel)
	assert.Equal(t, "folded", n.Payload)
}

func TestNotifyRefusesInvalidNotifications(t *testing.T) {
	rec := &recorder{}
	url := fxtest_helpers.NewDatabase(t)
	pool := newPoolAt(t, url, nil, sprocketspg.WithObserver(rec))
	ctx := ctxT(t)

	for _, tc := range []struct{ name, channel, payload string }{
		{"empty channel", "", "p"},
		{"64-byte channel", strings.Repeat("c", 64), "p"},
		{"64-byte multi-byte channel", strings.Repeat("é", 32), "p"},
		{"NUL in channel", "a\x00b", "p"},
		{"invalid UTF-8 channel", "bad\xff", "p"},
		{"8000-byte payload", "c", strings.Repeat("x", 8000)},
		{"NUL in payload", "c", "a\x00b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := pool.Notify(ctx, tc.channel, tc.payload)
			require.ErrorIs(t, err, sprocketspg.ErrInvalidNotification)
			assert.False(t, sprocketspg.IsConnectionError(err))

			err = pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
				return tx.Notify(ctx, tc.channel, tc.payload)
			})
			require.ErrorIs(t, err, sprocketspg.ErrInvalidNotification)
		})
	}

	// No round trip: the observer saw the transactions and this query,
	// and no statement of a refused Notify. Observers hear the events in
	// order, so those of the refused calls would have come first.
	_, err := pool.Execute(sprocketspg.WithMetricName(ctx, "marker"), "SELECT 1")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		events := rec.snapshot()
		return len(events) > 0 && events[len(events)-1].MetricName == "marker"
	}, 5*time.Second, 5*time.Millisecond)
	for _, ev := range rec.snapshot() {
		if ev.Operation == sprocketspg.OperationExecute {
			assert.Equal(t, "SELECT 1", ev.SQL, "only the marker ran a statement")
		}
	}
}

func TestNotifyPayloadLimitIsPostgres(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	pool := newPoolAt(t, url, nil)
	conn := listenConn(t, url, `LISTEN "c"`)
	ctx := ctxT(t)

	// The longest payload sprocketspg lets through, PostgreSQL delivers.
	payload := strings.Repeat("x", 7999)
	require.NoError(t, pool.Notify(ctx, "c", payload))
	n := nextNotification(t, conn)
	assert.Equal(t, payload, n.Payload)

	// And PostgreSQL itself refuses a byte more, and a channel name of 64
	// bytes: the limits of pgchannel are the server's.
	admin := adminConn(t, url)
	_, err := admin.Exec(ctx, `SELECT pg_notify('c', repeat('x', 8000))`)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "22023", pgErr.Code, "invalid_parameter_value")
	assert.Contains(t, pgErr.Message, "payload string too long")

	_, err = admin.Exec(ctx, `SELECT pg_notify(repeat('c', 64), 'p')`)
	require.ErrorAs(t, err, &pgErr)
	assert.Contains(t, pgErr.Message, "channel name too long")
	_, err = admin.Exec(ctx, `SELECT pg_notify(repeat('c', 63), 'p')`)
	require.NoError(t, err, "63 bytes is a channel name")
	_, err = admin.Exec(ctx, `SELECT pg_notify('', 'p')`)
	require.ErrorAs(t, err, &pgErr)
	assert.Contains(t, pgErr.Message, "channel name cannot be empty")
}

func TestTxNotifyDeliveredOnlyOnCommit(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	pool := newPoolAt(t, url, nil)
	conn := listenConn(t, url, `LISTEN "c"`)
	ctx := ctxT(t)

	require.NoError(t, pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		if err := tx.Notify(ctx, "c", "committed"); err != nil {
			return err
		}
		// Not before the commit.
		noNotification(t, conn, 300*time.Millisecond)
		return nil
	}))
	n := nextNotification(t, conn)
	assert.Equal(t, "c", n.Channel)
	assert.Equal(t, "committed", n.Payload)

	errRollback := errors.New("roll back")
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		if err := tx.Notify(ctx, "c", "rolled back"); err != nil {
			return err
		}
		return errRollback
	})
	require.ErrorIs(t, err, errRollback)
	// Notifications arrive in the order of their commits: the marker sent
	// after the rollback must be the next, with nothing before it.
	require.NoError(t, pool.Notify(ctx, "c", "marker"))
	n = nextNotification(t, conn)
	assert.Equal(t, "marker", n.Payload, "the rolled-back notification is never delivered")

	// A failed statement rolls the transaction back too.
	err = pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		if err := tx.Notify(ctx, "c", "aborted"); err != nil {
			return err
		}
		_, err := tx.Execute(ctx, "SELECT 1/0")
		return err
	})
	require.Error(t, err)
	require.NoError(t, pool.Notify(ctx, "c", "second marker"))
	n = nextNotification(t, conn)
	assert.Equal(t, "second marker", n.Payload, "the aborted notification is never delivered")
}

func TestNotifyNotConnected(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	var pool *sprocketspg.Pool
	app := fxtest.New(t,
		sprocketspg.Module,
		fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config { c.URL = url; return c }),
		fx.Supply(zaptest.NewLogger(t)),
		fx.Populate(&pool),
	)
	conn := listenConn(t, url, `LISTEN "c"`)

	err := pool.Notify(ctxT(t), "c", "before start")
	require.ErrorIs(t, err, sprocketspg.ErrNotConnected)
	assert.True(t, sprocketspg.IsConnectionError(err))

	app.RequireStart()
	require.NoError(t, pool.Notify(ctxT(t), "c", "started"))
	n := nextNotification(t, conn)
	assert.Equal(t, "started", n.Payload, "the notification before start was never sent")

	app.RequireStop()
	err = pool.Notify(ctxT(t), "c", "after stop")
	require.ErrorIs(t, err, sprocketspg.ErrNotConnected)
	assert.True(t, sprocketspg.IsConnectionError(err))
}

func TestNotifyCancelledContext(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	pool := newPoolAt(t, url, nil)
	conn := listenConn(t, url, `LISTEN "c"`)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := pool.Notify(ctx, "c", "cancelled")
	require.ErrorIs(t, err, context.Canceled)

	require.NoError(t, pool.Notify(ctxT(t), "c", "marker"))
	n := nextNotification(t, conn)
	assert.Equal(t, "marker", n.Payload, "the cancelled notification was not sent")
}

func TestNotifyObserved(t *testing.T) {
	rec := &recorder{}
	url := fxtest_helpers.NewDatabase(t)
	pool := newPoolAt(t, url, nil, sprocketspg.WithObserver(rec))
	conn := listenConn(t, url, `LISTEN "prices"`)
	ctx := ctxT(t)

	require.NoError(t, pool.Notify(sprocketspg.WithMetricName(ctx, "invalidate-prices"), "prices", "sku-1"))
	nextNotification(t, conn)
	// A marker after it: the events come in order, so once the marker's
	// has arrived, every event of Notify has too.
	_, err := pool.Execute(sprocketspg.WithMetricName(ctx, "marker"), "SELECT 1")
	require.NoError(t, err)
	events := rec.waitEvents(t, 2)
	require.Len(t, events, 2, "one event for Notify, one for the marker")
	ev := events[0]
	assert.Equal(t, sprocketspg.OperationExecute, ev.Operation)
	assert.Equal(t, "invalidate-prices", ev.MetricName)
	assert.Equal(t, "SELECT pg_notify($1, $2)", ev.SQL)
	assert.Equal(t, "invalidate-prices", sprocketspg.MetricName(ev.Context))
	assert.NoError(t, ev.Err)
	assert.Positive(t, ev.Duration)
	assert.Equal(t, "marker", events[1].MetricName)

	// In a transaction: the statement, then the transaction.
	require.NoError(t, pool.Transaction(sprocketspg.WithMetricName(ctx, "tx-notify"), func(tx *sprocketspg.Tx) error {
		return tx.Notify(sprocketspg.WithMetricName(ctx, "tx-notify"), "prices", "sku-2")
	}))
	nextNotification(t, conn)
	events = rec.waitEvents(t, 4)
	require.Len(t, events, 4)
	assert.Equal(t, sprocketspg.OperationExecute, events[2].Operation)
	assert.Equal(t, "SELECT pg_notify($1, $2)", events[2].SQL)
	assert.Equal(t, "tx-notify", events[2].MetricName)
	assert.Equal(t, sprocketspg.OperationTransaction, events[3].Operation)

	// A failed Notify is observed with its error.
	ctxDone, cancel := context.WithCancel(sprocketspg.WithMetricName(ctx, "cancelled"))
	cancel()
	require.Error(t, pool.Notify(ctxDone, "prices", "sku-3"))
	events = rec.waitEvents(t, 5)
	require.Len(t, events, 5)
	assert.Equal(t, "cancelled", events[4].MetricName)
	assert.ErrorIs(t, events[4].Err, context.Canceled)
}
