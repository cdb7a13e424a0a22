package sprocketspg

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
)

// This file is where the pool's own pgx hooks meet the user's: pgxpool
// has one BeforeConnect, one AfterConnect, one BeforeClose, one
// ShouldPing and one tracer per pool, and both the pool and WithPoolConfig
// want them.

// poolHooks are the pool's own hooks, each in the order it must run.
type poolHooks struct {
	// beforeConnect prepare a new connection's configuration: the gate of
	// the initial fill, SRV hosts, credentials, TLS files.
	beforeConnect []func(context.Context, *pgx.ConnConfig) error
	// afterConnect set a new connection up: types, the idle check.
	afterConnect []func(context.Context, *pgx.Conn) error
	beforeClose  func(*pgx.Conn)
	shouldPing   func(context.Context, pgxpool.ShouldPingParams) bool
	tracers      []pgx.QueryTracer
	// watchContext wraps the context watcher handler of each new
	// connection, whichever built it.
	watchContext func(*pgconn.PgConn, ctxwatch.Handler) ctxwatch.Handler
}

// installHooks sets pc's hooks to the pool's own, composed with those the
// user's WithPoolConfig functions set: theirs run after ours
// (BeforeConnect, AfterConnect, BeforeClose), so that they see what ours
// did (resolved hosts, a fresh password, registered types) instead of
// replacing it; ShouldPing asks theirs when ours does not ask for a ping;
// their ConnConfig.Tracer runs beside ours; the context watcher handler
// of each connection, theirs or ours, is wrapped by ours. Each function sees pc with
// every other setting applied and its hooks cleared, so it need not
// compose with anything itself.
func installHooks(pc *pgxpool.Config, own poolHooks, userConfigs []func(*pgxpool.Config)) {
	var before func(context.Context, *pgx.ConnConfig) error
	for _, hook := range own.beforeConnect {
		before = chainConnHooks(before, hook)
	}
	var after func(context.Context, *pgx.Conn) error
	for _, hook := range own.afterConnect {
		after = chainConnHooks(after, hook)
	}
	beforeClose, shouldPing, tracers := own.beforeClose, own.shouldPing, own.tracers
	for _, fn := range userConfigs {
		pc.AfterConnect, pc.BeforeConnect, pc.ConnConfig.Tracer = nil, nil, nil
		pc.BeforeClose, pc.ShouldPing = nil, nil
		fn(pc)
		before = chainConnHooks(before, pc.BeforeConnect)
		after = chainConnHooks(after, pc.AfterConnect)
		if pc.ConnConfig.Tracer != nil {
			tracers = append(tracers, pc.ConnConfig.Tracer)
		}
		if theirs := pc.BeforeClose; theirs != nil {
			prev := beforeClose
			beforeClose = func(c *pgx.Conn) {
				prev(c)
				theirs(c)
			}
		}
		if theirs := pc.ShouldPing; theirs != nil {
			prev := shouldPing
			shouldPing = func(ctx context.Context, params pgxpool.ShouldPingParams) bool {
				return prev(ctx, params) || theirs(ctx, params)
			}
		}
	}
	pc.BeforeConnect, pc.AfterConnect = before, after
	pc.BeforeClose, pc.ShouldPing = beforeClose, shouldPing
	pc.ConnConfig.Tracer = combineTracers(tracers)
	if wrap := own.watchContext; wrap != nil {
		build := pc.ConnConfig.BuildContextWatcherHandler
		pc.ConnConfig.BuildContextWatcherHandler = func(conn *pgconn.PgConn) ctxwatch.Handler {
			if build == nil {
				// pgconn's own default.
				return wrap(conn, &pgconn.DeadlineContextWatcherHandler{Conn: conn.Conn()})
			}
			return wrap(conn, build(conn))
		}
	}
}

// chainConnHooks runs ours, then theirs, so a hook set through
// WithPoolConfig sees what the pool's own hook did (resolved hosts,
// registered types) instead of replacing it.
func chainConnHooks[C any](ours, theirs func(context.Context, C) error) func(context.Context, C) error {
	switch {
	case theirs == nil:
		return ours
	case ours == nil:
		return theirs
	}
	return func(ctx context.Context, c C) error {
		if err := ours(ctx, c); err != nil {
			return err
		}
		return theirs(ctx, c)
	}
}
