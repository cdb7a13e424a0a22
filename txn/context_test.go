package txn_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/txn"
)

// A statement that the server cancels because the caller's context ended
// comes back as SQLSTATE 57014; Run's error says it was the context, and
// keeps the server's error.
func TestRunEndedByContextMatchesIt(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t), nil)
	cases := map[string]func() (context.Context, context.CancelFunc){
		"deadline": func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 200*time.Millisecond)
		},
		"cancel": func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(200*time.Millisecond, cancel)
			return ctx, cancel
		},
	}
	for name, newCtx := range cases {
		for _, opts := range [][]txn.Option{nil, {txn.Timeout(10 * time.Second)}} {
			t.Run(name, func(t *testing.T) {
				ctx, cancel := newCtx()
				defer cancel()
				began := time.Now()
				err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
					_, err := tx.Exec(ctx, "select pg_sleep(2)")
					return err
				}, opts...)
				require.Error(t, err)
				assert.Less(t, time.Since(began), 1500*time.Millisecond)
				assert.ErrorIs(t, err, ctx.Err())
				var pgErr *pgconn.PgError
				require.ErrorAs(t, err, &pgErr)
				assert.Equal(t, "57014", pgErr.Code)
				requireClean(t, pool)
			})
		}
	}
}

// The transaction's own timeout (txn.Timeout) cancelling a statement is
// not the caller's context: the error stays the server's.
func TestRunTimeoutIsNotTheContext(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t), nil)
	ctx := ctxT(t)
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "select pg_sleep(2)")
		return err
	}, txn.Timeout(100*time.Millisecond))
	require.Error(t, err)
	assert.NotErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, context.Canceled)
	assert.Equal(t, "57014", sqlState(err))
}
