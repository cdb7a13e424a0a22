package txn_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/txn"
)

// wireCounter counts what goes over the connections of a pool.
//
// A round trip is counted when the client writes after having read (or
// first after a reset): the client sends a request, then waits for and
// reads the answer, so each request/answer exchange is one
// read-then-write turn, however many Write and Read calls pgconn splits
// it into. pgconn happens to send each request in a single Write, so
// writes equals round trips today; the turn count stays exact should it
// ever split a request in two.
type wireCounter struct {
	mu         sync.Mutex
	lastRead   bool
	roundTrips int
	writes     int
}

func (c *wireCounter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastRead, c.roundTrips, c.writes = true, 0, 0
}

func (c *wireCounter) counts() (roundTrips, writes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.roundTrips, c.writes
}

type countingConn struct {
	net.Conn
	c *wireCounter
}

func (cc *countingConn) Read(b []byte) (int, error) {
	n, err := cc.Conn.Read(b)
	if n > 0 {
		cc.c.mu.Lock()
		cc.c.lastRead = true
		cc.c.mu.Unlock()
	}
	return n, err
}

func (cc *countingConn) Write(b []byte) (int, error) {
	cc.c.mu.Lock()
	cc.c.writes++
	if cc.c.lastRead {
		cc.c.roundTrips++
		cc.c.lastRead = false
	}
	cc.c.mu.Unlock()
	return cc.Conn.Write(b)
}

func TestRoundTrips(t *testing.T) {
	counter := &wireCounter{}
	pool := newPool(t, fxtest_helpers.NewDatabase(t), func(cfg *pgxpool.Config) {
		singleConn(cfg)
		// A ping on acquire would add a round trip of its own.
		cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
		dial := cfg.ConnConfig.DialFunc
		cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &countingConn{Conn: conn, c: counter}, nil
		}
	})
	// Connect before counting: the startup exchange is no transaction's.
	require.NoError(t, pool.Ping(ctxT(t)))

	work := func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "select 1"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "select 2")
		return err
	}
	measure := func(t *testing.T, run func(ctx context.Context) error) int {
		t.Helper()
		counter.reset()
		require.NoError(t, run(ctxT(t)))
		roundTrips, writes := counter.counts()
		t.Logf("round trips %d, writes %d", roundTrips, writes)
		return roundTrips
	}

	plain := measure(t, func(ctx context.Context) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return work(ctx, tx) })
	})
	require.Equal(t, 4, plain, "BEGIN, two statements, COMMIT")

	for _, tc := range []struct {
		name string
		opts []txn.Option
	}{
		{"no options", nil},
		{"timeout", []txn.Option{txn.Timeout(5 * time.Second)}},
		{"timeout serializable read only", []txn.Option{
			txn.Timeout(5 * time.Second), txn.Isolation(pgx.Serializable), txn.ReadOnly(),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := measure(t, func(ctx context.Context) error { return txn.Run(ctx, pool, work, tc.opts...) })
			assert.Equal(t, plain, got)
		})
	}

	// The check can fail: SET LOCAL as a statement of its own costs one
	// round trip more.
	naive := measure(t, func(ctx context.Context) error {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if _, err := tx.Exec(ctx, "set local statement_timeout = 5000"); err != nil {
			return err
		}
		if err := work(ctx, tx); err != nil {
			return err
		}
		return tx.Commit(ctx)
	})
	assert.Equal(t, plain+1, naive)
}
