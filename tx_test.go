package sprocketspg_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/txn"
)

// txSchema is the shape of the Python original's transaction test: a row
// table and a counter bumped in the same transaction.
const txSchema = `
CREATE TABLE test (id uuid PRIMARY KEY, value text NOT NULL);
CREATE TABLE query_count (key text PRIMARY KEY, count integer NOT NULL);
CREATE FUNCTION add_one(n integer) RETURNS integer LANGUAGE sql AS 'SELECT n + 1';
CREATE PROCEDURE bump(k text) LANGUAGE sql AS
	$$INSERT INTO query_count VALUES (k, 1) ON CONFLICT (key) DO UPDATE SET count = query_count.count + 1$$;
`

func txPool(t *testing.T) *sprocketspg.Pool {
	t.Helper()
	return newPoolWithSchema(t, txSchema)
}

func TestTransactionCommitsAndRollsBackEverything(t *testing.T) {
	pool := txPool(t)
	ctx := ctxT(t)

	first := uuid.New()
	insertAndCount := func(tx *sprocketspg.Tx, ids ...uuid.UUID) (int32, error) {
		var count int32
		for i, id := range ids {
			if _, err := tx.Execute(ctx, "INSERT INTO test (id, value) VALUES ($1, $2)", id, "v"); err != nil {
				return 0, err
			}
			if i == 0 {
				res, err := tx.Execute(ctx, `INSERT INTO query_count VALUES ('transaction', 1)
					ON CONFLICT (key) DO UPDATE SET count = query_count.count + 1 RETURNING count`)
				if err != nil {
					return 0, err
				}
				count = res.Row["count"].(int32)
			}
		}
		return count, nil
	}

	var count int32
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		var err error
		count, err = insertAndCount(tx, first)
		return err
	})
	require.NoError(t, err)
	assert.EqualValues(t, 1, count)

	// The second run's third statement repeats the first run's key.
	second := uuid.New()
	err = pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := insertAndCount(tx, second, first)
		return err
	})
	require.Error(t, err)
	assert.True(t, sprocketspg.IsUniqueViolation(err), "want a unique violation, got %v", err)

	res, err := pool.Execute(ctx, "SELECT count(*) AS n FROM test WHERE id = $1", second)
	require.NoError(t, err)
	assert.EqualValues(t, 0, res.Row["n"], "the second insert must be rolled back")
	res, err = pool.Execute(ctx, "SELECT count FROM query_count WHERE key = 'transaction'")
	require.NoError(t, err)
	assert.EqualValues(t, 1, res.Row["count"], "the second counter bump must be rolled back")
}

func TestTransactionCallprocFunctionAndProcedure(t *testing.T) {
	pool := txPool(t)
	ctx := ctxT(t)
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		res, err := tx.Callproc(ctx, "add_one", 41)
		if err != nil {
			return err
		}
		assert.EqualValues(t, 42, res.Row["add_one"])
		// A procedure inside a transaction must be found without a failed
		// statement: that would abort the transaction.
		if _, err := tx.Callproc(ctx, "public.bump", "p"); err != nil {
			return err
		}
		_, err = tx.Callproc(ctx, "bump", "p")
		return err
	})
	require.NoError(t, err)
	res, err := pool.Execute(ctx, "SELECT count FROM query_count WHERE key = 'p'")
	require.NoError(t, err)
	assert.EqualValues(t, 2, res.Row["count"])

	err = pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.Callproc(ctx, "add_one; DROP TABLE test", 1)
		return err
	})
	require.ErrorIs(t, err, sprocketspg.ErrInvalidRoutineName)
}

func TestTransactionTimeoutIsQueryTimeout(t *testing.T) {
	pool := txPool(t)
	ctx := ctxT(t)
	began := time.Now()
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		if _, err := tx.Execute(ctx, "INSERT INTO test VALUES ($1, 'x')", uuid.New()); err != nil {
			return err
		}
		_, err := tx.Execute(ctx, "SELECT pg_sleep(2)")
		return err
	}, txn.Timeout(200*time.Millisecond))
	require.Error(t, err)
	assert.Less(t, time.Since(began), 1500*time.Millisecond)
	assert.True(t, sprocketspg.IsQueryTimeout(err), "want a query timeout, got %v", err)

	res, err := pool.Execute(ctx, "SELECT count(*) AS n FROM test")
	require.NoError(t, err)
	assert.EqualValues(t, 0, res.Row["n"])
	res, err = pool.Execute(ctx, "SHOW statement_timeout")
	require.NoError(t, err)
	assert.Equal(t, "30s", res.Row["statement_timeout"], "the transaction's timeout must not outlive it")
}

func TestTransactionUsesConfigQueryTimeoutByDefault(t *testing.T) {
	pool, _ := newPool(t, func(c *sprocketspg.Config) { c.QueryTimeout = 1500 * time.Millisecond })
	ctx := ctxT(t)
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		res, err := tx.Execute(ctx, "SHOW statement_timeout")
		if err != nil {
			return err
		}
		assert.Equal(t, "1500ms", res.Row["statement_timeout"])
		return nil
	})
	require.NoError(t, err)
}

func TestTransactionPanicRollsBackAndReleases(t *testing.T) {
	pool := txPool(t)
	ctx := ctxT(t)
	assert.PanicsWithValue(t, "boom", func() {
		_ = pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
			if _, err := tx.Execute(ctx, "INSERT INTO test VALUES ($1, 'x')", uuid.New()); err != nil {
				return err
			}
			panic("boom")
		})
	})
	assert.EqualValues(t, 0, pool.Stat().AcquiredConns())
	res, err := pool.Execute(ctx, "SELECT count(*) AS n FROM test")
	require.NoError(t, err)
	assert.EqualValues(t, 0, res.Row["n"])
}

func TestTransactionReadOnly(t *testing.T) {
	pool := txPool(t)
	ctx := ctxT(t)
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.Execute(ctx, "INSERT INTO test VALUES ($1, 'x')", uuid.New())
		return err
	}, txn.ReadOnly())
	require.Error(t, err)
	assert.True(t, hasSQLState(err, "25006"), "want read_only_sql_transaction, got %v", err)
}

func TestTransactionMetricNameInError(t *testing.T) {
	pool := txPool(t)
	ctx := sprocketspg.WithMetricName(ctxT(t), "create-thing")
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.Execute(ctx, "SELECT 1/0")
		return err
	})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "create-thing")
}

func TestTransactionBeforeStart(t *testing.T) {
	pool := &sprocketspg.Pool{}
	err := pool.Transaction(context.Background(), func(*sprocketspg.Tx) error {
		t.Error("fn must not run on a pool that is not connected")
		return nil
	})
	require.ErrorIs(t, err, sprocketspg.ErrNotConnected)
}

func TestTransactionCommitError(t *testing.T) {
	pool := newPoolWithSchema(t, `
		CREATE TABLE parent (id int PRIMARY KEY);
		CREATE TABLE child (parent_id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);`)
	ctx := ctxT(t)
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.Execute(ctx, "INSERT INTO child VALUES (7)")
		return err
	})
	require.Error(t, err, "the deferred foreign key fails at COMMIT")
	assert.True(t, sprocketspg.IsForeignKeyViolation(err), "want a foreign key violation, got %v", err)
	res, err := pool.Execute(ctx, "SELECT count(*) AS n FROM child")
	require.NoError(t, err)
	assert.EqualValues(t, 0, res.Row["n"])
}

func hasSQLState(err error, code string) bool {
	var pgErr interface{ SQLState() string }
	return errors.As(err, &pgErr) && pgErr.SQLState() == code
}

var _ pgx.Tx = (*sprocketspg.Tx)(nil)

// TestTransactionTimeoutAboveClientBound checks that txn.Timeout raises the
// client-side bound on waiting for an answer (QueryTimeout +
// ConnectionTimeout, here 1.5 s) along with the server's statement
// timeout, so a statement the transaction allows is not cut off by the
// client.
func TestTransactionTimeoutAboveClientBound(t *testing.T) {
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.QueryTimeout = 500 * time.Millisecond
		c.ConnectionTimeout = time.Second
	})
	ctx := ctxT(t)
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.Execute(ctx, "SELECT pg_sleep(2)")
		return err
	}, txn.Timeout(5*time.Second))
	require.NoError(t, err, "a 2 s statement inside a 5 s transaction timeout")

	// Outside the transaction the connection's own bounds apply again.
	_, err = pool.Execute(ctx, "SELECT pg_sleep(2)")
	require.Error(t, err)
	assert.True(t, sprocketspg.IsQueryTimeout(err), "want a query timeout, got %v", err)
}
