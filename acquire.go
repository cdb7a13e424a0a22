package sprocketspg

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrPoolExhausted is matched (errors.Is) by the error of an Execute,
// Callproc or Transaction that waited Config.AcquireTimeout for a
// connection without getting one; ClassifyError answers it with 503.
var ErrPoolExhausted = errors.New("no postgres connection free within the acquire timeout")

// query runs sql on pool, within the acquire timeout when there is one.
func (p *Pool) query(ctx context.Context, pool *pgxpool.Pool, sql string, args []any) (QueryResult, error) {
	if d, ok := QueryTimeoutOf(ctx); ok {
		return p.queryWithTimeout(ctx, pool, sql, args, d)
	}
	if p.cfg.AcquireTimeout <= 0 {
		// pgxpool acquires and releases around the statement itself.
		return runQuery(ctx, pool, sql, args)
	}
	conn, err := p.acquire(ctx, pool)
	if err != nil {
		return QueryResult{}, err
	}
	defer conn.Release()
	return runQuery(ctx, conn, sql, args)
}

// acquireConn takes a connection of pool for a call that needs one of its
// own (a pipeline): within the acquire timeout when there is one.
func (p *Pool) acquireConn(ctx context.Context, pool *pgxpool.Pool) (*pgxpool.Conn, error) {
	if p.cfg.AcquireTimeout > 0 {
		return p.acquire(ctx, pool)
	}
	return pool.Acquire(ctx)
}

// acquire takes a connection of pool, waiting at most the acquire
// timeout (or until ctx ends, when that is sooner).
func (p *Pool) acquire(ctx context.Context, pool *pgxpool.Pool) (*pgxpool.Conn, error) {
	actx, cancel := context.WithTimeout(ctx, p.cfg.AcquireTimeout)
	defer cancel()
	conn, err := pool.Acquire(actx)
	if err == nil {
		return conn, nil
	}
	if ctx.Err() == nil && actx.Err() != nil {
		// The acquire timeout, not the caller, ended the wait.
		st := pool.Stat()
		why := "opening a new connection took longer"
		if st.AcquiredConns() >= st.MaxConns() {
			why = fmt.Sprintf("all %d connections in use", st.MaxConns())
		}
		return nil, fmt.Errorf("%w (%s, %s)", ErrPoolExhausted, p.cfg.AcquireTimeout, why)
	}
	return nil, err
}
