package sprocketspg_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
)

func TestExecuteResultShapes(t *testing.T) {
	pool := appPool(t)
	ctx := ctxT(t)

	_, err := pool.Execute(ctx, "CREATE TABLE items (id serial PRIMARY KEY, value text NOT NULL, toggle bool DEFAULT false)")
	require.NoError(t, err)

	t.Run("insert without RETURNING, five times", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			res, err := pool.Execute(ctx, "INSERT INTO items (value) VALUES ($1)", "v")
			require.NoError(t, err)
			assert.Equal(t, int64(1), res.RowCount)
			assert.Nil(t, res.Row)
			assert.NotNil(t, res.Rows)
			assert.Empty(t, res.Rows)
		}
	})

	t.Run("select no rows", func(t *testing.T) {
		res, err := pool.Execute(ctx, "SELECT * FROM items WHERE value = $1", "none")
		require.NoError(t, err)
		assert.Equal(t, int64(0), res.RowCount)
		assert.Nil(t, res.Row)
		require.NotNil(t, res.Rows)
		assert.Empty(t, res.Rows)
		js, err := json.Marshal(res.Rows)
		require.NoError(t, err)
		assert.Equal(t, "[]", string(js))
	})

	t.Run("select one row", func(t *testing.T) {
		res, err := pool.Execute(ctx, "SELECT id, value FROM items WHERE id = $1", 3)
		require.NoError(t, err)
		assert.Equal(t, int64(1), res.RowCount)
		require.NotNil(t, res.Row)
		assert.Equal(t, map[string]any{"id": int32(3), "value": "v"}, res.Row)
		assert.Equal(t, []map[string]any{res.Row}, res.Rows)
	})

	t.Run("select many rows in order", func(t *testing.T) {
		res, err := pool.Execute(ctx, "SELECT id FROM items ORDER BY id DESC")
		require.NoError(t, err)
		assert.Equal(t, int64(5), res.RowCount)
		assert.Nil(t, res.Row)
		require.Len(t, res.Rows, 5)
		for i, row := range res.Rows {
			assert.Equal(t, int32(5-i), row["id"])
		}
	})

	t.Run("update affects rows", func(t *testing.T) {
		res, err := pool.Execute(ctx, "UPDATE items SET toggle = NOT toggle WHERE id <= $1", 3)
		require.NoError(t, err)
		assert.Equal(t, int64(3), res.RowCount)
		assert.Empty(t, res.Rows)
	})

	t.Run("insert returning", func(t *testing.T) {
		res, err := pool.Execute(ctx, "INSERT INTO items (value) VALUES ('a'), ('b') RETURNING id, value")
		require.NoError(t, err)
		assert.Equal(t, int64(2), res.RowCount)
		assert.Len(t, res.Rows, 2)
		assert.Equal(t, "b", res.Rows[1]["value"])
	})

	t.Run("delete", func(t *testing.T) {
		res, err := pool.Execute(ctx, "DELETE FROM items WHERE value IN ('a', 'b')")
		require.NoError(t, err)
		assert.Equal(t, int64(2), res.RowCount)
	})

	t.Run("named arguments", func(t *testing.T) {
		res, err := pool.Execute(ctx, "SELECT @a::int + @b::int AS sum", pgx.NamedArgs{"a": 40, "b": 2})
		require.NoError(t, err)
		assert.Equal(t, int32(42), res.Row["sum"])
	})

	t.Run("null and time values", func(t *testing.T) {
		res, err := pool.Execute(ctx, "SELECT NULL::text AS n, '2024-01-02T03:04:05Z'::timestamptz AS ts")
		require.NoError(t, err)
		assert.Nil(t, res.Row["n"])
		ts, ok := res.Row["ts"].(time.Time)
		require.True(t, ok, "%T", res.Row["ts"])
		assert.True(t, ts.Equal(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)))
	})

	t.Run("syntax error wraps PgError", func(t *testing.T) {
		_, err := pool.Execute(sprocketspg.WithMetricName(ctx, "broken"), "SELEC 1")
		require.Error(t, err)
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr))
		assert.Equal(t, "42601", pgErr.Code)
		assert.Contains(t, err.Error(), `"broken"`)
	})
}

func TestErrorClassification(t *testing.T) {
	pool := appPool(t)
	ctx := ctxT(t)
	_, err := pool.Exec(ctx, `
		CREATE TABLE parents (id int PRIMARY KEY);
		CREATE TABLE children (id int PRIMARY KEY, parent int NOT NULL REFERENCES parents (id));
		INSERT INTO parents VALUES (1);`)
	require.NoError(t, err)

	_, err = pool.Execute(ctx, "INSERT INTO parents VALUES (1)")
	require.Error(t, err)
	assert.True(t, sprocketspg.IsUniqueViolation(err))
	assert.False(t, sprocketspg.IsForeignKeyViolation(err))
	assert.False(t, sprocketspg.IsConnectionError(err))
	assert.False(t, sprocketspg.IsQueryTimeout(err))

	_, err = pool.Execute(ctx, "INSERT INTO children VALUES (1, 99)")
	require.Error(t, err)
	assert.True(t, sprocketspg.IsForeignKeyViolation(err))
	assert.False(t, sprocketspg.IsUniqueViolation(err))

	// The helpers see through further wrapping.
	wrapped := errors.Join(errors.New("handler"), err)
	assert.True(t, sprocketspg.IsForeignKeyViolation(wrapped))
	assert.False(t, sprocketspg.IsUniqueViolation(nil))
	assert.False(t, sprocketspg.IsQueryTimeout(nil))
	assert.False(t, sprocketspg.IsConnectionError(nil))
}

func TestCallproc(t *testing.T) {
	pool := appPool(t)
	ctx := ctxT(t)
	_, err := pool.Exec(ctx, `
		CREATE SCHEMA v1;
		CREATE FUNCTION v1.new_id() RETURNS uuid LANGUAGE sql AS $$ SELECT gen_random_uuid() $$;
		CREATE FUNCTION add_numbers(a int, b int) RETURNS int LANGUAGE sql AS $$ SELECT a + b $$;
		CREATE FUNCTION series(n int) RETURNS TABLE (i int) LANGUAGE sql AS $$ SELECT generate_series(1, n) $$;
		CREATE FUNCTION "Odd""Name"() RETURNS text LANGUAGE sql AS $$ SELECT 'odd' $$;
		CREATE TABLE log (msg text);
		CREATE PROCEDURE write_log(m text) LANGUAGE sql AS $$ INSERT INTO log VALUES (m) $$;
		CREATE TABLE victims (id int);`)
	require.NoError(t, err)

	t.Run("function returning uuid", func(t *testing.T) {
		res, err := pool.Callproc(ctx, "v1.new_id")
		require.NoError(t, err)
		assert.Equal(t, int64(1), res.RowCount)
		_, ok := res.Row["new_id"].(uuid.UUID)
		assert.True(t, ok, "%T", res.Row["new_id"])
	})

	t.Run("positional arguments", func(t *testing.T) {
		res, err := pool.Callproc(ctx, "add_numbers", 2, 3)
		require.NoError(t, err)
		assert.Equal(t, int32(5), res.Row["add_numbers"])
	})

	t.Run("set-returning function", func(t *testing.T) {
		res, err := pool.Callproc(ctx, "SERIES", 3)
		require.NoError(t, err)
		assert.Equal(t, int64(3), res.RowCount)
		assert.Equal(t, int32(3), res.Rows[2]["i"])
	})

	t.Run("quoted name", func(t *testing.T) {
		res, err := pool.Callproc(ctx, `"Odd""Name"`)
		require.NoError(t, err)
		assert.Equal(t, "odd", res.Row[`Odd"Name`])
	})

	t.Run("procedure", func(t *testing.T) {
		for _, m := range []string{"one", "two"} {
			_, err := pool.Callproc(ctx, "write_log", m)
			require.NoError(t, err)
		}
		res, err := pool.Execute(ctx, "SELECT msg FROM log ORDER BY msg")
		require.NoError(t, err)
		assert.Equal(t, int64(2), res.RowCount)
	})

	t.Run("missing function", func(t *testing.T) {
		_, err := pool.Callproc(ctx, "no_such_function", 1)
		require.Error(t, err)
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr))
		assert.Equal(t, "42883", pgErr.Code)
	})

	t.Run("name cannot inject SQL", func(t *testing.T) {
		for _, name := range []string{
			"add_numbers(1,2); DROP TABLE victims; --",
			`"add_numbers"(1,2); DROP TABLE victims; --`,
			"victims; DROP TABLE victims",
			`"x"); DROP TABLE victims; --"`,
		} {
			_, err := pool.Callproc(ctx, name)
			assert.Error(t, err, name)
		}
		// A quoted name holding SQL is only ever an identifier.
		_, err := pool.Callproc(ctx, `"add_numbers(1,2); DROP TABLE victims; --"`)
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr), "%v", err)
		assert.Equal(t, "42883", pgErr.Code) // undefined_function
		_, err = pool.Execute(ctx, "SELECT count(*) FROM victims")
		assert.NoError(t, err, "victims table must survive")
	})
}
