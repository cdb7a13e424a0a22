package listen_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/listen"
)

// deliveryTimeout bounds the wait for a notification that must arrive:
// generous, since a miss fails the test and a hit returns at once.
const deliveryTimeout = 10 * time.Second

// quietPeriod is how long a test waits for a notification that must not
// come, when no later marker can prove it did not.
const quietPeriod = 200 * time.Millisecond

// ctxT is a context for one test's work, generous enough for any start.
func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// recorder is a BacklogHandler that hands each notification to the test
// through a channel and counts the runs of its backlog.
type recorder struct {
	got      chan *listen.Notification
	backlogs atomic.Int64
}

func newRecorder() *recorder {
	return &recorder{got: make(chan *listen.Notification, 10000)}
}

func (r *recorder) HandleNotification(_ context.Context, n *listen.Notification) error {
	r.got <- n
	return nil
}

func (r *recorder) HandleBacklog(context.Context, string) error {
	r.backlogs.Add(1)
	return nil
}

// next returns the next notification r received, failing t when none
// comes within deliveryTimeout.
func (r *recorder) next(t testing.TB) *listen.Notification {
	t.Helper()
	select {
	case n := <-r.got:
		return n
	case <-time.After(deliveryTimeout):
		require.FailNow(t, "no notification within the timeout")
		return nil
	}
}

// nextPayload is the payload of next.
func (r *recorder) nextPayload(t testing.TB) string {
	t.Helper()
	return r.next(t).Payload
}

// none fails t when r receives anything within quietPeriod.
func (r *recorder) none(t testing.TB) {
	t.Helper()
	select {
	case n := <-r.got:
		require.Failf(t, "unexpected notification", "%+v", n)
	case <-time.After(quietPeriod):
	}
}

// handlers maps channel names to the handlers an app's listener gets.
type handlers map[string]listen.Handler

// listenApp is an app of fxtest_helpers.NewAppWithDatabase on url with
// the default instance's listener, made with opts, handling hs from an
// fx.Invoke; it returns the pool and the listener.
type listenApp struct {
	pool     *sprocketspg.Pool
	listener *listen.Listener
	checker  *health.Checker
}

func newListenApp(t *testing.T, url string, hs handlers, opts []listen.Option, extra ...fx.Option) listenApp {
	t.Helper()
	var a listenApp
	all := []fx.Option{
		listen.Notifications(opts...),
		fx.Invoke(func(l *listen.Listener) error {
			for name, h := range hs {
				if err := l.Handle(name, h); err != nil {
					return err
				}
			}
			return nil
		}),
		sprocketspg.ProvideHealthOptions(health.WithCacheWindow(0)),
		fx.Populate(&a.pool, &a.listener, &a.checker),
	}
	fxtest_helpers.NewAppWithDatabase(t, url, append(all, extra...)...)
	return a
}

// newFxApp is fx.New of opts with the test's logger, for tests that start
// and stop the app themselves; it stops the app, if it started, when the
// test ends.
func newFxApp(t *testing.T, opts ...fx.Option) *fx.App {
	t.Helper()
	logger := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	all := append([]fx.Option{
		fx.Supply(logger),
		fx.WithLogger(func() fxevent.Logger {
			return &fxevent.ZapLogger{Logger: logger.WithOptions(zap.IncreaseLevel(zap.WarnLevel))}
		}),
	}, opts...)
	app := fx.New(all...)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = app.Stop(ctx) // a no-op for an app that never started or has stopped
	})
	return app
}

// withURL sets the default instance's URL in an app of newFxApp.
func withURL(url string) fx.Option {
	return fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
		c.URL = url
		return c
	})
}

// connect opens a connection of the test's own to url, outside any app,
// closed when the test ends.
func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctxT(t), url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// listenerBackends returns the PIDs of the sessions on conn's database,
// other than conn's own, whose last statement was a LISTEN: the
// listener's.
func listenerBackends(t testing.TB, conn *pgx.Conn) []int32 {
	t.Helper()
	rows, err := conn.Query(ctxT(t), `SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN %'
		ORDER BY pid`)
	require.NoError(t, err)
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	require.NoError(t, err)
	return pids
}

// backends counts the sessions on conn's database other than conn's own.
func backends(t testing.TB, conn *pgx.Conn) int {
	t.Helper()
	var n int
	require.NoError(t, conn.QueryRow(ctxT(t), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&n))
	return n
}

// channelStats returns the counters of channel.
func channelStats(t testing.TB, l *listen.Listener, channel string) listen.ChannelStats {
	t.Helper()
	for _, c := range l.Stats().Channels {
		if c.Channel == channel {
			return c
		}
	}
	require.Failf(t, "no stats for channel", "%q in %+v", channel, l.Stats())
	return listen.ChannelStats{}
}

// readyz asks c's readiness handler, as health.Register serves it, and
// decodes the document.
func readyz(t testing.TB, c *health.Checker) (int, map[string]any) {
	t.Helper()
	mux := http.NewServeMux()
	health.Register(mux, c)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	var doc map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &doc), rec.Body.String())
	return rec.Code, doc
}

// readyzCheck returns the one result of the check called name in a
// readiness document.
func readyzCheck(t testing.TB, doc map[string]any, name string) map[string]any {
	t.Helper()
	checks, ok := doc["checks"].(map[string]any)
	require.True(t, ok, "no checks in %v", doc)
	list, ok := checks[name].([]any)
	require.True(t, ok, "no check %q in %v", name, doc)
	require.Len(t, list, 1, name)
	res, ok := list[0].(map[string]any)
	require.True(t, ok, "%v", list[0])
	return res
}

// waitReconnected waits until l counts more than before reconnects and
// listens, and returns how long that took from since.
func waitReconnected(t testing.TB, l *listen.Listener, before uint64, since time.Time, within time.Duration) time.Duration {
	t.Helper()
	deadline := since.Add(within)
	for {
		if l.Stats().Reconnects > before && l.Listening() {
			return time.Since(since)
		}
		if time.Now().After(deadline) {
			require.Failf(t, "listener did not reconnect", "within %s: %+v", within, l.Stats())
		}
		time.Sleep(time.Millisecond)
	}
}
