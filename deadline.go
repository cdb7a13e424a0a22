package sprocketspg

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// responseDeadline is a pgx tracer that bounds how long a connection
// waits for the server's answer, so that a query cannot hang for ever on
// a server host that has vanished (powered off, partitioned away) while
// the connection looks open.
//
// The server cancels any statement that outlives statement_timeout
// (Config.QueryTimeout), so an answer, if only an error, always comes
// within it; silence for longer than that plus a margin
// (Config.ConnectionTimeout) means the server is gone. Setting a read
// deadline when a statement starts and clearing it when it ends costs no
// allocation, unlike a context per query, and unlike TCP keepalives it
// also notices a peer whose kernel still acknowledges packets.
type responseDeadline struct {
	limit  time.Duration
	margin time.Duration

	// overrides holds longer limits for connections running a
	// transaction with a statement timeout above QueryTimeout; count
	// keeps the common case to an atomic load.
	count     atomic.Int32
	overrides sync.Map // *pgx.Conn -> time.Duration
}

func newResponseDeadline(cfg Config) *responseDeadline {
	return &responseDeadline{limit: cfg.QueryTimeout + cfg.ConnectionTimeout, margin: cfg.ConnectionTimeout}
}

// extend raises the limit for conn to timeout plus the margin until the
// returned function is called.
func (d *responseDeadline) extend(conn *pgx.Conn, timeout time.Duration) func() {
	if limit := timeout + d.margin; limit > d.limit {
		d.overrides.Store(conn, limit)
		d.count.Add(1)
		return func() {
			d.overrides.Delete(conn)
			d.count.Add(-1)
		}
	}
	return func() {}
}

func (d *responseDeadline) arm(conn *pgx.Conn) {
	nc := conn.PgConn().Conn()
	if nc == nil {
		return
	}
	limit := d.limit
	if d.count.Load() > 0 {
		if v, ok := d.overrides.Load(conn); ok {
			limit = v.(time.Duration)
		}
	}
	_ = nc.SetReadDeadline(time.Now().Add(limit))
}

func (d *responseDeadline) disarm(conn *pgx.Conn) {
	if nc := conn.PgConn().Conn(); nc != nil {
		_ = nc.SetReadDeadline(time.Time{})
	}
}

// TraceQueryStart arms the deadline for a statement.
func (d *responseDeadline) TraceQueryStart(ctx context.Context, conn *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	d.arm(conn)
	return ctx
}

// TraceQueryEnd clears it once the statement's answer is read.
func (d *responseDeadline) TraceQueryEnd(_ context.Context, conn *pgx.Conn, _ pgx.TraceQueryEndData) {
	d.disarm(conn)
}

// TraceBatchStart arms the deadline for a batch.
func (d *responseDeadline) TraceBatchStart(ctx context.Context, conn *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	d.arm(conn)
	return ctx
}

// TraceBatchQuery re-arms it as each statement of the batch answers.
func (d *responseDeadline) TraceBatchQuery(_ context.Context, conn *pgx.Conn, _ pgx.TraceBatchQueryData) {
	d.arm(conn)
}

// TraceBatchEnd clears it.
func (d *responseDeadline) TraceBatchEnd(_ context.Context, conn *pgx.Conn, _ pgx.TraceBatchEndData) {
	d.disarm(conn)
}

// There is deliberately no TracePrepareStart/End: pgx prepares statements
// inside Query, and a prepare's end clearing the deadline would leave the
// rest of the query unbounded.

// TraceCopyFromStart arms the deadline for a COPY.
func (d *responseDeadline) TraceCopyFromStart(ctx context.Context, conn *pgx.Conn, _ pgx.TraceCopyFromStartData) context.Context {
	d.arm(conn)
	return ctx
}

// TraceCopyFromEnd clears it.
func (d *responseDeadline) TraceCopyFromEnd(_ context.Context, conn *pgx.Conn, _ pgx.TraceCopyFromEndData) {
	d.disarm(conn)
}
