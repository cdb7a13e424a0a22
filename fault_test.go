package sprocketspg_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// writeResult is the outcome of one write of TestFaultServerRestartUnderLoad.
type writeResult struct {
	key        int64
	began, end time.Time
	err        error
}

func TestFaultServerRestartUnderLoad(t *testing.T) {
	srv := fxtest_helpers.Server(t)
	if srv.Backend() == "url" {
		t.Skip("the test server is an existing one (SPROCKETSPG_TEST_POSTGRES_URL): it cannot be stopped")
	}
	const (
		writers     = 8
		connTimeout = 2 * time.Second
		stopAfter   = 2 * time.Second
		startAfter  = 3500 * time.Millisecond
		runFor      = 6 * time.Second
		recoverIn   = 2 * time.Second
	)
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.ConnectionTimeout = connTimeout
		c.MinPoolSize = 1
		c.MaxPoolSize = writers
	}, sprocketspg.WithLogger(zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))))
	_, err := pool.Execute(ctxT(t), "CREATE TABLE w (id bigint PRIMARY KEY)")
	require.NoError(t, err)

	// Whatever happens below, the server runs again for the tests after
	// this one (and for this test's own cleanup).
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := srv.Start(ctx); err != nil {
			t.Errorf("restart the test server: %v", err)
		}
	})

	var (
		mu      sync.Mutex
		results []writeResult
		wg      sync.WaitGroup
		done    = make(chan struct{})
	)
	begin := time.Now()
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int64(0); ; i++ {
				select {
				case <-done:
					return
				default:
				}
				key := int64(g)*1_000_000 + i
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				r := writeResult{key: key, began: time.Now()}
				r.err = pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
					_, err := tx.Execute(ctx, "INSERT INTO w (id) VALUES ($1)", key)
					return err
				})
				r.end = time.Now()
				cancel()
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
				if r.err != nil {
					time.Sleep(5 * time.Millisecond) // no hot loop against a refusing port
				}
			}
		}()
	}

	time.Sleep(time.Until(begin.Add(stopAfter)))
	stopCalled := time.Now()
	stopCtx, cancelStop := context.WithTimeout(context.Background(), 30*time.Second)
	stopErr := srv.Stop(stopCtx)
	cancelStop()
	stopped := time.Now()
	if stopErr != nil {
		close(done)
		wg.Wait()
		require.NoError(t, stopErr, "stop the test server")
	}

	time.Sleep(time.Until(begin.Add(startAfter)))
	startCalled := time.Now()
	startCtx, cancelStart := context.WithTimeout(context.Background(), time.Minute)
	startErr := srv.Start(startCtx)
	cancelStart()
	back := time.Now()
	if startErr == nil {
		// Keep writing for the full run, and long enough after the server
		// came back to see the writes recover.
		time.Sleep(time.Until(begin.Add(runFor)))
		time.Sleep(time.Until(back.Add(recoverIn + 500*time.Millisecond)))
	}
	close(done)
	wg.Wait()
	require.NoError(t, startErr, "start the test server again")
	t.Logf("server: stop called at %v (stopped at %v), start called at %v (accepting at %v)",
		stopCalled.Sub(begin).Round(time.Millisecond), stopped.Sub(begin).Round(time.Millisecond),
		startCalled.Sub(begin).Round(time.Millisecond), back.Sub(begin).Round(time.Millisecond))

	// Every acknowledged write is in the table.
	ctx := ctxT(t)
	res, err := pool.Execute(ctx, "SELECT id FROM w")
	require.NoError(t, err, "read the table after the restart")
	stored := make(map[int64]bool, len(res.Rows))
	for _, row := range res.Rows {
		stored[row["id"].(int64)] = true
	}

	var (
		acked, lost, failed, committedDespiteError int
		failedOutside                              []string
		unrecognised                               = map[string]int{}
		slowFailures                               []string
		maxFailLatency                             time.Duration
		latencies                                  []time.Duration
		firstSuccessAfterBack                      time.Time
		failedAfterRecovery                        []string
	)
	sort.Slice(results, func(i, j int) bool { return results[i].began.Before(results[j].began) })
	for _, r := range results {
		if r.err == nil {
			acked++
			if !stored[r.key] {
				lost++
			}
			if r.began.After(back) && firstSuccessAfterBack.IsZero() {
				firstSuccessAfterBack = r.end
			}
			continue
		}
		failed++
		if stored[r.key] {
			committedDespiteError++ // the commit's answer was lost: ambiguous, not wrong
		}
		d := r.end.Sub(r.began)
		latencies = append(latencies, d)
		maxFailLatency = max(maxFailLatency, d)
		if d > connTimeout+time.Second {
			slowFailures = append(slowFailures, fmt.Sprintf("%v at +%v: %v", d.Round(time.Millisecond), r.began.Sub(begin).Round(time.Millisecond), r.err))
		}
		if !sprocketspg.IsConnectionError(r.err) {
			unrecognised[r.err.Error()]++
		}
		// A failure is expected only from the moment the server begins to
		// stop until it has been back for recoverIn.
		if r.end.Before(stopCalled) {
			failedOutside = append(failedOutside, fmt.Sprintf("+%v: %v", r.began.Sub(begin).Round(time.Millisecond), r.err))
		}
		if r.began.After(back.Add(recoverIn)) {
			failedAfterRecovery = append(failedAfterRecovery, fmt.Sprintf("+%v: %v", r.began.Sub(begin).Round(time.Millisecond), r.err))
		}
	}
	kinds := map[string]int{}
	for _, r := range results {
		if r.err != nil {
			kinds[errorKind(r.err)]++
		}
	}
	for kind, n := range kinds {
		t.Logf("%5d failed writes: %s", n, kind)
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	pct := func(p float64) time.Duration {
		if len(latencies) == 0 {
			return 0
		}
		return latencies[int(p*float64(len(latencies)-1))].Round(time.Millisecond)
	}
	t.Logf("writes: %d acknowledged, %d failed, %d stored rows; %d failed writes were committed anyway",
		acked, failed, len(stored), committedDespiteError)
	t.Logf("failed-write latency: p50 %v, p90 %v, p99 %v, max %v", pct(0.5), pct(0.9), pct(0.99), maxFailLatency.Round(time.Millisecond))
	if !firstSuccessAfterBack.IsZero() {
		t.Logf("first acknowledged write %v after the server accepted connections again", firstSuccessAfterBack.Sub(back).Round(time.Millisecond))
	}

	assert.Positive(t, acked, "some writes succeeded")
	assert.Positive(t, failed, "the outage made some writes fail")
	assert.Zero(t, lost, "acknowledged writes missing from the table")
	assert.Empty(t, failedOutside, "writes that failed before the server began to stop")
	assert.Empty(t, unrecognised, "errors IsConnectionError does not recognise (text: count)")
	assert.Empty(t, slowFailures, "failed writes that took longer than ConnectionTimeout + 1s")
	if assert.False(t, firstSuccessAfterBack.IsZero(), "no write succeeded after the restart") {
		assert.LessOrEqual(t, firstSuccessAfterBack.Sub(back), recoverIn, "writes succeed again within 2 s of the server being back")
	}
	assert.Empty(t, failedAfterRecovery, "writes started more than 2 s after the server was back still failed")
}

// errorKind is err's text with the numbers that vary (ports, pids, keys,
// durations) taken out, for a histogram of failures.
func errorKind(err error) string {
	var b strings.Builder
	digits := false
	for _, r := range err.Error() {
		if r >= '0' && r <= '9' {
			if !digits {
				b.WriteByte('#')
			}
			digits = true
			continue
		}
		digits = false
		b.WriteRune(r)
	}
	return b.String()
}

func TestFaultBlackHoleStartup(t *testing.T) {
	const (
		password    = "bl4ck-h0le-Secret"
		connTimeout = time.Second
		bound       = connTimeout + time.Second
	)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(blackHole(t)))
	cfg := testConfig(fmt.Sprintf("postgresql://app:%s@%s/appdb?sslmode=disable", password, addr))
	cfg.ConnectionTimeout = connTimeout

	check := func(t *testing.T, err error, elapsed time.Duration) {
		t.Helper()
		t.Logf("failed after %v: %v", elapsed.Round(time.Millisecond), err)
		require.Error(t, err)
		assert.Less(t, elapsed, bound, "start must fail within ConnectionTimeout + 1s")
		assert.Contains(t, err.Error(), addr, "the error names the server")
		assert.NotContains(t, err.Error(), password)
		assert.True(t, sprocketspg.IsConnectionError(err), "IsConnectionError(%v)", err)
		assert.ErrorIs(t, err, sprocketspg.ErrConnectTimeout)
		assert.False(t, errors.Is(err, sprocketspg.ErrInvalidConfig), "not a configuration error: %v", err)
	}

	t.Run("New", func(t *testing.T) {
		began := time.Now()
		pool, err := sprocketspg.New(context.Background(), cfg,
			sprocketspg.WithLogger(zaptest.NewLogger(t, zaptest.Level(zap.DebugLevel))))
		elapsed := time.Since(began)
		if pool != nil {
			pool.Close()
		}
		check(t, err, elapsed)
	})

	t.Run("fx", func(t *testing.T) {
		var pool *sprocketspg.Pool
		app := fxtest.New(t, sprocketspg.Module, fx.Replace(cfg), fx.Populate(&pool))
		require.NoError(t, app.Err())
		began := time.Now()
		err := app.Start(context.Background())
		elapsed := time.Since(began)
		check(t, err, elapsed)
		assert.False(t, pool.IsConnected())
	})
}

// freezeProxy forwards TCP connections to a target until Freeze, after
// which it forwards nothing in either direction while keeping every socket
// open: to both ends it looks like a host that vanished from the network,
// except that its kernel still acknowledges what it receives.
type freezeProxy struct {
	l      net.Listener
	target string

	frozen atomic.Bool
	closed chan struct{}
	wg     sync.WaitGroup

	mu       sync.Mutex
	conns    []net.Conn
	accepted int
}

func newFreezeProxy(t *testing.T, target string) *freezeProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &freezeProxy{l: l, target: target, closed: make(chan struct{})}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.Close)
	return p
}

func (p *freezeProxy) Addr() string { return p.l.Addr().String() }

// Freeze stops all forwarding; bytes read from either side are held.
func (p *freezeProxy) Freeze() { p.frozen.Store(true) }

// Accepted is the number of client connections so far.
func (p *freezeProxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Close closes the listener and every connection and waits for the
// forwarding goroutines.
func (p *freezeProxy) Close() {
	select {
	case <-p.closed:
		return
	default:
	}
	close(p.closed)
	_ = p.l.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *freezeProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.closed:
		_ = c.Close()
		return false
	default:
	}
	p.conns = append(p.conns, c)
	return true
}

func (p *freezeProxy) serve() {
	defer p.wg.Done()
	for {
		client, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.accepted++
		p.mu.Unlock()
		if !p.track(client) {
			return
		}
		if p.frozen.Load() {
			continue // accepted, never answered
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		if !p.track(server) {
			return
		}
		p.wg.Add(2)
		go p.pipe(server, client)
		go p.pipe(client, server)
	}
}

// pipe copies src to dst until either fails or the proxy closes; while
// frozen it holds what it read.
func (p *freezeProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		for p.frozen.Load() {
			select {
			case <-p.closed:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			_ = dst.Close() // the other end sees the close
			return
		}
	}
}

// hostPortOf returns the host:port of a postgres:// URL.
func hostPortOf(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	require.NotEmpty(t, u.Port(), "the test server listens on TCP: %s", u.Host)
	return u.Host
}

// withHost returns raw with its host:port replaced.
func withHost(t *testing.T, raw, hostPort string) string {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	u.Host = hostPort
	return u.String()
}

func TestFaultProxyStopsForwarding(t *testing.T) {
	const (
		queryTimeout = 2 * time.Second
		bound        = 8 * time.Second
	)
	dbURL := fxtest_helpers.NewDatabase(t)
	proxy := newFreezeProxy(t, hostPortOf(t, dbURL))
	pool := newPoolAt(t, withHost(t, dbURL, proxy.Addr()), func(c *sprocketspg.Config) {
		c.QueryTimeout = queryTimeout
		c.ConnectionTimeout = 2 * time.Second
		// Two connections: one runs the long query, the other is idle
		// when the proxy freezes, so SELECT 1 goes over an established
		// connection rather than a new one.
		c.MinPoolSize = 2
		c.MaxPoolSize = 2
	})
	require.GreaterOrEqual(t, pool.Stat().TotalConns(), int32(2))
	_, err := pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err, "the proxy forwards")

	type outcome struct {
		err     error
		elapsed time.Duration
	}
	run := func(sql string) <-chan outcome {
		ch := make(chan outcome, 1)
		go func() {
			began := time.Now()
			_, err := pool.Execute(context.Background(), sql)
			ch <- outcome{err, time.Since(began)}
		}()
		return ch
	}

	sleeping := run("SELECT pg_sleep(1)")
	require.Eventually(t, func() bool { return pool.Stat().AcquiredConns() == 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(100 * time.Millisecond) // the query is on the wire
	proxy.Freeze()
	frozenAt := time.Now()
	one := run("SELECT 1")

	pending := map[string]<-chan outcome{"SELECT 1": one, "SELECT pg_sleep(1)": sleeping}
	wait := func(name string) {
		t.Helper()
		select {
		case o := <-pending[name]:
			delete(pending, name)
			t.Logf("%s returned after %v (%v since the freeze): %v", name, o.elapsed.Round(time.Millisecond),
				time.Since(frozenAt).Round(time.Millisecond), o.err)
			assert.Error(t, o.err, "%s cannot have succeeded through a frozen proxy", name)
			if o.err != nil {
				assert.True(t, sprocketspg.IsConnectionError(o.err) || sprocketspg.IsQueryTimeout(o.err),
					"%s: neither a connection error nor a timeout: %v", name, o.err)
			}
		case <-time.After(time.Until(frozenAt.Add(bound))):
			t.Errorf("%s still running %v after the proxy froze (QueryTimeout %v): a query hangs when the server host stops answering",
				name, bound, queryTimeout)
		}
	}
	wait("SELECT 1")
	wait("SELECT pg_sleep(1)")

	// Let anything still hanging fail, so the test leaves no goroutine.
	proxy.Close()
	for name, ch := range pending {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Errorf("%s still hangs after its connection was closed", name)
		}
	}
	t.Logf("proxy accepted %d connections", proxy.Accepted())
}

func TestFaultGracefulShutdown(t *testing.T) {
	t.Run("in-flight queries complete", func(t *testing.T) {
		const n = 20
		url := fxtest_helpers.NewDatabase(t)
		cfg := testConfig(url)
		cfg.MaxPoolSize = n
		var pool *sprocketspg.Pool
		app := fxtest.New(t, sprocketspg.Module, fx.Replace(cfg), fx.Populate(&pool))
		app.RequireStart()

		errs := make(chan error, n)
		for range n {
			go func() {
				_, err := pool.Execute(context.Background(), "SELECT pg_sleep(0.3)")
				errs <- err
			}()
		}
		require.Eventually(t, func() bool { return pool.Stat().AcquiredConns() == n }, 5*time.Second, time.Millisecond)

		stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		began := time.Now()
		err := app.Stop(stopCtx)
		t.Logf("stop took %v", time.Since(began).Round(time.Millisecond))
		require.NoError(t, err)
		assert.False(t, pool.IsConnected())
		for i := range n {
			select {
			case err := <-errs:
				assert.NoError(t, err, "query %d", i)
			case <-time.After(5 * time.Second):
				t.Fatalf("query %d never returned", i)
			}
		}
		assertNoBackends(t, url)
	})

	t.Run("stop deadline passes", func(t *testing.T) {
		url := fxtest_helpers.NewDatabase(t)
		var pool *sprocketspg.Pool
		app := fxtest.New(t, sprocketspg.Module, fx.Replace(testConfig(url)), fx.Populate(&pool))
		app.RequireStart()

		const n = 3
		errs := make(chan error, n)
		for range n {
			go func() {
				_, err := pool.Execute(context.Background(), "SELECT pg_sleep(1)")
				errs <- err
			}()
		}
		require.Eventually(t, func() bool { return pool.Stat().AcquiredConns() == n }, 5*time.Second, time.Millisecond)

		stopCtx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		began := time.Now()
		err := app.Stop(stopCtx)
		elapsed := time.Since(began)
		t.Logf("stop returned after %v: %v", elapsed.Round(time.Millisecond), err)
		require.Error(t, err)
		assert.Less(t, elapsed, time.Second)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Contains(t, err.Error(), "still in use")
		assert.Contains(t, err.Error(), fmt.Sprintf("%d connections", n))
		assert.False(t, pool.IsConnected())

		for i := range n {
			select {
			case err := <-errs:
				assert.NoError(t, err, "query %d finishes after the stop deadline", i)
			case <-time.After(5 * time.Second):
				t.Fatalf("query %d never returned", i)
			}
		}
		assertNoBackends(t, url)
	})
}

func TestFaultPoolExhaustion(t *testing.T) {
	const (
		callers  = 100
		poolSize = 5
	)
	pool, _ := newPool(t, func(c *sprocketspg.Config) {
		c.MinPoolSize = 1
		c.MaxPoolSize = poolSize
	}, sprocketspg.WithLogger(zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))))

	var (
		wg        sync.WaitGroup
		ok        atomic.Int32
		deadline  atomic.Int32
		cancelled atomic.Int32
		mu        sync.Mutex
		other     []string
	)
	began := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, err := pool.Execute(ctx, "SELECT pg_sleep(0.2)")
			var pgErr *pgconn.PgError
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, context.DeadlineExceeded):
				deadline.Add(1)
			case errors.As(err, &pgErr) && pgErr.Code == "57014":
				cancelled.Add(1)
			default:
				mu.Lock()
				other = append(other, err.Error())
				mu.Unlock()
			}
		}()
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()
	select {
	case <-allDone:
	case <-time.After(15 * time.Second):
		t.Fatalf("deadlock: callers still waiting 15 s after starting (ok %d, deadline %d, cancelled %d)",
			ok.Load(), deadline.Load(), cancelled.Load())
	}
	t.Logf("%d callers returned within %v: %d ok, %d deadline exceeded, %d cancelled by the server, %d other",
		callers, time.Since(began).Round(time.Millisecond), ok.Load(), deadline.Load(), cancelled.Load(), len(other))
	assert.Empty(t, other, "errors that are neither the context's deadline nor a query cancellation")
	assert.Positive(t, ok.Load(), "the first callers got a connection in time")

	require.Eventually(t, func() bool { return pool.Stat().AcquiredConns() == 0 }, 10*time.Second, 5*time.Millisecond,
		"connections still acquired: %d", pool.Stat().AcquiredConns())
	assert.LessOrEqual(t, pool.Stat().TotalConns(), int32(poolSize))

	// The pool is healthy: as many concurrent queries as it has connections.
	errs := make(chan error, poolSize)
	for range poolSize {
		go func() {
			_, err := pool.Execute(ctxT(t), "SELECT 1")
			errs <- err
		}()
	}
	for range poolSize {
		select {
		case err := <-errs:
			assert.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("SELECT 1 hangs after the pool was exhausted")
		}
	}
	// And a second round, once the first round's cancel requests (if any
	// arrive late) can no longer matter.
	for range 2 * poolSize {
		_, err := pool.Execute(ctxT(t), "SELECT 1")
		assert.NoError(t, err)
	}
}
