package sprocketspg

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/sprockets/sprocketspg/txn"
)

// Tx is a transaction of a Pool. It embeds pgx.Tx, so every pgx method is
// there, and adds Execute and Callproc with the Pool's result rules.
//
// A Tx is valid only inside the function given to Pool.Transaction and,
// like pgx.Tx, must not be used by several goroutines at once.
type Tx struct {
	pgx.Tx

	pool *Pool
}

// Transaction runs fn in a transaction: it begins one, calls fn, and
// commits when fn returns nil. It rolls back when fn returns an error,
// when fn panics (the panic then continues) and when ctx ends, and
// returns fn's error, the commit's error or ctx's.
//
// Statements run with the connection's statement_timeout
// (Config.QueryTimeout) unless txn.Timeout says otherwise; that timeout
// is sent in the same message as BEGIN, so it costs no round trip. With
// txn.Retries, a transaction that fails with a serialization failure or a
// deadlock is run again from the start, so fn must be safe to run more
// than once. Other options (isolation, read-only, deferrable, a metric
// name) are those of package txn; the pool's logger is used unless
// txn.Logger is given, and a metric name from WithMetricName applies
// unless txn.MetricName is given.
//
// Transaction returns ErrNotConnected before start and after stop.
func (p *Pool) Transaction(ctx context.Context, fn func(tx *Tx) error, opts ...txn.Option) error {
	pool, err := p.livePool()
	if err != nil {
		return err
	}
	// A small array on the stack holds the options in the common case,
	// instead of a slice allocated per transaction.
	var buf [6]txn.Option
	all := append(buf[:0], txn.Logger(p.logger))
	if name := MetricName(ctx); name != "" {
		all = append(all, txn.MetricName(name))
	}
	all = append(all, opts...)
	settings := txn.Apply(all...)
	began := p.startTime()
	var db txn.Beginner = pool
	if p.cfg.AcquireTimeout > 0 {
		conn, err := p.acquire(ctx, pool)
		if err != nil {
			err = callError(ctx, err)
			p.observe(ctx, OperationTransaction, settings.MetricName, "", began, 0, err)
			return p.errorForCaller(err)
		}
		defer conn.Release()
		db = conn
	}
	err = txn.Run(ctx, db, func(_ context.Context, tx pgx.Tx) error {
		// A transaction allowed to run statements longer than
		// QueryTimeout must also be allowed to wait longer for answers.
		if settings.Timeout > p.cfg.QueryTimeout {
			defer p.deadline.extend(tx.Conn(), settings.Timeout)()
		}
		return fn(&Tx{Tx: tx, pool: p})
	}, all...)
	err = callError(ctx, err)
	p.observe(ctx, OperationTransaction, settings.MetricName, "", began, 0, err)
	if err != nil {
		if settings.MetricName != "" {
			return p.errorForCaller(fmt.Errorf("transaction %q: %w", settings.MetricName, err))
		}
		return p.errorForCaller(err)
	}
	return nil
}

// Execute runs sql with args in the transaction and returns its whole
// result, with the rules of Pool.Execute. Unlike Pool.Execute it never
// sends a statement twice: a failed statement aborts the transaction.
func (tx *Tx) Execute(ctx context.Context, sql string, args ...any) (QueryResult, error) {
	began := tx.pool.startTime()
	res, err := tx.run(ctx, sql, args)
	return res, tx.pool.finish(ctx, OperationExecute, "execute", sql, began, res, err)
}

// Callproc calls the function or procedure name with args in the
// transaction, with the naming rules of Pool.Callproc. The first call of
// a routine the pool has not called before looks its kind up in the
// catalog, since a failed attempt would abort the transaction.
func (tx *Tx) Callproc(ctx context.Context, name string, args ...any) (QueryResult, error) {
	ident, err := parseRoutineName(name)
	if err != nil {
		return QueryResult{}, tx.pool.errorForCaller(fmt.Errorf("callproc: %w", err))
	}
	began := tx.pool.startTime()
	key := ident.Sanitize()
	isProc, err := tx.pool.routineIsProcedure(ctx, tx.Tx, ident, key)
	if err != nil {
		return QueryResult{}, tx.pool.finish(ctx, OperationCallproc, "callproc "+key, "", began, QueryResult{}, err)
	}
	sql := callSQL(ident, len(args), isProc)
	res, err := tx.run(ctx, sql, args)
	return res, tx.pool.finish(ctx, OperationCallproc, "callproc "+key, sql, began, res, err)
}
