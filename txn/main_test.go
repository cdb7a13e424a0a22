package txn_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

func TestMain(m *testing.M) { os.Exit(fxtest_helpers.RunTests(m)) }

// connDefaultTimeout is the statement_timeout test pools give their
// connections, so that a test can tell it from a transaction's own.
const connDefaultTimeout = "30s"

// newPool opens a pool on url, set up as sprocketspg sets up its own (a
// connection statement_timeout, cancel requests on a context's end), with
// change applied last, and closes it when the test ends.
func newPool(tb testing.TB, url string, change func(*pgxpool.Config)) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(tb, err)
	cfg.MaxConns = 4
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = connDefaultTimeout
	cfg.ConnConfig.BuildContextWatcherHandler = func(conn *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: conn, DeadlineDelay: 5 * time.Second}
	}
	if change != nil {
		change(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(tb, err)
	tb.Cleanup(pool.Close)
	return pool
}

// singleConn makes a pool of one connection, so every transaction of a
// test shares it.
func singleConn(cfg *pgxpool.Config) {
	cfg.MaxConns = 1
	cfg.MinConns = 0
}

func ctxT(tb testing.TB) context.Context {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// backendPID returns the server process of a pool connection; with a pool
// of one connection, the same PID before and after shows the connection
// was kept.
func backendPID(t *testing.T, pool *pgxpool.Pool) uint32 {
	t.Helper()
	conn, err := pool.Acquire(ctxT(t))
	require.NoError(t, err)
	defer conn.Release()
	return conn.Conn().PgConn().PID()
}

// requireClean checks that no connection is out of pool and that an idle
// one is outside any transaction, with the connection's own
// statement_timeout.
func requireClean(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	require.Zero(t, pool.Stat().AcquiredConns(), "connections still acquired")
	conn, err := pool.Acquire(ctxT(t))
	require.NoError(t, err)
	defer conn.Release()
	require.Equal(t, byte('I'), conn.Conn().PgConn().TxStatus(), "connection left in a transaction")
	var inTx bool
	// Outside a transaction each statement is its own, so now() is its
	// start time; asked with the simple protocol, since the separate
	// messages of the extended one can see two different times.
	require.NoError(t, conn.QueryRow(ctxT(t), "select now() <> statement_timestamp()", pgx.QueryExecModeSimpleProtocol).Scan(&inTx))
	require.False(t, inTx, "connection left in a transaction")
	var timeout string
	require.NoError(t, conn.QueryRow(ctxT(t), "show statement_timeout").Scan(&timeout))
	require.Equal(t, connDefaultTimeout, timeout)
}

// count returns the rows of table.
func count(t *testing.T, pool *pgxpool.Pool, table string) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(ctxT(t), "select count(*) from "+table).Scan(&n))
	return n
}

// sqlState returns the SQLSTATE of err, or "" when it has none.
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}
