package listen_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/listen"
)

// blocker is a handler that tells the test when it has begun to handle
// a notification and then waits until the test releases it.
type blocker struct {
	started chan string   // the payloads it began to handle
	release chan struct{} // closed to let every call return
	handled atomic.Int64
}

func newBlocker() *blocker {
	return &blocker{started: make(chan string, 10000), release: make(chan struct{})}
}

func (b *blocker) HandleNotification(_ context.Context, n *listen.Notification) error {
	b.started <- n.Payload
	<-b.release
	b.handled.Add(1)
	return nil
}

// observedLogger is a logger that both the test's output and an observer
// see, for counting the listener's log entries.
func observedLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	test := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Core()
	return zap.New(zapcore.NewTee(test, core)), logs
}

// A handler that blocks delays its own channel only; with a small queue
// its overflow is dropped, counted and logged once, and what was queued
// is delivered once it returns.
func TestBlockedHandlerDelaysOnlyItsChannel(t *testing.T) {
	const queueSize, burst = 5, 50
	logger, logs := observedLogger(t)
	slow, fast := newBlocker(), newRecorder()
	a := newListenApp(t, fxtest_helpers.NewDatabase(t), handlers{"slow": slow, "fast": fast},
		[]listen.Option{listen.WithQueueSize(queueSize), listen.WithLogger(logger)})
	ctx := ctxT(t)
	released := false
	release := func() {
		if !released {
			released = true
			close(slow.release)
		}
	}
	t.Cleanup(release) // before the app stops: cleanups run last first

	require.NoError(t, a.pool.Notify(ctx, "slow", "0"))
	select {
	case p := <-slow.started:
		require.Equal(t, "0", p)
	case <-time.After(deliveryTimeout):
		require.FailNow(t, "the slow handler was not called")
	}
	// The handler is busy with 0: 1..queueSize wait, the rest is dropped.
	require.NoError(t, a.pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		for i := 1; i <= burst; i++ {
			if err := tx.Notify(ctx, "slow", strconv.Itoa(i)); err != nil {
				return err
			}
		}
		return nil
	}))
	for i := range 20 {
		require.NoError(t, a.pool.Notify(ctx, "fast", strconv.Itoa(i)))
		assert.Equal(t, strconv.Itoa(i), fast.nextPayload(t), "the fast channel is not held up")
	}
	// Received is counted as a notification arrives, Dropped just after.
	require.Eventually(t, func() bool {
		st := channelStats(t, a.listener, "slow")
		return st.Received == burst+1 && st.Dropped == burst-queueSize
	}, deliveryTimeout, time.Millisecond, "%+v", a.listener.Stats())

	st := channelStats(t, a.listener, "slow")
	assert.Equal(t, listen.ChannelStats{
		Channel: "slow", Received: burst + 1, Delivered: 0, Dropped: burst - queueSize, Backlogs: 0,
	}, st, "one in the handler, %d queued, the rest dropped", queueSize)
	fastSt := channelStats(t, a.listener, "fast")
	assert.EqualValues(t, 20, fastSt.Received)
	assert.Zero(t, fastSt.Dropped)

	full := logs.FilterMessageSnippet("queue full")
	require.Equal(t, 1, full.Len(), "the overflow is logged once: %v", full.All())
	entry := full.All()[0]
	assert.Equal(t, zapcore.WarnLevel, entry.Level)
	fields := entry.ContextMap()
	assert.Equal(t, "slow", fields["channel"])
	assert.EqualValues(t, queueSize, fields["queue_size"])
	assert.Equal(t, "listener", fields["component"])

	release()
	// What was queued is delivered, in order, and nothing dropped is.
	for i := 1; i <= queueSize; i++ {
		select {
		case p := <-slow.started:
			assert.Equal(t, strconv.Itoa(i), p)
		case <-time.After(deliveryTimeout):
			require.FailNow(t, "queued notification not delivered", "%d", i)
		}
	}
	require.Eventually(t, func() bool { return channelStats(t, a.listener, "slow").Delivered == queueSize+1 },
		deliveryTimeout, time.Millisecond)
	st = channelStats(t, a.listener, "slow")
	assert.Equal(t, st.Received, st.Delivered+st.Dropped, "received = delivered + dropped once the queue is empty: %+v", st)

	// The channel works again, and says so once.
	require.NoError(t, a.pool.Notify(ctx, "slow", "again"))
	select {
	case p := <-slow.started:
		assert.Equal(t, "again", p)
	case <-time.After(deliveryTimeout):
		require.FailNow(t, "no delivery after the overflow")
	}
	assert.Equal(t, 1, logs.FilterMessageSnippet("queue full").Len())
	require.Eventually(t, func() bool { return logs.FilterMessageSnippet("queued again").Len() == 1 },
		deliveryTimeout, time.Millisecond)
	assert.EqualValues(t, burst-queueSize, logs.FilterMessageSnippet("queued again").All()[0].ContextMap()["dropped_total"])
	select {
	case p := <-slow.started:
		assert.Failf(t, "a dropped notification was delivered", "%s", p)
	case <-time.After(quietPeriod):
	}
}

// A handler that panics on some payloads is recovered: later
// notifications are delivered, and the panics counted and logged.
func TestPanickingHandler(t *testing.T) {
	logger, logs := observedLogger(t)
	var got []string
	gotCh := make(chan string, 100)
	h := listen.HandlerFunc(func(_ context.Context, n *listen.Notification) error {
		if n.Payload == "panic" {
			panic("handler panicked on purpose")
		}
		gotCh <- n.Payload
		return nil
	})
	a := newListenApp(t, fxtest_helpers.NewDatabase(t), handlers{"fragile": h}, []listen.Option{listen.WithLogger(logger)})
	ctx := ctxT(t)

	for _, p := range []string{"a", "panic", "b", "panic", "panic", "c"} {
		require.NoError(t, a.pool.Notify(ctx, "fragile", p))
	}
	for range 3 {
		select {
		case p := <-gotCh:
			got = append(got, p)
		case <-time.After(deliveryTimeout):
			require.FailNow(t, "delivery stopped", "got %v", got)
		}
	}
	assert.Equal(t, []string{"a", "b", "c"}, got)
	require.Eventually(t, func() bool { return channelStats(t, a.listener, "fragile").Delivered == 6 },
		deliveryTimeout, time.Millisecond)
	st := channelStats(t, a.listener, "fragile")
	assert.EqualValues(t, 3, st.Panicked)
	assert.Zero(t, st.Failed, "a panic is not a failure as well")
	assert.EqualValues(t, 6, st.Received)

	panics := logs.FilterMessageSnippet("panicked")
	require.Equal(t, 3, panics.Len())
	fields := panics.All()[0].ContextMap()
	assert.Equal(t, "handler panicked on purpose", fields["panic"])
	assert.Equal(t, "fragile", fields["channel"])
	assert.Contains(t, fields["stack"], "TestPanickingHandler", "the stack names the handler")
	assert.True(t, a.listener.Listening())
}

// Errors of handlers and of backlog handlers are counted in Failed and
// logged; the channel carries on.
func TestHandlerErrorsCounted(t *testing.T) {
	logger, logs := observedLogger(t)
	errBad := errors.New("bad payload")
	gotCh := make(chan string, 100)
	h := listen.HandlerFunc(func(_ context.Context, n *listen.Notification) error {
		gotCh <- n.Payload
		if n.Payload == "bad" {
			return fmt.Errorf("handle %q: %w", n.Payload, errBad)
		}
		return nil
	})
	backlog := &failingBacklog{Handler: h}
	a := newListenApp(t, fxtest_helpers.NewDatabase(t), handlers{"errs": h, "backlog": backlog},
		[]listen.Option{listen.WithLogger(logger)})
	ctx := ctxT(t)

	for _, p := range []string{"ok", "bad", "bad", "ok"} {
		require.NoError(t, a.pool.Notify(ctx, "errs", p))
	}
	for _, want := range []string{"ok", "bad", "bad", "ok"} {
		select {
		case p := <-gotCh:
			assert.Equal(t, want, p)
		case <-time.After(deliveryTimeout):
			require.FailNow(t, "not delivered", want)
		}
	}
	require.Eventually(t, func() bool { return channelStats(t, a.listener, "errs").Delivered == 4 },
		deliveryTimeout, time.Millisecond)
	st := channelStats(t, a.listener, "errs")
	assert.EqualValues(t, 2, st.Failed)
	assert.Zero(t, st.Panicked)
	assert.Zero(t, st.Backlogs, "a plain Handler has no backlog")

	require.Eventually(t, func() bool { return channelStats(t, a.listener, "backlog").Failed == 1 },
		deliveryTimeout, time.Millisecond, "the backlog's error")
	assert.EqualValues(t, 1, channelStats(t, a.listener, "backlog").Backlogs)

	require.Eventually(t, func() bool { return logs.FilterMessageSnippet("handler failed").Len() >= 3 },
		deliveryTimeout, time.Millisecond)
	failed := logs.FilterMessageSnippet("handler failed")
	require.Equal(t, 3, failed.Len(), "%v", failed.All())
	var texts []string
	for _, e := range failed.All() {
		texts = append(texts, fmt.Sprint(e.ContextMap()["error"]))
	}
	assert.Contains(t, texts, `handle "bad": bad payload`)
	assert.Contains(t, texts, "backlog unavailable")
}

type failingBacklog struct{ listen.Handler }

func (failingBacklog) HandleBacklog(context.Context, string) error {
	return errors.New("backlog unavailable")
}

var _ listen.BacklogHandler = failingBacklog{}

// The notifications of several channels reach their own handlers only.
func TestChannelsAreSeparate(t *testing.T) {
	recs := map[string]*recorder{}
	hs := handlers{}
	for _, name := range []string{"a", "b", "c"} {
		recs[name] = newRecorder()
		hs[name] = recs[name]
	}
	a := newListenApp(t, fxtest_helpers.NewDatabase(t), hs, nil)
	ctx := ctxT(t)
	for i := range 10 {
		for _, name := range []string{"a", "b", "c"} {
			require.NoError(t, a.pool.Notify(ctx, name, name+strconv.Itoa(i)))
		}
	}
	for _, name := range []string{"a", "b", "c"} {
		for i := range 10 {
			n := recs[name].next(t)
			assert.Equal(t, name, n.Channel)
			assert.Equal(t, name+strconv.Itoa(i), n.Payload)
		}
		recs[name].none(t)
	}
}
