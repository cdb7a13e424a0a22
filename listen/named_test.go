package listen_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/listen"
)

// A Named instance's listener, on a database of its own, receives that
// database's notifications only; the default instance's listener
// receives the default database's only, on the same channel name.
func TestNamedInstanceListener(t *testing.T) {
	defaultRec, ordersRec := newRecorder(), newRecorder()
	var params struct {
		fx.In
		Default     *listen.Listener
		Orders      *listen.Listener `name:"orders"`
		DefaultPool *sprocketspg.Pool
		OrdersPool  *sprocketspg.Pool `name:"orders"`
		Checker     *health.Checker
		All         []*listen.Listener `group:"listen_listeners"`
	}
	fxtest_helpers.NewApp(t,
		fxtest_helpers.NamedDatabase(t, "orders"),
		listen.Notifications(),
		listen.Notifications(listen.ForInstance("orders")),
		fx.Invoke(fx.Annotate(func(def, orders *listen.Listener) error {
			if err := def.Handle("changes", defaultRec); err != nil {
				return err
			}
			return orders.Handle("changes", ordersRec)
		}, fx.ParamTags(``, `name:"orders"`))),
		sprocketspg.ProvideHealthOptions(health.WithCacheWindow(0)),
		fx.Populate(&params),
	)
	ctx := ctxT(t)
	require.NotSame(t, params.Default, params.Orders)
	assert.Equal(t, "orders", params.Orders.Instance())
	assert.Equal(t, "", params.Default.Instance())
	assert.Equal(t, "orders", params.Orders.Stats().Instance)
	assert.ElementsMatch(t, []*listen.Listener{params.Default, params.Orders}, params.All, "both in ListenersGroup")
	require.True(t, params.Orders.Listening())

	// The orders listener is on the orders database.
	admin := connect(t, params.OrdersPool.Config().URL)
	assert.Len(t, listenerBackends(t, admin), 1)

	require.NoError(t, params.OrdersPool.Notify(ctx, "changes", "orders-1"))
	require.NoError(t, params.DefaultPool.Notify(ctx, "changes", "default-1"))
	require.NoError(t, params.OrdersPool.Notify(ctx, "changes", "orders-2"))
	require.NoError(t, params.DefaultPool.Notify(ctx, "changes", "default-2"))
	assert.Equal(t, "orders-1", ordersRec.nextPayload(t))
	assert.Equal(t, "orders-2", ordersRec.nextPayload(t), "the default database's never came")
	assert.Equal(t, "default-1", defaultRec.nextPayload(t))
	assert.Equal(t, "default-2", defaultRec.nextPayload(t), "the orders database's never came")
	ordersRec.none(t)
	defaultRec.none(t)

	code, doc := readyz(t, params.Checker)
	require.Equal(t, 200, code, doc)
	assert.Equal(t, "pass", readyzCheck(t, doc, "postgres:listener")["status"])
	assert.Equal(t, "pass", readyzCheck(t, doc, "postgres-orders:listener")["status"])
}

// A Named instance's listener alone, without the default instance's.
func TestNamedInstanceListenerAlone(t *testing.T) {
	rec := newRecorder()
	var orders *listen.Listener
	var pool *sprocketspg.Pool
	var checker *health.Checker
	fxtest_helpers.NewApp(t,
		fxtest_helpers.NamedDatabase(t, "orders"),
		listen.Notifications(listen.ForInstance("orders")),
		fx.Populate(fx.Annotate(&orders, fx.ParamTags(`name:"orders"`))),
		fx.Populate(fx.Annotate(&pool, fx.ParamTags(`name:"orders"`))),
		fx.Populate(&checker),
	)
	require.NoError(t, orders.Handle("late", rec))
	ctx := ctxT(t)
	require.Eventually(t, orders.Listening, deliveryTimeout, time.Millisecond)
	require.NoError(t, pool.Notify(ctx, "late", "x"))
	assert.Equal(t, "x", rec.nextPayload(t))
	_, doc := readyz(t, checker)
	assert.Equal(t, "pass", readyzCheck(t, doc, "postgres-orders:listener")["status"])
	checks := doc["checks"].(map[string]any)
	assert.NotContains(t, checks, "postgres:listener", "the default instance has no listener")
}

// A listener for an instance the application does not have fails fx.New,
// saying what to add; so does a second listener of one instance.
func TestListenerForMissingInstance(t *testing.T) {
	// fx.New connects nowhere: any URL will do.
	url := withURL("postgres://127.0.0.1:1/none?sslmode=disable")
	app := newFxApp(t, sprocketspg.Module, url, listen.Notifications(listen.ForInstance("nope")))
	err := app.Err()
	require.Error(t, err)
	assert.Contains(t, err.Error(), `sprocketspg.Named("nope")`)
	t.Log(err)

	app = newFxApp(t, listen.Notifications())
	err = app.Err()
	require.Error(t, err, "no default instance")
	t.Log(err)

	app = newFxApp(t, sprocketspg.Module, url, listen.Notifications(), listen.Notifications())
	require.Error(t, app.Err(), "two listeners of one instance")
	t.Log(app.Err())
}

// The listener's connection is its own: a pool of one connection keeps
// that one while the listener listens, and the server has one more.
func TestListenerConnectionOutsidePool(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	admin := connect(t, url)
	rec := newRecorder()
	a := newListenApp(t, url, handlers{"solo": rec}, nil, fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
		c.MaxPoolSize, c.MinPoolSize = 1, 1
		c.ApplicationName = "listen-test"
		return c
	}))
	ctx := ctxT(t)
	require.True(t, a.listener.Listening())
	assert.EqualValues(t, 1, a.pool.Stat().TotalConns())
	assert.EqualValues(t, 1, a.pool.Stat().MaxConns())
	assert.Equal(t, 2, backends(t, admin), "the pool's one and the listener's")
	pids := listenerBackends(t, admin)
	require.Len(t, pids, 1)
	var appName string
	require.NoError(t, admin.QueryRow(ctx, "SELECT application_name FROM pg_stat_activity WHERE pid = $1", pids[0]).Scan(&appName))
	assert.Equal(t, "listen-test", appName, "made with the instance's settings")

	// The pool's one connection serves queries and notifies while the
	// listener listens.
	for i := range 5 {
		require.NoError(t, a.pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
			return tx.Notify(ctx, "solo", string(rune('a'+i)))
		}))
		assert.Equal(t, string(rune('a'+i)), rec.nextPayload(t))
	}
	assert.EqualValues(t, 1, a.pool.Stat().TotalConns())
	assert.Equal(t, 2, backends(t, admin))
}

// Without fx: New's Listener given to sprocketspg.New as an extension
// listens once New returns and stops with the pool.
func TestWithoutFx(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	admin := connect(t, url)
	rec := newRecorder()
	l := listen.New(listen.WithQueueSize(10))
	require.NoError(t, l.Handle("plain", rec))
	assert.False(t, l.Listening())
	ctx := ctxT(t)
	ext := l.Extension()
	assert.Equal(t, "listener", ext.Name)
	require.Len(t, ext.Components, 1)
	assert.Equal(t, listen.ComponentName, ext.Components[0].Name)
	report := ext.Components[0].Check(ctx)
	assert.Equal(t, health.StatusWarn, report.Status, "not started")
	assert.Equal(t, "listener not running", report.Output)
	pool, err := sprocketspg.New(ctx, poolConfig(t, url), sprocketspg.WithExtension(l.Extension()))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	require.True(t, l.Listening())
	require.Eventually(t, func() bool { return rec.backlogs.Load() == 1 }, deliveryTimeout, time.Millisecond)

	require.NoError(t, pool.Notify(ctx, "plain", "hello"))
	assert.Equal(t, "hello", rec.nextPayload(t))
	report = ext.Components[0].Check(ctx)
	assert.Equal(t, health.StatusPass, report.Status)
	assert.EqualValues(t, 1, report.ObservedValue)
	require.NoError(t, l.Handle("late", rec))
	require.Eventually(t, l.Listening, deliveryTimeout, time.Millisecond)
	require.NoError(t, pool.Notify(ctx, "late", "world"))
	assert.Equal(t, "world", rec.nextPayload(t))

	// One Listener serves one instance.
	other, err := sprocketspg.New(ctx, poolConfig(t, url), sprocketspg.WithExtension(l.Extension()))
	if err == nil {
		other.Close()
	}
	require.Error(t, err, "a started Listener refuses a second instance")
	t.Log(err)

	require.NoError(t, pool.Shutdown(context.Background()))
	assert.ErrorIs(t, l.Handle("after", rec), listen.ErrStopped)
	report = ext.Components[0].Check(ctx)
	assert.Equal(t, health.StatusWarn, report.Status, "stopped")
	assert.Empty(t, listenerBackends(t, admin))
	rec.none(t)
}

// A Listener made for one instance refuses to start with another: the
// pool's start fails, naming both.
func TestForInstanceMismatchWithoutFx(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	l := listen.New(listen.ForInstance("orders"))
	require.NoError(t, l.Handle("c", newRecorder()))
	ctx := ctxT(t)
	pool, err := sprocketspg.New(ctx, poolConfig(t, url), sprocketspg.WithExtension(l.Extension()))
	if err == nil {
		pool.Close()
	}
	require.Error(t, err)
	assert.Contains(t, err.Error(), `"orders"`)
	t.Log(err)
	assert.False(t, l.Listening())

	// With the name it was made for, it starts.
	pool, err = sprocketspg.New(ctx, poolConfig(t, url), sprocketspg.WithName("orders"), sprocketspg.WithExtension(l.Extension()))
	require.NoError(t, err)
	defer pool.Close()
	require.True(t, l.Listening())
	assert.Equal(t, "orders", l.Instance())
}
