package sprocketspg_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// Ping and Status whose statement is on the wire when the caller's
// deadline passes: the proxy between pool and server freezes after the
// pool connected, so the server's answer never comes and only the
// caller's context ends the call.
func TestPingAndStatusDeadlineWhileRunning(t *testing.T) {
	ops := map[string]func(*sprocketspg.Pool, context.Context) error{
		"Ping":   func(p *sprocketspg.Pool, ctx context.Context) error { return p.Ping(ctx) },
		"Status": func(p *sprocketspg.Pool, ctx context.Context) error { return p.Status(ctx).Err },
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			dbURL := fxtest_helpers.NewDatabase(t)
			proxy := newFreezeProxy(t, hostPortOf(t, dbURL))
			pool := newPoolAt(t, withHost(t, dbURL, proxy.Addr()), func(c *sprocketspg.Config) {
				c.MinPoolSize, c.MaxPoolSize = 1, 1
				// pgx gives up on a cancel request that is not answered
				// after this long, which bounds the call.
				c.ConnectionTimeout = 600 * time.Millisecond
			})
			// The one connection was just used, so pgxpool hands it out
			// without a ping of its own: the call's statement is what
			// meets the frozen proxy, not the acquire.
			_, err := pool.Execute(ctxT(t), "SELECT 1")
			require.NoError(t, err, "the proxy forwards")
			before := pool.Stat()
			proxy.Freeze()

			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			began := time.Now()
			err = op(pool, ctx)
			elapsed := time.Since(began)
			t.Logf("after %s: %v", elapsed.Round(time.Millisecond), err)
			// pgx closes the broken connection after a cancel request of
			// its own, which the frozen proxy would hold for 15 s.
			proxy.Close()
			require.Error(t, err)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			assert.GreaterOrEqual(t, elapsed, 190*time.Millisecond)
			assert.Less(t, elapsed, 1500*time.Millisecond)
			after := pool.Stat()
			assert.Equal(t, before.AcquireCount()+1, after.AcquireCount(), "the call got its connection")
			assert.Equal(t, before.CanceledAcquireCount(), after.CanceledAcquireCount(),
				"the deadline did not strike while waiting for a connection")
			assert.NotContains(t, err.Error(), "secret")
		})
	}
}

// Tx.Execute and Tx.Callproc return the context's error themselves, not
// only through what Transaction returns, with the server's 57014 kept.
func TestTxCallsDeadlineWhileRunningMatchesContext(t *testing.T) {
	pool, _ := newPool(t, nil)
	calls := map[string]func(ctx context.Context, tx *sprocketspg.Tx) error{
		"Tx.Execute": func(ctx context.Context, tx *sprocketspg.Tx) error {
			_, err := tx.Execute(ctx, "SELECT pg_sleep(2)")
			return err
		},
		"Tx.Callproc": func(ctx context.Context, tx *sprocketspg.Tx) error {
			_, err := tx.Callproc(ctx, "pg_sleep", 2)
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			var inner error
			began := time.Now()
			outer := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
				inner = call(ctx, tx)
				return inner
			})
			elapsed := time.Since(began)
			t.Logf("after %s: inner %v; Transaction %v", elapsed.Round(time.Millisecond), inner, outer)
			assert.Less(t, elapsed, 1500*time.Millisecond)
			for what, err := range map[string]error{"the call's own error": inner, "Transaction's error": outer} {
				require.Error(t, err, what)
				assert.ErrorIs(t, err, context.DeadlineExceeded, what)
				var pgErr *pgconn.PgError
				if assert.ErrorAs(t, err, &pgErr, "%s still carries the server's error", what) {
					assert.Equal(t, "57014", pgErr.Code, what)
				}
			}
		})
	}
	_, err := pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err, "the connection stayed usable")
}

// pingWatchProxy forwards TCP connections to a target and notes when a
// ping (pgx's "-- ping" statement) goes through. Break resets every
// connection it holds and every one it accepts from then on.
type pingWatchProxy struct {
	connSet
	target string

	broken   atomic.Bool
	lastPing atomic.Int64 // UnixNano of the last ping seen, 0 for none
	pings    atomic.Int32
}

func newPingWatchProxy(t *testing.T, target string) *pingWatchProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &pingWatchProxy{connSet: connSet{l: l}, target: target}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *pingWatchProxy) track(c net.Conn) bool {
	if p.broken.Load() {
		resetConn(c)
		return false
	}
	return p.add(c)
}

// resetConn closes c with a TCP reset.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// Break resets every connection and makes the proxy reset new ones.
func (p *pingWatchProxy) Break() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.broken.Store(true)
	for _, c := range p.conns {
		resetConn(c)
	}
	p.conns = nil
}

func (p *pingWatchProxy) serve() {
	defer p.wg.Done()
	for {
		client, err := p.l.Accept()
		if err != nil {
			return
		}
		if !p.track(client) {
			continue
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			resetConn(client)
			continue
		}
		if !p.track(server) {
			resetConn(client)
			continue
		}
		p.wg.Add(2)
		go p.pipe(server, client, true)
		go p.pipe(client, server, false)
	}
}

func (p *pingWatchProxy) pipe(dst, src net.Conn, fromClient bool) {
	defer p.wg.Done()
	defer func() { _ = dst.Close() }()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if fromClient && bytes.Contains(buf[:n], []byte("-- ping")) {
				p.pings.Add(1)
				p.lastPing.Store(time.Now().UnixNano())
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				resetConn(dst)
			}
			return
		}
	}
}

// The query, not the background ping, finds the replica gone: the
// "read replica unavailable" warning is logged once, with the query's
// error, and the pings that fail after it log nothing more.
//
// The background ping runs every second (replicaCheckInterval in
// reader.go, a constant no option or Config field changes), so the test
// breaks the replica right after a ping has gone through, which leaves
// the query most of a second to notice first.
func TestReaderQueryNoticesOutageFirstLogsOnce(t *testing.T) {
	replicaURL := fxtest_helpers.NewDatabase(t)
	proxy := newPingWatchProxy(t, hostPortOf(t, replicaURL))
	core, logs := observer.New(zapcore.InfoLevel)
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.ReadURL = withHost(t, replicaURL, proxy.addr())
		c.ConnectionTimeout = 2 * time.Second
	}, sprocketspg.WithLogger(zap.New(core)))
	const down = "postgres read replica unavailable; reads go to the primary"

	require.Eventually(t, func() bool { return pool.Reader() != pool }, 5*time.Second, 5*time.Millisecond,
		"the replica is handed out once a ping succeeded")
	reader := pool.Reader()
	_, err := reader.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err, "the replica answers through the proxy")

	// Wait for a ping of the background watch, let its answer come back,
	// then break the replica and query at once.
	seen := proxy.pings.Load()
	require.Eventually(t, func() bool { return proxy.pings.Load() > seen }, 5*time.Second, time.Millisecond,
		"the replica is pinged in the background")
	time.Sleep(50 * time.Millisecond)
	lastPing := time.Unix(0, proxy.lastPing.Load())
	proxy.Break()
	_, queryErr := reader.Execute(ctxT(t), "SELECT 1")
	noticed := time.Now()
	require.Error(t, queryErr)
	t.Logf("the query failed %s after the last ping: %v", noticed.Sub(lastPing).Round(time.Millisecond), queryErr)
	require.True(t, sprocketspg.IsConnectionError(queryErr), "the query could not reach the replica: %v", queryErr)
	require.Less(t, noticed.Sub(lastPing), 900*time.Millisecond, "the query failed before the next ping was due")
	assert.Same(t, pool, pool.Reader(), "reads go to the primary as soon as the query failed")

	// The watch keeps pinging the broken replica; none of its failures
	// logs again.
	time.Sleep(2500 * time.Millisecond)
	warnings := logs.FilterMessage(down).All()
	require.Len(t, warnings, 1, "one warning for the outage")
	w := warnings[0]
	assert.Equal(t, zapcore.WarnLevel, w.Level)
	assert.False(t, w.Time.After(noticed), "logged when the query failed, not by a later ping")
	logged, _ := w.ContextMap()["error"].(string)
	require.NotEmpty(t, logged, "the warning carries an error: %v", w.ContextMap())
	assert.Contains(t, queryErr.Error(), logged, "the warning carries the query's error")
	assert.False(t, strings.HasPrefix(logged, "ping postgres"), "not a ping's error: %s", logged)
	assert.Same(t, pool, pool.Reader())
}
