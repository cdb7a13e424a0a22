package listen_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/goleak"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/listen"
)

// handleInvoke is an fx.Invoke that gives the default listener hs.
func handleInvoke(hs handlers) fx.Option {
	return fx.Invoke(func(l *listen.Listener) error {
		for name, h := range hs {
			if err := l.Handle(name, h); err != nil {
				return err
			}
		}
		return nil
	})
}

// Stopping the app while a handler runs ends the handler's ctx: stop
// returns at once, without error, with nothing left running, and the
// listener refuses channels from then on.
func TestStopWhileHandlerRuns(t *testing.T) {
	// The database first: the server NewDatabase may start runs on after
	// the test, with its goroutines.
	url := fxtest_helpers.NewDatabase(t)
	admin := connect(t, url)
	ignore := goleak.IgnoreCurrent()

	started := make(chan string, 1000)
	var ended []error
	endedCh := make(chan error, 1000)
	h := listen.HandlerFunc(func(ctx context.Context, n *listen.Notification) error {
		started <- n.Payload
		<-ctx.Done()
		endedCh <- ctx.Err()
		return ctx.Err()
	})
	rec := newRecorder()
	var l *listen.Listener
	var pool *sprocketspg.Pool
	app := newFxApp(t, sprocketspg.Module, withURL(url), listen.Notifications(),
		handleInvoke(handlers{"busy": h, "idle": rec}), fx.Populate(&l, &pool))
	require.NoError(t, app.Err())
	ctx := ctxT(t)
	require.NoError(t, app.Start(ctx))

	for i := range 10 {
		require.NoError(t, pool.Notify(ctx, "busy", strconv.Itoa(i)))
	}
	select {
	case p := <-started:
		require.Equal(t, "0", p)
	case <-time.After(deliveryTimeout):
		require.FailNow(t, "handler not called")
	}
	require.Eventually(t, func() bool { return channelStats(t, l, "busy").Received == 10 }, deliveryTimeout, time.Millisecond)

	stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	began := time.Now()
	require.NoError(t, app.Stop(stopCtx))
	took := time.Since(began)
	t.Logf("stopped in %s", took)
	assert.Less(t, took, 2*time.Second, "the handlers' ctx ended at once")

	close(endedCh)
	for err := range endedCh {
		ended = append(ended, err)
	}
	// The running one ended, and those queued may have been handed over
	// with their ctx already ended; none was left running.
	require.NotEmpty(t, ended)
	for _, err := range ended {
		assert.ErrorIs(t, err, context.Canceled)
	}
	st := channelStats(t, l, "busy")
	assert.EqualValues(t, len(ended), st.Delivered)
	assert.Zero(t, st.Failed, "an error once ctx ended is not a failure")
	assert.False(t, l.Listening())
	assert.False(t, l.Stats().Connected)

	goleak.VerifyNone(t, ignore)
	assert.Empty(t, listenerBackends(t, admin), "the listener's connection is closed")
	assert.Zero(t, backends(t, admin), "every connection is closed")

	err := l.Handle("later", rec)
	assert.ErrorIs(t, err, listen.ErrStopped)
	assert.Contains(t, err.Error(), `"later"`)
	rec.none(t)
}

// A handler that ignores its ctx and blocks makes stop fail when the stop
// context ends, naming the channel, instead of hanging; once it returns,
// nothing is left running.
func TestStopWithStuckHandler(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	ignore := goleak.IgnoreCurrent()

	started := make(chan struct{}, 10)
	unblock := make(chan struct{})
	returned := make(chan struct{})
	stuck := listen.HandlerFunc(func(context.Context, *listen.Notification) error {
		started <- struct{}{}
		<-unblock
		close(returned)
		return nil
	})
	var l *listen.Listener
	var pool *sprocketspg.Pool
	app := newFxApp(t, sprocketspg.Module, withURL(url), listen.Notifications(),
		handleInvoke(handlers{"stuck channel": stuck, "fine": newRecorder()}), fx.Populate(&l, &pool))
	require.NoError(t, app.Err())
	ctx := ctxT(t)
	require.NoError(t, app.Start(ctx))
	require.NoError(t, pool.Notify(ctx, "stuck channel", "x"))
	select {
	case <-started:
	case <-time.After(deliveryTimeout):
		require.FailNow(t, "handler not called")
	}

	const stopWithin = time.Second
	stopCtx, cancel := context.WithTimeout(context.Background(), stopWithin)
	defer cancel()
	began := time.Now()
	err := app.Stop(stopCtx)
	took := time.Since(began)
	close(unblock)
	<-returned
	t.Logf("stop returned after %s: %v", took, err)
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, took, stopWithin+time.Second, "stop returns when its context ends")
	assert.GreaterOrEqual(t, took, stopWithin/2, "stop waited for the handler")
	assert.Contains(t, err.Error(), `"stuck channel"`, "the error names the channel")

	goleak.VerifyNone(t, ignore)
}

// Without fx, the pool's Shutdown returns the listener's error, which
// names the channel whose handler is still running.
func TestShutdownWithStuckHandlerWithoutFx(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	ignore := goleak.IgnoreCurrent()

	started := make(chan struct{}, 10)
	unblock := make(chan struct{})
	returned := make(chan struct{})
	l := listen.New()
	require.NoError(t, l.Handle("stuck", listen.HandlerFunc(func(context.Context, *listen.Notification) error {
		started <- struct{}{}
		<-unblock
		close(returned)
		return nil
	})))
	ctx := ctxT(t)
	pool, err := sprocketspg.New(ctx, poolConfig(t, url), sprocketspg.WithExtension(l.Extension()))
	require.NoError(t, err)
	require.NoError(t, pool.Notify(ctx, "stuck", "x"))
	select {
	case <-started:
	case <-time.After(deliveryTimeout):
		require.FailNow(t, "handler not called")
	}

	stopCtx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	err = pool.Shutdown(stopCtx)
	took := time.Since(began)
	close(unblock)
	<-returned
	t.Logf("Shutdown returned after %s: %v", took, err)
	require.Error(t, err)
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
	assert.Contains(t, err.Error(), `"stuck"`, "the error names the channel")
	assert.Contains(t, err.Error(), "listener", "and the extension")
	assert.Less(t, took, 2*time.Second)
	goleak.VerifyNone(t, ignore)
}

// poolConfig is the environment's Config connected to url, for
// sprocketspg.New.
func poolConfig(t *testing.T, url string) sprocketspg.Config {
	t.Helper()
	cfg, err := sprocketspg.LoadConfig()
	require.NoError(t, err)
	cfg.URL = url
	return cfg
}
