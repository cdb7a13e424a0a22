package sprocketspg

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

// responseDeadline is a pgx tracer that bounds how long a connection
// waits for the server's answer, so that a query cannot hang for ever on
// a server host that has vanished (powered off, partitioned away) or
// frozen while the connection looks open.
//
// The server cancels any statement that outlives statement_timeout
// (Config.QueryTimeout), so an answer, if only an error, always comes
// within it; silence for longer than that plus a margin
// (Config.ConnectionTimeout) means the server is gone. A read deadline
// costs no allocation, unlike a context per query, and unlike TCP
// keepalives it also notices a peer whose kernel still acknowledges
// packets.
//
// Setting a deadline costs a timer update in the runtime, so it is not set
// and cleared around every statement: a statement starts with the
// deadline its connection already has when that one is at least the limit
// away and at most rearmSlack more, and sets a new one otherwise. A busy
// connection so sets it about once per rearmSlack, and a statement waits
// at most the limit plus rearmSlack. The deadline stays set between
// statements; the ways the connection is read without a statement keep it
// valid: pgxpool's ping of an idle connection (refreshed on acquire, see
// refresh), and pgconn's handling of a cancelled context, which replaces
// the deadline (watchContext makes the next statement set it again).
type responseDeadline struct {
	limit  time.Duration
	margin time.Duration
	slack  time.Duration
	// base is when the deadlines are counted from: time.Since(base)
	// reads only the monotonic clock, time.Now the wall clock too.
	base time.Time

	// overrides holds longer limits for connections running a
	// transaction with a statement timeout above QueryTimeout; count
	// keeps the common case to an atomic load.
	count     atomic.Int32
	overrides sync.Map // *pgx.Conn -> time.Duration

	// dropReadOnly is set for a pool that must write (the URL's
	// target_session_attrs is read-write or primary): a connection whose
	// server refuses a write as read-only is dropped.
	dropReadOnly bool
}

// rearmSlack is how far past the limit a deadline may be set, so that it
// need not be set again for that long.
const rearmSlack = time.Second

// connDeadlineKey is where a connection's connDeadline sits in its
// pgconn.PgConn.CustomData.
const connDeadlineKey = "sprocketspg.responseDeadline"

// connDeadline is the read deadline set on one connection.
type connDeadline struct {
	// until is the deadline, in nanoseconds since the responseDeadline's
	// base; 0 when none is known to be set, so the next statement sets
	// one.
	until atomic.Int64
	// busySince is when the connection last started waiting for an
	// answer (a statement began, or a batch's statement answered), in
	// nanoseconds since the base; 0 while no statement runs. The
	// hostWatch reads it.
	busySince atomic.Int64
	// doomed is set when the connection's host stopped answering: the
	// pool drops the connection instead of handing it out.
	doomed atomic.Bool

	// netConn, network and addr are the connection's socket and its
	// remote address, for the hostWatch's probe and read deadline.
	netConn net.Conn
	network string
	addr    string
}

func newResponseDeadline(cfg Config) *responseDeadline {
	limit := cfg.QueryTimeout + cfg.ConnectionTimeout
	return &responseDeadline{limit: limit, margin: cfg.ConnectionTimeout, slack: min(rearmSlack, limit/4), base: time.Now()}
}

// watchContext wraps the context watcher handler of a new connection so
// that a cancelled context, whose handler moves the read deadline and then
// clears it, leaves the connection without a known deadline: the next
// statement sets one. It also gives the connection its connDeadline.
func (d *responseDeadline) watchContext(conn *pgconn.PgConn, h ctxwatch.Handler) ctxwatch.Handler {
	st := &connDeadline{netConn: conn.Conn()}
	if st.netConn != nil {
		if ra := st.netConn.RemoteAddr(); ra != nil {
			st.network, st.addr = ra.Network(), ra.String()
		}
	}
	conn.CustomData()[connDeadlineKey] = st
	return &forgetDeadlineOnCancel{Handler: h, deadline: st}
}

// stateOf returns conn's connDeadline, nil for a connection the pool did
// not open.
func stateOf(conn *pgx.Conn) *connDeadline {
	st, _ := conn.PgConn().CustomData()[connDeadlineKey].(*connDeadline)
	return st
}

// forgetDeadlineOnCancel is a ctxwatch.Handler that marks its connection's
// deadline unknown whenever the handler it wraps handles a cancellation.
type forgetDeadlineOnCancel struct {
	ctxwatch.Handler
	deadline *connDeadline
}

func (h *forgetDeadlineOnCancel) HandleCancel(ctx context.Context) {
	h.deadline.until.Store(0)
	h.Handler.HandleCancel(ctx)
}

func (h *forgetDeadlineOnCancel) HandleUnwatchAfterCancel() {
	h.Handler.HandleUnwatchAfterCancel()
	h.deadline.until.Store(0)
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

// arm makes sure conn's read deadline is at least its limit away and at
// most the slack more, setting it only when it is not. A busy arm also
// marks the connection as waiting for an answer from now.
func (d *responseDeadline) arm(conn *pgx.Conn, busy bool) {
	pc := conn.PgConn()
	limit := d.limit
	if d.count.Load() > 0 {
		if v, ok := d.overrides.Load(conn); ok {
			limit = v.(time.Duration)
		}
	}
	st, _ := pc.CustomData()[connDeadlineKey].(*connDeadline)
	now := time.Since(d.base)
	need := int64(now + limit)
	if st != nil {
		if busy {
			st.busySince.Store(max(int64(now), 1))
		}
		// A longer limit that ended leaves a deadline too far away; it is
		// brought back too.
		if until := st.until.Load(); until >= need && until <= need+int64(d.slack) {
			return
		}
	}
	nc := pc.Conn()
	if nc == nil {
		return
	}
	deadline := now + limit + d.slack
	_ = nc.SetReadDeadline(d.base.Add(deadline))
	if st != nil {
		st.until.Store(int64(deadline))
	}
}

// TraceQueryStart arms the deadline for a statement.
func (d *responseDeadline) TraceQueryStart(ctx context.Context, conn *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	d.arm(conn, true)
	return ctx
}

// TraceQueryEnd leaves the deadline for the next statement, and marks
// the connection as no longer waiting.
func (d *responseDeadline) TraceQueryEnd(_ context.Context, conn *pgx.Conn, data pgx.TraceQueryEndData) {
	d.idle(conn)
	if data.Err != nil && d.dropReadOnly && hasCode(data.Err, codeReadOnlyTransaction) {
		// A pool that must write was refused a write: the server behind
		// the connection is a standby now, or was made read-only. A
		// primary that becomes a standby restarts, closing its
		// connections, but a proxy such as PgBouncer keeps the client's
		// side open and reconnects it to the demoted server, and forwards
		// no in_hot_standby. The connection is not handed out again; a
		// new one finds the server that takes writes.
		if st := stateOf(conn); st != nil {
			st.doomed.Store(true)
		}
	}
}

// idle marks conn as waiting for no answer.
func (d *responseDeadline) idle(conn *pgx.Conn) {
	if st := stateOf(conn); st != nil {
		st.busySince.Store(0)
	}
}

// TraceBatchStart arms the deadline for a batch.
func (d *responseDeadline) TraceBatchStart(ctx context.Context, conn *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	d.arm(conn, true)
	return ctx
}

// TraceBatchQuery re-arms it, when needed, as each statement of the batch
// answers.
func (d *responseDeadline) TraceBatchQuery(_ context.Context, conn *pgx.Conn, _ pgx.TraceBatchQueryData) {
	d.arm(conn, true)
}

// TraceBatchEnd leaves the deadline for the next statement.
func (d *responseDeadline) TraceBatchEnd(_ context.Context, conn *pgx.Conn, _ pgx.TraceBatchEndData) {
	d.idle(conn)
}

// There is no TracePrepareStart: pgx prepares statements inside Query,
// whose start has armed the deadline.

// TraceCopyFromStart arms the deadline for a COPY.
func (d *responseDeadline) TraceCopyFromStart(ctx context.Context, conn *pgx.Conn, _ pgx.TraceCopyFromStartData) context.Context {
	d.arm(conn, true)
	return ctx
}

// TraceCopyFromEnd leaves the deadline for the next statement.
func (d *responseDeadline) TraceCopyFromEnd(_ context.Context, conn *pgx.Conn, _ pgx.TraceCopyFromEndData) {
	d.idle(conn)
}

// ClearResponseDeadline clears the read deadline that the pool keeps on
// conn between statements (see Config.QueryTimeout), for a caller that
// waits on a connection it took from the pool without running statements,
// such as WaitForNotification after LISTEN. The connection's next
// statement sets the deadline again. A connection of another origin is
// left as it is.
func ClearResponseDeadline(conn *pgx.Conn) {
	pc := conn.PgConn()
	st, ok := pc.CustomData()[connDeadlineKey].(*connDeadline)
	if !ok {
		return
	}
	if nc := pc.Conn(); nc != nil {
		_ = nc.SetReadDeadline(time.Time{})
	}
	st.until.Store(0)
}
