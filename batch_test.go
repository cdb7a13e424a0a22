package sprocketspg_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

const batchSchema = `CREATE TABLE kv (k text PRIMARY KEY, v int NOT NULL);`

func batchPool(t *testing.T, opts ...sprocketspg.Option) (*sprocketspg.Pool, string) {
	t.Helper()
	url := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(batchSchema))
	return newPoolAt(t, url, func(c *sprocketspg.Config) { c.MaxPoolSize, c.MinPoolSize = 1, 1 }, opts...), url
}

func keys(t *testing.T, ctx context.Context, pool *sprocketspg.Pool) []any {
	t.Helper()
	res, err := pool.Execute(ctx, "SELECT k FROM kv ORDER BY k")
	require.NoError(t, err)
	var out []any
	for _, r := range res.Rows {
		out = append(out, r["k"])
	}
	return out
}

func TestExecuteBatchResultsInOrder(t *testing.T) {
	pool, _ := batchPool(t)
	ctx := ctxT(t)
	results, err := pool.ExecuteBatch(ctx, []sprocketspg.Statement{
		{SQL: "INSERT INTO kv VALUES ($1, $2), ($3, $4)", Args: []any{"a", 1, "b", 2}},
		{SQL: "SELECT k, v FROM kv ORDER BY k"},
		{SQL: "UPDATE kv SET v = v + 1"},
	})
	require.NoError(t, err)
	require.Len(t, results, 3)
	assert.EqualValues(t, 2, results[0].RowCount, "rows inserted")
	assert.EqualValues(t, 2, results[1].RowCount)
	assert.Equal(t, []map[string]any{{"k": "a", "v": int32(1)}, {"k": "b", "v": int32(2)}}, results[1].Rows)
	assert.Nil(t, results[1].Row)
	assert.EqualValues(t, 2, results[2].RowCount, "rows updated")

	empty, err := pool.ExecuteBatch(ctx, nil)
	require.NoError(t, err)
	assert.Empty(t, empty)
}

func TestExecuteBatchFailureCommitsEarlierStatements(t *testing.T) {
	pool, _ := batchPool(t)
	ctx := sprocketspg.WithMetricName(ctxT(t), "load")
	results, err := pool.ExecuteBatch(ctx, []sprocketspg.Statement{
		{SQL: "INSERT INTO kv VALUES ('a', 1)"},
		{SQL: "INSERT INTO kv VALUES ('a', 2)", MetricName: "dup"},
		{SQL: "INSERT INTO kv VALUES ('c', 3)"},
	})
	require.Error(t, err)
	var be *sprocketspg.BatchError
	require.ErrorAs(t, err, &be)
	assert.Equal(t, 1, be.Index)
	assert.Equal(t, 3, be.Len)
	assert.Equal(t, "dup", be.MetricName)
	assert.True(t, be.Committed)
	assert.True(t, sprocketspg.IsUniqueViolation(err), "%v", err)
	assert.Contains(t, err.Error(), `batch statement 1 of 3 ("dup") failed; statement 0 committed, statement 2 not run`)
	assert.Contains(t, err.Error(), `execute batch "load"`)
	assert.Len(t, results, 1, "the results of the statements before the failed one")
	assert.Equal(t, []any{"a"}, keys(t, ctxT(t), pool), "the first committed, the third never ran")
}

func TestExecuteBatchAtomic(t *testing.T) {
	pool, _ := batchPool(t)
	ctx := ctxT(t)
	_, err := pool.ExecuteBatch(ctx, []sprocketspg.Statement{
		{SQL: "INSERT INTO kv VALUES ('a', 1)"},
		{SQL: "INSERT INTO kv VALUES ('b', 2)"},
		{SQL: "INSERT INTO kv VALUES ('a', 3)"},
	}, sprocketspg.Atomic())
	var be *sprocketspg.BatchError
	require.ErrorAs(t, err, &be)
	assert.Equal(t, 2, be.Index)
	assert.False(t, be.Committed)
	assert.Contains(t, err.Error(), "statements 0-1 rolled back")
	assert.Empty(t, keys(t, ctx, pool), "nothing of an atomic batch stays")

	results, err := pool.ExecuteBatch(ctx, []sprocketspg.Statement{
		{SQL: "INSERT INTO kv VALUES ('a', 1)"},
		{SQL: "INSERT INTO kv VALUES ('b', 2)"},
	}, sprocketspg.Atomic())
	require.NoError(t, err)
	assert.Len(t, results, 2)
	assert.Equal(t, []any{"a", "b"}, keys(t, ctx, pool))
}

func TestTxExecuteBatch(t *testing.T) {
	pool, _ := batchPool(t)
	ctx := ctxT(t)
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		results, err := tx.ExecuteBatch(ctx, []sprocketspg.Statement{
			{SQL: "INSERT INTO kv VALUES ('a', 1)"},
			{SQL: "SELECT count(*) AS n FROM kv"},
		})
		require.NoError(t, err)
		assert.EqualValues(t, 1, results[1].Row["n"], "the batch sees its own work")
		return errors.New("roll back")
	})
	require.Error(t, err)
	assert.Empty(t, keys(t, ctx, pool), "it rolls back with the transaction")

	err = pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.ExecuteBatch(ctx, []sprocketspg.Statement{
			{SQL: "INSERT INTO kv VALUES ('a', 1)"},
			{SQL: "SELECT 1/0"},
		})
		return err
	})
	var be *sprocketspg.BatchError
	require.ErrorAs(t, err, &be)
	assert.Equal(t, 1, be.Index)
	assert.False(t, be.Committed)
	assert.Empty(t, keys(t, ctx, pool))
}

func TestExecuteBatchQueryTimeout(t *testing.T) {
	pool, _ := batchPool(t)
	ctx := ctxT(t)
	for _, opts := range [][]sprocketspg.BatchOption{nil, {sprocketspg.Atomic()}} {
		results, err := pool.ExecuteBatch(sprocketspg.WithQueryTimeout(ctx, 1500*time.Millisecond), []sprocketspg.Statement{
			{SQL: "SHOW statement_timeout"},
			{SQL: "SHOW statement_timeout"},
		}, opts...)
		require.NoError(t, err)
		for _, r := range results {
			assert.Equal(t, "1500ms", r.Row["statement_timeout"], "every statement has it")
		}
		assert.Equal(t, "30s", showTimeout(t, ctx, pool), "nothing is left on the connection")
	}
	_, err := pool.ExecuteBatch(sprocketspg.WithQueryTimeout(ctx, 100*time.Millisecond), []sprocketspg.Statement{
		{SQL: "SELECT 1"},
		{SQL: "SELECT pg_sleep(5)"},
	})
	assert.True(t, sprocketspg.IsQueryTimeout(err), "%v", err)

	err = pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		results, err := tx.ExecuteBatch(sprocketspg.WithQueryTimeout(ctx, 2*time.Second), []sprocketspg.Statement{
			{SQL: "SHOW statement_timeout"},
		})
		require.NoError(t, err)
		assert.Equal(t, "2s", results[0].Row["statement_timeout"])
		res, err := tx.Execute(ctx, "SHOW statement_timeout")
		require.NoError(t, err)
		assert.Equal(t, "30s", res.Row["statement_timeout"], "the transaction's own is back")
		return nil
	})
	require.NoError(t, err)
}

func TestExecuteBatchObserved(t *testing.T) {
	rec := &recorder{}
	pool, _ := batchPool(t, sprocketspg.WithObserver(rec))
	ctx := sprocketspg.WithMetricName(ctxT(t), "pair")
	_, err := pool.ExecuteBatch(ctx, []sprocketspg.Statement{
		{SQL: "SELECT 1 AS one", MetricName: "first"},
		{SQL: "SELECT generate_series(1, 3)"},
	})
	require.NoError(t, err)
	events := rec.waitEvents(t, 3)
	require.Len(t, events, 3)
	assert.Equal(t, sprocketspg.OperationBatchStatement, events[0].Operation)
	assert.Equal(t, "first", events[0].MetricName)
	assert.Equal(t, "SELECT 1 AS one", events[0].SQL)
	assert.Equal(t, "pair", events[1].MetricName, "a statement without a name takes the batch's")
	assert.EqualValues(t, 3, events[1].RowCount)
	assert.Equal(t, sprocketspg.OperationBatch, events[2].Operation)
	assert.Equal(t, "pair", events[2].MetricName)
	assert.EqualValues(t, 4, events[2].RowCount)
}

func TestExecuteBatchNotConnectedAndCancelled(t *testing.T) {
	closed, _ := batchPool(t)
	closed.Close()
	_, err := closed.ExecuteBatch(ctxT(t), []sprocketspg.Statement{{SQL: "SELECT 1"}})
	assert.ErrorIs(t, err, sprocketspg.ErrNotConnected)

	p, _ := batchPool(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	cancel()
	_, err = p.ExecuteBatch(ctx, []sprocketspg.Statement{{SQL: "SELECT 1"}})
	assert.ErrorIs(t, err, context.Canceled)
	deadline, cancel := context.WithTimeout(ctxT(t), 200*time.Millisecond)
	defer cancel()
	_, err = p.ExecuteBatch(deadline, []sprocketspg.Statement{{SQL: "SELECT 1"}, {SQL: "SELECT pg_sleep(5)"}})
	assert.ErrorIs(t, err, context.DeadlineExceeded, "a deadline that passes while it runs: %v", err)
	var pgErr *pgconn.PgError
	assert.ErrorAs(t, err, &pgErr, "and the server's error is kept")
}

// TestExecuteBatchRoundTrips counts the round trips on the wire: a batch
// of any length costs one, with or without Atomic and a query timeout.
func TestExecuteBatchRoundTrips(t *testing.T) {
	counter := &turnCounter{}
	pool, _ := batchPool(t, sprocketspg.WithPoolConfig(func(c *pgxpool.Config) {
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
		dial := c.ConnConfig.DialFunc
		c.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &turnConn{Conn: conn, c: counter}, nil
		}
	}))
	base := ctxT(t)
	stmts := make([]sprocketspg.Statement, 10)
	for i := range stmts {
		stmts[i] = sprocketspg.Statement{SQL: "SELECT $1::int AS n", Args: []any{i}}
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		opts []sprocketspg.BatchOption
	}{
		{"plain", base, nil},
		{"atomic", base, []sprocketspg.BatchOption{sprocketspg.Atomic()}},
		{"timeout", sprocketspg.WithQueryTimeout(base, time.Second), nil},
	} {
		_, err := pool.ExecuteBatch(tc.ctx, stmts, tc.opts...) // prepares, once
		require.NoError(t, err)
		counter.reset()
		results, err := pool.ExecuteBatch(tc.ctx, stmts, tc.opts...)
		require.NoError(t, err)
		require.Len(t, results, 10)
		assert.EqualValues(t, 9, results[9].Row["n"])
		assert.Equal(t, 1, counter.count(), "%s: 10 statements in one round trip", tc.name)
	}
	counter.reset()
	for i := range 10 {
		_, err := pool.Execute(base, "SELECT $1::int AS n", i)
		require.NoError(t, err)
	}
	assert.Equal(t, 10, counter.count(), "10 Execute calls, 10 round trips")
}

// TestExecuteBatchEveryExecMode runs a batch that fails halfway, with a
// query timeout, in each of pgx's exec modes: the rules hold in all.
func TestExecuteBatchEveryExecMode(t *testing.T) {
	for _, mode := range []string{"cache_statement", "cache_describe", "describe_exec", "exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			url := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(batchSchema))
			pool := newPoolAt(t, url, func(c *sprocketspg.Config) { c.QueryExecMode = mode })
			ctx := sprocketspg.WithQueryTimeout(ctxT(t), 3*time.Second)
			_, err := pool.ExecuteBatch(ctx, []sprocketspg.Statement{
				{SQL: "INSERT INTO kv VALUES ($1, $2)", Args: []any{"a", 1}},
				{SQL: "INSERT INTO kv VALUES ($1, $2)", Args: []any{"a", 2}},
				{SQL: "INSERT INTO kv VALUES ($1, $2)", Args: []any{"c", 3}},
			})
			var be *sprocketspg.BatchError
			require.ErrorAs(t, err, &be)
			assert.Equal(t, 1, be.Index)
			assert.Equal(t, []any{"a"}, keys(t, ctxT(t), pool))
			results, err := pool.ExecuteBatch(ctx, []sprocketspg.Statement{
				{SQL: "SHOW statement_timeout"},
				{SQL: "SELECT $1::int AS n", Args: []any{7}},
			}, sprocketspg.Atomic())
			require.NoError(t, err)
			assert.Equal(t, "3s", results[0].Row["statement_timeout"])
			assert.EqualValues(t, 7, results[1].Row["n"])
		})
	}
}

// TestExecuteBatchCommitFailure has a statement succeed and its own
// COMMIT fail (a deferred constraint): that statement is the failed one,
// nothing of it stays, and the next one does not run.
func TestExecuteBatchCommitFailure(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(batchSchema+`
		CREATE TABLE parent (id int PRIMARY KEY);
		CREATE TABLE child (id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);`))
	rec := &recorder{}
	pool := newPoolAt(t, url, nil, sprocketspg.WithObserver(rec))
	ctx := ctxT(t)
	results, err := pool.ExecuteBatch(ctx, []sprocketspg.Statement{
		{SQL: "INSERT INTO kv VALUES ('a', 1)"},
		{SQL: "INSERT INTO child VALUES (7)", MetricName: "orphan"},
		{SQL: "INSERT INTO kv VALUES ('c', 3)"},
	})
	var be *sprocketspg.BatchError
	require.ErrorAs(t, err, &be)
	assert.Equal(t, 1, be.Index, "the statement whose commit failed")
	assert.Equal(t, "orphan", be.MetricName)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "23503", pgErr.Code, "the deferred foreign key, at COMMIT")
	assert.Len(t, results, 1, "only the first statement's result stands")
	assert.Equal(t, []any{"a"}, keys(t, ctx, pool))
	res, err := pool.Execute(ctx, "SELECT count(*) AS n FROM child")
	require.NoError(t, err)
	assert.EqualValues(t, 0, res.Row["n"])

	events := rec.waitEvents(t, 4)
	var statementEvents int
	for _, ev := range events {
		if ev.Operation == sprocketspg.OperationBatchStatement {
			statementEvents++
		}
	}
	assert.Equal(t, 2, statementEvents, "one event per statement that ran, none twice")
}

// pgx prepares every statement of a batch before it sends any: a statement
// the server refuses to prepare fails the batch before any of it runs, and
// the error names that statement, not the first.
func TestExecuteBatchPrepareFailureNamesTheStatement(t *testing.T) {
	for _, atomic := range []bool{false, true} {
		t.Run(map[bool]string{false: "each commits", true: "atomic"}[atomic], func(t *testing.T) {
			rec := &recorder{}
			pool, _ := batchPool(t, sprocketspg.WithObserver(rec))
			ctx := ctxT(t)
			stmts := []sprocketspg.Statement{
				{SQL: "INSERT INTO kv VALUES ('a', 1)", MetricName: "first"},
				{SQL: "INSERT INTO kv VALUES ('b', 2)", MetricName: "second"},
				{SQL: "SELECT * FROM no_such_table", MetricName: "third"},
			}
			var opts []sprocketspg.BatchOption
			if atomic {
				opts = append(opts, sprocketspg.Atomic())
			}
			results, err := pool.ExecuteBatch(ctx, stmts, opts...)
			var be *sprocketspg.BatchError
			require.ErrorAs(t, err, &be)
			assert.Equal(t, 2, be.Index)
			assert.Equal(t, "third", be.MetricName)
			assert.True(t, be.NoneRan)
			assert.False(t, be.Committed)
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			assert.Equal(t, "42P01", pgErr.Code)
			assert.Contains(t, err.Error(), `batch statement 2 of 3 ("third") failed to prepare; no statement ran`)
			assert.Empty(t, results)
			assert.Empty(t, keys(t, ctx, pool), "nothing ran")
			// The statement's event and the batch's, then keys' Execute.
			events := rec.waitEvents(t, 3)
			require.GreaterOrEqual(t, len(events), 2)
			assert.Equal(t, sprocketspg.OperationBatchStatement, events[0].Operation)
			assert.Equal(t, "third", events[0].MetricName, "the observers hear of the statement that failed")
			assert.Error(t, events[0].Err)
			assert.Equal(t, sprocketspg.OperationBatch, events[1].Operation)
		})
	}
}
