package sprocketspg_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
)

// Calls waiting for a connection when stop begins get ErrNotConnected,
// as calls made after stop do, not pgxpool's "closed pool".
func TestStopFailsWaitingCallsWithErrNotConnected(t *testing.T) {
	pool, _ := newPool(t, func(c *sprocketspg.Config) { c.MinPoolSize, c.MaxPoolSize = 1, 1 })

	running := make(chan error, 1)
	go func() {
		_, err := pool.Execute(context.Background(), "SELECT pg_sleep(1)")
		running <- err
	}()
	require.Eventually(t, func() bool { return pool.Stat().AcquiredConns() == 1 }, 5*time.Second, 5*time.Millisecond)

	waiters := map[string]func(ctx context.Context) error{
		"Execute": func(ctx context.Context) error {
			_, err := pool.Execute(ctx, "SELECT 1")
			return err
		},
		"Callproc": func(ctx context.Context) error {
			_, err := pool.Callproc(ctx, "now")
			return err
		},
		"Transaction": func(ctx context.Context) error {
			return pool.Transaction(ctx, func(*sprocketspg.Tx) error { return nil })
		},
		"Ping":   pool.Ping,
		"Status": func(ctx context.Context) error { return pool.Status(ctx).Err },
	}
	var wg sync.WaitGroup
	errs := make(map[string]error)
	var mu sync.Mutex
	for name, call := range waiters {
		wg.Go(func() {
			err := call(context.Background())
			mu.Lock()
			errs[name] = err
			mu.Unlock()
		})
	}
	// The one connection is busy for a second: by now every call waits
	// for it.
	time.Sleep(200 * time.Millisecond)

	stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, pool.Shutdown(stopCtx))
	wg.Wait()
	require.NoError(t, <-running, "the statement that held the connection finishes")

	for name, err := range errs {
		assert.ErrorIs(t, err, sprocketspg.ErrNotConnected, name)
		assert.True(t, sprocketspg.IsConnectionError(err), name)
		p, ok := sprocketspg.ClassifyError(err)
		if assert.True(t, ok, name) {
			assert.Equal(t, http.StatusServiceUnavailable, p.Status, name)
		}
	}
}
