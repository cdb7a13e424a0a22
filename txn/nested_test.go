package txn_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/txn"
)

func TestNestedRunIsSavepoint(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), singleConn)
	errInner := errors.New("inner failed")

	err := txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
		require.NoError(t, insertItem(ctx, tx, 1))

		err := txn.Run(ctx, tx, func(ctx context.Context, tx pgx.Tx) error {
			require.NoError(t, insertItem(ctx, tx, 2))
			_ = insertItem(ctx, tx, 1) // duplicate: aborts up to the savepoint
			return errInner
		})
		assert.Same(t, errInner, err)

		require.PanicsWithValue(t, "inner panic", func() {
			_ = txn.Run(ctx, tx, func(ctx context.Context, tx pgx.Tx) error {
				require.NoError(t, insertItem(ctx, tx, 3))
				panic("inner panic")
			})
		})

		require.NoError(t, txn.Run(ctx, tx, func(ctx context.Context, tx pgx.Tx) error {
			return insertItem(ctx, tx, 4)
		}))
		return insertItem(ctx, tx, 5)
	}, txn.Timeout(5*time.Second))
	require.NoError(t, err)

	rows, err := pool.Query(ctxT(t), "select id from items order by id")
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	require.NoError(t, err)
	assert.Equal(t, []int{1, 4, 5}, ids)
	requireClean(t, pool)
}

func TestNestedRunRejectsTransactionOptions(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), singleConn)

	for _, tc := range []struct {
		name string
		opt  txn.Option
	}{
		{"Isolation", txn.Isolation(pgx.Serializable)},
		{"ReadOnly", txn.ReadOnly()},
		{"Deferrable", txn.Deferrable()},
		{"Retries", txn.Retries(2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
				ran := false
				err := txn.Run(ctx, tx, func(context.Context, pgx.Tx) error {
					ran = true
					return nil
				}, tc.opt)
				assert.False(t, ran)
				return err
			})
			require.ErrorContains(t, err, tc.name+" cannot apply to a savepoint")
			requireClean(t, pool)
		})
	}
}

func TestNestedRunTimeout(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), singleConn)
	show := func(ctx context.Context, tx pgx.Tx) string {
		var v string
		require.NoError(t, tx.QueryRow(ctx, "show statement_timeout").Scan(&v))
		return v
	}

	err := txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
		require.Equal(t, "5s", show(ctx, tx))

		// Success: the savepoint's timeout is put back on release.
		require.NoError(t, txn.Run(ctx, tx, func(ctx context.Context, tx pgx.Tx) error {
			assert.Equal(t, "250ms", show(ctx, tx))
			return nil
		}, txn.Timeout(250*time.Millisecond)))
		assert.Equal(t, "5s", show(ctx, tx))

		// A statement past it fails and rolls back only the savepoint,
		// whose rollback undoes the timeout too.
		started := time.Now()
		err := txn.Run(ctx, tx, func(ctx context.Context, tx pgx.Tx) error {
			require.NoError(t, insertItem(ctx, tx, 2))
			_, err := tx.Exec(ctx, "select pg_sleep(2)")
			return err
		}, txn.Timeout(250*time.Millisecond))
		assert.Equal(t, "57014", sqlState(err), "query_canceled: %v", err)
		assert.Less(t, time.Since(started), time.Second)
		assert.Equal(t, "5s", show(ctx, tx))
		return insertItem(ctx, tx, 1)
	}, txn.Timeout(5*time.Second))
	require.NoError(t, err)

	rows, err := pool.Query(ctxT(t), "select id from items order by id")
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	require.NoError(t, err)
	assert.Equal(t, []int{1}, ids)
	requireClean(t, pool)
}
