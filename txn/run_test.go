package txn_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/txn"
)

const itemsSchema = `create table items (id int primary key, name text not null);`

func insertItem(ctx context.Context, tx pgx.Tx, id int) error {
	_, err := tx.Exec(ctx, "insert into items (id, name) values ($1, $2)", id, fmt.Sprint("item ", id))
	return err
}

func TestRunCommits(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), nil)
	log := zaptest.NewLogger(t, zaptest.Level(zap.DebugLevel))

	err := txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
		if err := insertItem(ctx, tx, 1); err != nil {
			return err
		}
		return insertItem(ctx, tx, 2)
	}, txn.MetricName("insert-two"), txn.Logger(log))
	require.NoError(t, err)
	assert.Equal(t, 2, count(t, pool, "items"))
	requireClean(t, pool)
}

func TestRunOnConn(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema))
	conn, err := pgx.Connect(ctxT(t), url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })

	err = txn.Run(ctxT(t), conn, func(ctx context.Context, tx pgx.Tx) error {
		var level string
		if err := tx.QueryRow(ctx, "show transaction_isolation").Scan(&level); err != nil {
			return err
		}
		assert.Equal(t, "repeatable read", level)
		return insertItem(ctx, tx, 1)
	}, txn.Isolation(pgx.RepeatableRead), txn.Timeout(time.Second))
	require.NoError(t, err)
	assert.Equal(t, byte('I'), conn.PgConn().TxStatus())
}

func TestRunRollsBackOnError(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), singleConn)
	pid := backendPID(t, pool)
	errFn := errors.New("fn failed")

	for _, tc := range []struct {
		name string
		fn   func(ctx context.Context, tx pgx.Tx) error
	}{
		{"fn error", func(ctx context.Context, tx pgx.Tx) error {
			require.NoError(t, insertItem(ctx, tx, 1))
			return errFn
		}},
		{"statement error aborts transaction", func(ctx context.Context, tx pgx.Tx) error {
			require.NoError(t, insertItem(ctx, tx, 1))
			_ = insertItem(ctx, tx, 1) // duplicate key: transaction aborted
			return errFn
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := txn.Run(ctxT(t), pool, tc.fn, txn.Timeout(5*time.Second))
			require.ErrorIs(t, err, errFn)
			assert.Same(t, errFn, err, "fn's error comes back as it is")
			assert.Zero(t, count(t, pool, "items"))
			requireClean(t, pool)
			assert.Equal(t, pid, backendPID(t, pool), "connection kept")
		})
	}
}

func TestRunRollsBackOnPanic(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), singleConn)
	pid := backendPID(t, pool)
	type boom struct{ n int }

	require.PanicsWithValue(t, boom{42}, func() {
		_ = txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
			require.NoError(t, insertItem(ctx, tx, 1))
			panic(boom{42})
		}, txn.Timeout(5*time.Second))
	})
	assert.Zero(t, count(t, pool, "items"))
	requireClean(t, pool)
	assert.Equal(t, pid, backendPID(t, pool), "connection kept")
}

func TestRunRollsBackWhenContextEnds(t *testing.T) {
	for _, tc := range []struct {
		name     string
		change   func(*pgxpool.Config)
		samePID  bool
		canceled bool
	}{
		// A cancel request (as sprocketspg's pool sends) stops the
		// statement on the server and keeps the connection.
		{name: "cancel request", change: singleConn, samePID: true},
		// pgx's default handler breaks the connection off instead; the
		// pool must still end up clean.
		{name: "deadline", change: func(cfg *pgxpool.Config) {
			singleConn(cfg)
			cfg.ConnConfig.BuildContextWatcherHandler = func(conn *pgconn.PgConn) ctxwatch.Handler {
				return &pgconn.DeadlineContextWatcherHandler{Conn: conn.Conn()}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), tc.change)
			pid := backendPID(t, pool)

			ctx, cancel := context.WithCancel(ctxT(t))
			started := time.Now()
			err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
				if err := insertItem(ctx, tx, 1); err != nil {
					return err
				}
				time.AfterFunc(200*time.Millisecond, cancel)
				_, err := tx.Exec(ctx, "select pg_sleep(10)")
				return err
			})
			require.Error(t, err)
			assert.Less(t, time.Since(started), 5*time.Second)
			assert.Zero(t, count(t, pool, "items"))
			requireClean(t, pool)
			if tc.samePID {
				assert.Equal(t, pid, backendPID(t, pool), "connection kept")
			}
			require.NoError(t, txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
				return insertItem(ctx, tx, 2)
			}), "pool usable afterwards")
		})
	}
}

func TestRunContextEndedBeforeCommit(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), singleConn)
	pid := backendPID(t, pool)

	ctx, cancel := context.WithCancel(ctxT(t))
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		err := insertItem(ctx, tx, 1)
		cancel()
		return err
	})
	require.ErrorIs(t, err, context.Canceled)
	assert.Zero(t, count(t, pool, "items"))
	requireClean(t, pool)
	assert.Equal(t, pid, backendPID(t, pool), "connection kept")
}

func TestRunDeferredConstraintFailsAtCommit(t *testing.T) {
	const schema = `
create table parents (id int primary key);
create table children (
	id int primary key,
	parent_id int not null references parents (id) deferrable initially deferred
);`
	pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(schema)), singleConn)
	pid := backendPID(t, pool)

	err := txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
		// No parent 7: only COMMIT finds out.
		_, err := tx.Exec(ctx, "insert into children (id, parent_id) values (1, 7)")
		return err
	}, txn.Timeout(5*time.Second))
	require.Error(t, err)
	assert.Equal(t, "23503", sqlState(err), "foreign_key_violation: %v", err)
	assert.Contains(t, err.Error(), "commit transaction")
	assert.Zero(t, count(t, pool, "children"))
	requireClean(t, pool)
	assert.Equal(t, pid, backendPID(t, pool), "connection kept")
}

func TestRunCommitOfAbortedTransaction(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), singleConn)

	err := txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
		require.NoError(t, insertItem(ctx, tx, 1))
		_ = insertItem(ctx, tx, 1) // error swallowed: the transaction is aborted
		return nil
	})
	require.ErrorIs(t, err, pgx.ErrTxCommitRollback)
	assert.Zero(t, count(t, pool, "items"))
	requireClean(t, pool)
}

func TestTimeout(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), singleConn)
	pid := backendPID(t, pool)

	started := time.Now()
	err := txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
		if err := insertItem(ctx, tx, 1); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "select pg_sleep(2)")
		return err
	}, txn.Timeout(200*time.Millisecond))
	elapsed := time.Since(started)
	require.Error(t, err)
	assert.Equal(t, "57014", sqlState(err), "query_canceled: %v", err)
	assert.Less(t, elapsed, time.Second)
	assert.Zero(t, count(t, pool, "items"))
	requireClean(t, pool)
	assert.Equal(t, pid, backendPID(t, pool), "connection kept")

	require.NoError(t, txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
		return insertItem(ctx, tx, 2)
	}))
	assert.Equal(t, 1, count(t, pool, "items"))
}

func TestOptionsReachServer(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), singleConn)

	show := func(ctx context.Context, tx pgx.Tx, name string) string {
		var v string
		require.NoError(t, tx.QueryRow(ctx, "show "+name).Scan(&v))
		return v
	}
	for _, tc := range []struct {
		name  string
		opts  []txn.Option
		check func(ctx context.Context, tx pgx.Tx)
	}{
		{"defaults", nil, func(ctx context.Context, tx pgx.Tx) {
			assert.Equal(t, "read committed", show(ctx, tx, "transaction_isolation"))
			assert.Equal(t, "off", show(ctx, tx, "transaction_read_only"))
			assert.Equal(t, connDefaultTimeout, show(ctx, tx, "statement_timeout"))
		}},
		{"timeout", []txn.Option{txn.Timeout(1500 * time.Millisecond)}, func(ctx context.Context, tx pgx.Tx) {
			assert.Equal(t, "1500ms", show(ctx, tx, "statement_timeout"))
		}},
		{"timeout rounded up to a millisecond", []txn.Option{txn.Timeout(time.Microsecond)}, func(ctx context.Context, tx pgx.Tx) {
			assert.Equal(t, "1ms", show(ctx, tx, "statement_timeout"))
		}},
		{"zero timeout keeps the connection's", []txn.Option{txn.Timeout(0)}, func(ctx context.Context, tx pgx.Tx) {
			assert.Equal(t, connDefaultTimeout, show(ctx, tx, "statement_timeout"))
		}},
		{"serializable", []txn.Option{txn.Isolation(pgx.Serializable)}, func(ctx context.Context, tx pgx.Tx) {
			assert.Equal(t, "serializable", show(ctx, tx, "transaction_isolation"))
		}},
		{"repeatable read with timeout", []txn.Option{txn.Isolation(pgx.RepeatableRead), txn.Timeout(time.Minute)}, func(ctx context.Context, tx pgx.Tx) {
			assert.Equal(t, "repeatable read", show(ctx, tx, "transaction_isolation"))
			assert.Equal(t, "1min", show(ctx, tx, "statement_timeout"))
		}},
		{"serializable read only deferrable with timeout", []txn.Option{
			txn.Isolation(pgx.Serializable), txn.ReadOnly(), txn.Deferrable(), txn.Timeout(3 * time.Second),
		}, func(ctx context.Context, tx pgx.Tx) {
			assert.Equal(t, "serializable", show(ctx, tx, "transaction_isolation"))
			assert.Equal(t, "on", show(ctx, tx, "transaction_read_only"))
			assert.Equal(t, "on", show(ctx, tx, "transaction_deferrable"))
			assert.Equal(t, "3s", show(ctx, tx, "statement_timeout"))
		}},
		{"last option wins", []txn.Option{txn.Timeout(time.Second), txn.Timeout(2 * time.Second)}, func(ctx context.Context, tx pgx.Tx) {
			assert.Equal(t, "2s", show(ctx, tx, "statement_timeout"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
				tc.check(ctx, tx)
				return nil
			}, tc.opts...))
			requireClean(t, pool)
		})
	}
}

func TestReadOnly(t *testing.T) {
	for _, withTimeout := range []bool{false, true} {
		t.Run(fmt.Sprint("timeout ", withTimeout), func(t *testing.T) {
			pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), singleConn)
			opts := []txn.Option{txn.ReadOnly()}
			if withTimeout {
				opts = append(opts, txn.Timeout(5*time.Second))
			}
			err := txn.Run(ctxT(t), pool, func(ctx context.Context, tx pgx.Tx) error {
				return insertItem(ctx, tx, 1)
			}, opts...)
			assert.Equal(t, "25006", sqlState(err), "read_only_sql_transaction: %v", err)
			assert.Zero(t, count(t, pool, "items"))
			requireClean(t, pool)
		})
	}
}

func TestInvalidOptions(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t), nil)
	for _, tc := range []struct {
		name string
		opt  txn.Option
		want string
	}{
		{"negative timeout", txn.Timeout(-time.Second), "negative timeout"},
		{"negative retries", txn.Retries(-1), "negative retries"},
		{"unknown isolation", txn.Isolation("serializable; drop table items"), "unknown isolation level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran := false
			err := txn.Run(ctxT(t), pool, func(context.Context, pgx.Tx) error {
				ran = true
				return nil
			}, tc.opt)
			require.ErrorContains(t, err, tc.want)
			assert.False(t, ran)
		})
	}
}

func TestApply(t *testing.T) {
	log := zap.NewNop()
	s := txn.Apply(
		txn.Timeout(time.Second), txn.Isolation(pgx.Serializable), txn.ReadOnly(), txn.Deferrable(),
		txn.Retries(3), txn.MetricName("m"), txn.Logger(log), txn.Option{},
	)
	assert.Equal(t, txn.Settings{
		Timeout: time.Second, Isolation: pgx.Serializable, ReadOnly: true, Deferrable: true,
		Retries: 3, MetricName: "m", Logger: log,
	}, s)
	assert.Equal(t, txn.Settings{}, txn.Apply())
}

// beginOnly hides every method of a pool but Begin, as a Beginner of
// another kind would.
type beginOnly struct{ txn.Beginner }

func TestRunOnPlainBeginner(t *testing.T) {
	pool := newPool(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(itemsSchema)), singleConn)
	db := beginOnly{pool}

	err := txn.Run(ctxT(t), db, func(ctx context.Context, tx pgx.Tx) error {
		var timeout string
		if err := tx.QueryRow(ctx, "show statement_timeout").Scan(&timeout); err != nil {
			return err
		}
		assert.Equal(t, "750ms", timeout)
		return insertItem(ctx, tx, 1)
	}, txn.Timeout(750*time.Millisecond))
	require.NoError(t, err)
	assert.Equal(t, 1, count(t, pool, "items"))
	requireClean(t, pool)

	err = txn.Run(ctxT(t), db, func(context.Context, pgx.Tx) error {
		t.Error("fn ran")
		return nil
	}, txn.ReadOnly())
	require.ErrorContains(t, err, "cannot take transaction options")
	requireClean(t, pool)
}
