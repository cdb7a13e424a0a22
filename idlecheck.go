package sprocketspg

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// idleChecks finds connections that the server closed, or wrote to, while
// they sat idle in the pool, so that pgxpool pings (and so discards) them
// before a caller gets one. A server that shuts down or restarts sends
// every idle backend's client a FATAL error and closes the socket; without
// this check each such connection would hand one caller a "terminating
// connection due to administrator command" error.
//
// The check is a non-blocking peek at the socket (one system call, no
// allocation) where the platform offers it; pgxpool's own rule, a ping
// for connections idle for more than a second, still applies.
// minPeekIdle is how long a connection must have been idle for the peek.
const minPeekIdle = time.Millisecond

type idleChecks struct {
	probes sync.Map // *pgx.Conn -> *idleProbe
}

func (c *idleChecks) afterConnect(_ context.Context, conn *pgx.Conn) error {
	if p := newIdleProbe(conn.PgConn().Conn()); p != nil {
		c.probes.Store(conn, p)
	}
	return nil
}

func (c *idleChecks) beforeClose(conn *pgx.Conn) {
	c.probes.Delete(conn)
}

// shouldPing is pgxpool's ShouldPing: pgxpool's default rule, or data (or
// the end of the stream) waiting on a connection nobody has been reading.
func (c *idleChecks) shouldPing(_ context.Context, params pgxpool.ShouldPingParams) bool {
	if params.IdleDuration > time.Second {
		return true
	}
	// A connection handed back out within a millisecond, as under load,
	// is not peeked at: the system call would be paid on every query
	// exactly when queries are most frequent, for a window too short to
	// matter.
	if params.IdleDuration < minPeekIdle {
		return false
	}
	v, ok := c.probes.Load(params.Conn)
	return ok && v.(*idleProbe).pending()
}
