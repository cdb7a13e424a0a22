package sprocketspg

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// QueryResult is what Execute and Callproc return, shaped like the Python
// original's QueryResult.
//
// For typed results use pgx directly, for example
// pgx.CollectRows(rows, pgx.RowToStructByName[T]) on the embedded pool.
type QueryResult struct {
	// RowCount is the number of rows returned or, for a statement that
	// returns no rows (INSERT, UPDATE, DELETE without RETURNING), the number
	// of rows it affected according to its command tag.
	RowCount int64

	// Row is the only row when exactly one row came back, nil otherwise.
	Row map[string]any

	// Rows lists every returned row in order. It is never nil, so it
	// encodes to JSON as [] when no rows came back. Each row maps column
	// names to values of pgx's Go types (adjusted by Config's UUID, JSON and
	// HStore toggles); when two columns share a name the later one wins.
	Rows []map[string]any
}

// querier is what Execute needs: a pool, a connection or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// runQuery sends one statement and reads its whole result.
func runQuery(ctx context.Context, q querier, sql string, args []any) (QueryResult, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return QueryResult{}, err
	}
	return collectResult(rows)
}

func collectResult(rows pgx.Rows) (QueryResult, error) {
	defer rows.Close()
	// Read the column names now: once Next returns false the pool takes the
	// connection back, and field descriptions live on the connection.
	fields := rows.FieldDescriptions()
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.Name
	}
	res := QueryResult{Rows: []map[string]any{}}
	for rows.Next() {
		values, err := rows.Values()
		if err != nil {
			return QueryResult{}, err
		}
		row := make(map[string]any, len(names))
		for i, name := range names {
			row[name] = values[i]
		}
		res.Rows = append(res.Rows, row)
	}
	if err := rows.Err(); err != nil {
		return QueryResult{}, err
	}
	if len(names) > 0 {
		res.RowCount = int64(len(res.Rows))
	} else {
		res.RowCount = rows.CommandTag().RowsAffected()
	}
	if len(res.Rows) == 1 {
		res.Row = res.Rows[0]
	}
	return res, nil
}
