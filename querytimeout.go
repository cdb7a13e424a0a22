package sprocketspg

import (
	"context"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The statements around a call with its own timeout. They travel in the
// same message as the call (a pipeline), so they cost no round trip.
const (
	// setTimeoutSQL sets statement_timeout for the rest of the
	// transaction: outside one, for the pipeline's implicit transaction,
	// which ends with the call, so nothing stays on the connection.
	setTimeoutSQL = "SELECT set_config('statement_timeout', $1, true)"
	// saveTimeoutSQL and restoreTimeoutSQL keep a transaction's own
	// statement_timeout around the call, in a setting of the
	// transaction's own.
	saveTimeoutSQL    = "SELECT set_config('sprocketspg.statement_timeout', current_setting('statement_timeout'), true)"
	restoreTimeoutSQL = "SELECT set_config('statement_timeout', current_setting('sprocketspg.statement_timeout'), true)"
)

type queryTimeoutKey struct{}

// WithQueryTimeout returns a copy of ctx under which Execute, Callproc,
// Notify, Tx.Execute and Tx.Callproc run their statement with a
// server-side statement_timeout of d instead of Config.QueryTimeout (or a
// transaction's txn.Timeout): shorter or longer, as the Python original's
// timeout argument was. The limit is sent with the statement, in the same
// round trip, and applies to that statement alone; the client's wait for
// the answer is raised with it. A d of zero or less leaves the limit as it
// is. Unlike a deadline on ctx, it can also be longer than QueryTimeout,
// and a statement it ends fails with IsQueryTimeout, as the server's own
// timeout does.
//
// A procedure that commits or rolls back inside (CALL with transaction
// control) cannot run with it, since the statement then runs inside a
// transaction block.
func WithQueryTimeout(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, queryTimeoutKey{}, d)
}

// QueryTimeoutOf returns the timeout WithQueryTimeout set on ctx, and
// whether one that applies (above zero) is set.
func QueryTimeoutOf(ctx context.Context) (time.Duration, bool) {
	d, ok := ctx.Value(queryTimeoutKey{}).(time.Duration)
	return d, ok && d > 0
}

// queryWithTimeout runs sql on a connection of pool with its own
// statement_timeout d.
func (p *Pool) queryWithTimeout(ctx context.Context, pool *pgxpool.Pool, sql string, args []any, d time.Duration) (QueryResult, error) {
	conn, err := p.acquireConn(ctx, pool)
	if err != nil {
		return QueryResult{}, err
	}
	defer conn.Release()
	defer p.deadline.extend(conn.Conn(), d)()
	return runTimed(ctx, conn, sql, args, d, false)
}

// run runs sql in tx, with its own statement_timeout when ctx has one.
func (tx *Tx) run(ctx context.Context, sql string, args []any) (QueryResult, error) {
	d, ok := QueryTimeoutOf(ctx)
	if !ok {
		return runQuery(ctx, tx.Tx, sql, args)
	}
	defer tx.pool.deadline.extend(tx.Conn(), d)()
	return runTimed(ctx, tx.Tx, sql, args, d, true)
}

// batchSender is what runTimed sends its pipeline through: a pool's
// connection or a transaction.
type batchSender interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// runTimed sends, in one pipeline, the statement that sets the timeout
// (after saving the transaction's own, when inTx), sql, and in a
// transaction the statement that restores the saved timeout.
func runTimed(ctx context.Context, s batchSender, sql string, args []any, d time.Duration, inTx bool) (res QueryResult, err error) {
	ms := max(d.Milliseconds(), 1)
	batch := &pgx.Batch{}
	if inTx {
		batch.Queue(saveTimeoutSQL)
	}
	batch.Queue(setTimeoutSQL, strconv.FormatInt(ms, 10))
	batch.Queue(sql, args...)
	if inTx {
		batch.Queue(restoreTimeoutSQL)
	}
	br := s.SendBatch(ctx, batch)
	defer func() {
		if cerr := br.Close(); err == nil && cerr != nil {
			res, err = QueryResult{}, cerr
		}
	}()
	if inTx {
		if _, err := br.Exec(); err != nil {
			return QueryResult{}, err
		}
	}
	if _, err := br.Exec(); err != nil {
		return QueryResult{}, err
	}
	rows, err := br.Query()
	if err != nil {
		return QueryResult{}, err
	}
	if res, err = collectResult(rows); err != nil {
		return QueryResult{}, err
	}
	if inTx {
		if _, err := br.Exec(); err != nil {
			return QueryResult{}, err
		}
	}
	return res, nil
}
