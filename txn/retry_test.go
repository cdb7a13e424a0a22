package txn_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/txn"
)

// meet lets two goroutines wait for each other: each calls arrive with
// its own index once, and it returns when both have arrived.
type meet struct {
	ch [2]chan struct{}
}

func newMeet() *meet {
	return &meet{ch: [2]chan struct{}{make(chan struct{}), make(chan struct{})}}
}

func (m *meet) arrive(t *testing.T, i int) {
	close(m.ch[i])
	select {
	case <-m.ch[1-i]:
	case <-time.After(30 * time.Second):
		t.Error("the other transaction never arrived")
	}
}

// runPair runs two transactions at once, each with its own fn and the
// same options, and returns their errors and how often each fn ran.
func runPair(t *testing.T, pool *pgxpool.Pool, fn func(ctx context.Context, tx pgx.Tx, i, attempt int) error, opts ...txn.Option) (errs [2]error, runs [2]int) {
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			errs[i] = txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
				runs[i]++
				return fn(ctx, tx, i, runs[i])
			}, opts...)
		})
	}
	wg.Wait()
	return errs, runs
}

func TestSerializationConflict(t *testing.T) {
	const schema = `create table ledger (v int not null); insert into ledger values (1);`

	// Each transaction reads the sum and appends sum+1: serially the
	// table ends as 1, 2, 4. Both read before either writes, which
	// SERIALIZABLE cannot allow for both.
	conflict := func(t *testing.T, m *meet) func(ctx context.Context, tx pgx.Tx, i, attempt int) error {
		return func(ctx context.Context, tx pgx.Tx, i, attempt int) error {
			var sum int
			if err := tx.QueryRow(ctx, "select sum(v) from ledger").Scan(&sum); err != nil {
				return err
			}
			if attempt == 1 {
				m.arrive(t, i)
			}
			_, err := tx.Exec(ctx, "insert into ledger values ($1)", sum+1)
			return err
		}
	}
	ledger := func(t *testing.T, pool *pgxpool.Pool) []int {
		rows, err := pool.Query(ctxT(t), "select v from ledger order by v")
		require.NoError(t, err)
		vs, err := pgx.CollectRows(rows, pgx.RowTo[int])
		require.NoError(t, err)
		return vs
	}

	t.Run("with retries both commit", func(t *testing.T) {
		pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(schema)), nil)
		log := zaptest.NewLogger(t, zaptest.Level(zap.DebugLevel))
		errs, runs := runPair(t, pool, conflict(t, newMeet()),
			txn.Isolation(pgx.Serializable), txn.Retries(5), txn.MetricName("ledger"), txn.Logger(log))
		require.NoError(t, errs[0])
		require.NoError(t, errs[1])
		// The loser runs again, and again if it collides with the winner
		// once more before the winner commits.
		assert.GreaterOrEqual(t, runs[0]+runs[1], 3, "one transaction ran again")
		assert.Equal(t, []int{1, 2, 4}, ledger(t, pool))
		requireClean(t, pool)
	})

	t.Run("without retries one fails with 40001", func(t *testing.T) {
		pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(schema)), nil)
		errs, runs := runPair(t, pool, conflict(t, newMeet()), txn.Isolation(pgx.Serializable), txn.Timeout(10*time.Second))
		assert.Equal(t, [2]int{1, 1}, runs)
		failed := 0
		for _, err := range errs {
			if err != nil {
				failed++
				assert.Equal(t, "40001", sqlState(err), "serialization_failure: %v", err)
				assert.True(t, txn.IsRetryable(err))
				var retryErr *txn.RetryError
				assert.False(t, errors.As(err, &retryErr), "no RetryError without Retries")
			}
		}
		assert.Equal(t, 1, failed)
		assert.Equal(t, []int{1, 2}, ledger(t, pool))
		requireClean(t, pool)
	})
}

func TestDeadlock(t *testing.T) {
	const schema = `create table accounts (id int primary key, balance int not null);
insert into accounts values (1, 100), (2, 100);`

	// Transaction i locks row i+1 and then the other one: each waits for
	// the other until the server's deadlock check (deadlock_timeout, 1 s
	// by default) picks a victim.
	deadlock := func(t *testing.T, m *meet) func(ctx context.Context, tx pgx.Tx, i, attempt int) error {
		return func(ctx context.Context, tx pgx.Tx, i, attempt int) error {
			first, second := i+1, 2-i
			if _, err := tx.Exec(ctx, "update accounts set balance = balance - 10 where id = $1", first); err != nil {
				return err
			}
			if attempt == 1 {
				m.arrive(t, i)
			}
			_, err := tx.Exec(ctx, "update accounts set balance = balance + 10 where id = $1", second)
			return err
		}
	}
	balances := func(t *testing.T, pool *pgxpool.Pool) []int {
		rows, err := pool.Query(ctxT(t), "select balance from accounts order by id")
		require.NoError(t, err)
		vs, err := pgx.CollectRows(rows, pgx.RowTo[int])
		require.NoError(t, err)
		return vs
	}

	t.Run("with retries both commit", func(t *testing.T) {
		pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(schema)), nil)
		log := zaptest.NewLogger(t, zaptest.Level(zap.DebugLevel))
		errs, runs := runPair(t, pool, deadlock(t, newMeet()), txn.Retries(5), txn.MetricName("transfer"), txn.Logger(log), txn.Timeout(10*time.Second))
		require.NoError(t, errs[0])
		require.NoError(t, errs[1])
		// The victim runs again, and again if its retry takes a lock
		// before the waiting transaction wakes up and so deadlocks anew.
		assert.GreaterOrEqual(t, runs[0]+runs[1], 3, "the victim ran again")
		assert.Equal(t, []int{100, 100}, balances(t, pool), "both transfers applied")
		requireClean(t, pool)
	})

	t.Run("without retries one fails with 40P01", func(t *testing.T) {
		pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(schema)), nil)
		errs, runs := runPair(t, pool, deadlock(t, newMeet()))
		assert.Equal(t, [2]int{1, 1}, runs)
		failed := 0
		for _, err := range errs {
			if err != nil {
				failed++
				assert.Equal(t, "40P01", sqlState(err), "deadlock_detected: %v", err)
				assert.True(t, txn.IsRetryable(err))
			}
		}
		assert.Equal(t, 1, failed)
		requireClean(t, pool)
	})
}

func TestRetryError(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t), singleConn)
	var runs atomic.Int32

	err := txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
		runs.Add(1)
		_, err := tx.Exec(ctx, `do $$ begin raise exception 'always conflicts' using errcode = 'serialization_failure'; end $$`)
		return err
	}, txn.Retries(2), txn.Logger(zaptest.NewLogger(t)))

	var retryErr *txn.RetryError
	require.ErrorAs(t, err, &retryErr)
	assert.Equal(t, 3, retryErr.Attempts)
	assert.EqualValues(t, 3, runs.Load())
	assert.Contains(t, err.Error(), "after 3 attempts: ")
	assert.Equal(t, "40001", sqlState(err), "the last error is wrapped")
	assert.True(t, txn.IsRetryable(err))
	requireClean(t, pool)
}

func TestRetriesOnlyRetryable(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t), singleConn)
	errFn := errors.New("not retryable")
	runs := 0
	err := txn.Run(ctxT(t), pool, func(context.Context, pgx.Tx) error {
		runs++
		return errFn
	}, txn.Retries(5))
	assert.Same(t, errFn, err)
	assert.Equal(t, 1, runs)
}

func TestRetryStopsWhenContextEnds(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t), singleConn)
	ctx, cancel := context.WithCancel(ctxT(t))
	runs := 0
	err := txn.Run(ctx, pool, func(context.Context, pgx.Tx) error {
		runs++
		cancel()
		return &pgconn.PgError{Code: "40001", Message: "conflict"}
	}, txn.Retries(5))
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, "40001", sqlState(err))
	assert.Equal(t, 1, runs)
	requireClean(t, pool)
}

func TestIsRetryable(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain", errors.New("x"), false},
		{"serialization failure", &pgconn.PgError{Code: "40001"}, true},
		{"deadlock", &pgconn.PgError{Code: "40P01"}, true},
		{"wrapped", errors.Join(errors.New("x"), &pgconn.PgError{Code: "40001"}), true},
		{"retry error", &txn.RetryError{Attempts: 2, Err: &pgconn.PgError{Code: "40P01"}}, true},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"query canceled", &pgconn.PgError{Code: "57014"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, txn.IsRetryable(tc.err))
		})
	}
}
