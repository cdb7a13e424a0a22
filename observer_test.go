package sprocketspg_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// recorder is an Observer that keeps every event.
type recorder struct {
	mu     sync.Mutex
	events []sprocketspg.QueryEvent
}

func (r *recorder) ObserveQuery(ev sprocketspg.QueryEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) snapshot() []sprocketspg.QueryEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]sprocketspg.QueryEvent(nil), r.events...)
}

// waitEvents waits until r holds n events; observers run on a goroutine of
// their own, so events arrive shortly after the call returns.
func (r *recorder) waitEvents(t *testing.T, n int) []sprocketspg.QueryEvent {
	t.Helper()
	require.Eventually(t, func() bool { return len(r.snapshot()) >= n }, 5*time.Second, 5*time.Millisecond,
		"want %d query events", n)
	return r.snapshot()
}

func TestObserverSeesExecuteCallprocAndTransaction(t *testing.T) {
	rec := &recorder{}
	pool := newPoolAt(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(txSchema)), nil,
		sprocketspg.WithObserver(rec))
	ctx := sprocketspg.WithMetricName(ctxT(t), "observed")

	_, err := pool.Execute(ctx, "SELECT generate_series(1, 3) AS n")
	require.NoError(t, err)
	_, err = pool.Callproc(ctx, "add_one", 1)
	require.NoError(t, err)
	txErr := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.Execute(ctx, "SELECT 1/0")
		return err
	})
	require.Error(t, txErr)

	events := rec.waitEvents(t, 4)
	require.Len(t, events, 4)
	assert.Equal(t, sprocketspg.OperationExecute, events[0].Operation)
	assert.Equal(t, "SELECT generate_series(1, 3) AS n", events[0].SQL)
	assert.EqualValues(t, 3, events[0].RowCount)
	assert.Equal(t, "observed", events[0].MetricName)
	assert.Equal(t, "observed", sprocketspg.MetricName(events[0].Context), "the caller's context travels with the event")
	assert.Positive(t, events[0].Duration)
	assert.NoError(t, events[0].Err)

	assert.Equal(t, sprocketspg.OperationCallproc, events[1].Operation)
	assert.Contains(t, events[1].SQL, `"add_one"($1)`)
	assert.EqualValues(t, 1, events[1].RowCount)

	// The statement inside the transaction, then the transaction.
	assert.Equal(t, sprocketspg.OperationExecute, events[2].Operation)
	assert.Error(t, events[2].Err)
	assert.Equal(t, sprocketspg.OperationTransaction, events[3].Operation)
	assert.Equal(t, "observed", events[3].MetricName)
	assert.Error(t, events[3].Err)
	assert.GreaterOrEqual(t, events[3].Duration, events[2].Duration)
}

func TestObserverGroupUnderFx(t *testing.T) {
	rec := &recorder{}
	pool := appPool(t, fx.Provide(sprocketspg.AsObserver(func() *recorder { return rec })))
	_, err := pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err)
	events := rec.waitEvents(t, 1)
	assert.Equal(t, "SELECT 1", events[0].SQL)
}

func TestObserverPanicDoesNotBreakQueries(t *testing.T) {
	core, logs := observer.New(zap.ErrorLevel)
	rec := &recorder{}
	pool, _ := newPool(t, nil,
		sprocketspg.WithLogger(zap.New(core)),
		sprocketspg.WithObserver(sprocketspg.ObserverFunc(func(sprocketspg.QueryEvent) { panic("observer bug") })),
		sprocketspg.WithObserver(rec))
	ctx := ctxT(t)
	for range 3 {
		res, err := pool.Execute(ctx, "SELECT 1 AS one")
		require.NoError(t, err)
		assert.EqualValues(t, 1, res.Row["one"])
	}
	rec.waitEvents(t, 3) // the observer after the panicking one still hears every query
	require.Eventually(t, func() bool { return logs.FilterMessage("postgres observer panicked").Len() == 3 },
		5*time.Second, 5*time.Millisecond)
}

func TestSlowObserverDoesNotStallQueries(t *testing.T) {
	release := make(chan struct{})
	var seen atomic.Int64
	blocking := sprocketspg.ObserverFunc(func(sprocketspg.QueryEvent) {
		<-release
		seen.Add(1)
	})
	pool, _ := newPool(t, nil, sprocketspg.WithObserver(blocking))
	ctx := ctxT(t)

	// More queries than the observers' buffer holds: without the buffer
	// and the drop, the 1025th would wait for the observer forever.
	const queries = 1500
	done := make(chan error, 1)
	go func() {
		for range queries {
			if _, err := pool.Execute(ctx, "SELECT 1"); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		close(release)
		t.Fatal("queries stalled behind a blocked observer")
	}
	assert.Positive(t, pool.DroppedObservations(), "events beyond the buffer are dropped")
	close(release)
	// Shutdown delivers what was queued before returning.
	ctxStop, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, pool.Shutdown(ctxStop))
	assert.Equal(t, int64(queries), seen.Load()+pool.DroppedObservations())
}

func TestDefaultObservationIsDebugLog(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	pool, _ := newPool(t, nil, sprocketspg.WithLogger(zap.New(core)))
	ctx := sprocketspg.WithMetricName(ctxT(t), "named-query")
	_, err := pool.Execute(ctx, "SELECT 1")
	require.NoError(t, err)
	entries := logs.FilterMessage("postgres query").AllUntimed()
	require.Len(t, entries, 1)
	fields := entries[0].ContextMap()
	assert.Equal(t, "named-query", fields["metric_name"])
	assert.Contains(t, fields, "duration")
}

func TestQueryLogsLeaveArgumentsOut(t *testing.T) {
	for _, withArgs := range []bool{false, true} {
		t.Run(map[bool]string{false: "without_args", true: "with_args"}[withArgs], func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			pool, _ := newPool(t, func(c *sprocketspg.Config) {
				c.LogQueries = true
				c.LogQueryArgs = withArgs
			}, sprocketspg.WithLogger(zap.New(core)))
			_, err := pool.Execute(ctxT(t), "SELECT $1::text AS secret_arg", "s3cr3t-value")
			require.NoError(t, err)
			entries := logs.FilterMessage("postgres Query").FilterField(zap.String("sql", "SELECT $1::text AS secret_arg")).AllUntimed()
			require.Len(t, entries, 1)
			fields := entries[0].ContextMap()
			assert.Contains(t, fields, "duration")
			text := strings.Join(logValues(entries), " ")
			if withArgs {
				assert.Contains(t, text, "s3cr3t-value")
			} else {
				assert.NotContains(t, fields, "args")
				assert.NotContains(t, text, "s3cr3t-value")
			}
		})
	}
}

func TestSlowQueryLog(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	pool, _ := newPool(t, func(c *sprocketspg.Config) { c.SlowQueryThreshold = 150 * time.Millisecond },
		sprocketspg.WithLogger(zap.New(core)))
	ctx := ctxT(t)
	_, err := pool.Execute(ctx, "SELECT 1")
	require.NoError(t, err)
	_, err = pool.Execute(ctx, "SELECT pg_sleep(0.3)")
	require.NoError(t, err)

	slow := logs.FilterLevelExact(zapcore.WarnLevel).AllUntimed()
	require.Len(t, slow, 1, "only the slow statement is logged")
	assert.Equal(t, "slow postgres Query", slow[0].Message)
	assert.Equal(t, "SELECT pg_sleep(0.3)", slow[0].ContextMap()["sql"])
	assert.Zero(t, logs.FilterMessage("postgres Query").Len(), "statement logs stay off")
}

// countingTracer counts the statements it sees.
type countingTracer struct{ n atomic.Int64 }

func (c *countingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *countingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func TestTracersRunTogether(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	viaOption, viaPoolConfig := &countingTracer{}, &countingTracer{}
	pool, _ := newPool(t, func(c *sprocketspg.Config) { c.LogQueries = true },
		sprocketspg.WithLogger(zap.New(core)),
		sprocketspg.WithTracer(viaOption),
		sprocketspg.WithPoolConfig(func(pc *pgxpool.Config) { pc.ConnConfig.Tracer = viaPoolConfig }))
	viaOption.n.Store(0)
	viaPoolConfig.n.Store(0)
	_, err := pool.Execute(ctxT(t), "SELECT 42")
	require.NoError(t, err)
	assert.EqualValues(t, 1, viaOption.n.Load())
	assert.EqualValues(t, 1, viaPoolConfig.n.Load())
	assert.Equal(t, 1, logs.FilterMessage("postgres Query").FilterField(zap.String("sql", "SELECT 42")).Len())
}

func TestQueryExecMode(t *testing.T) {
	pool, _ := newPool(t, func(c *sprocketspg.Config) { c.QueryExecMode = "simple_protocol" })
	assert.Equal(t, pgx.QueryExecModeSimpleProtocol, pool.Pool.Config().ConnConfig.DefaultQueryExecMode)
	res, err := pool.Execute(ctxT(t), "SELECT $1::int + 1 AS n", 41)
	require.NoError(t, err)
	assert.EqualValues(t, 42, res.Row["n"])

	cfg := testConfig("postgres://u@localhost/db")
	cfg.QueryExecMode = "prepared"
	err = cfg.Validate()
	require.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	assert.Contains(t, err.Error(), sprocketspg.EnvQueryExecMode)
	var ce *sprocketspg.ConfigError
	require.True(t, errors.As(err, &ce))
}

// logValues flattens entries into text, to search for what must or must
// not have been logged.
func logValues(entries []observer.LoggedEntry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Message)
		for k, v := range e.ContextMap() {
			out = append(out, k, fmt.Sprint(v))
		}
	}
	return out
}
