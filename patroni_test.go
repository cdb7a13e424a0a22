package sprocketspg_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// The settings the README's failover section gives an HA setup.
const (
	haHostConnectTimeout = time.Second
	haWriters            = 8
)

// TestPatroni runs the module against a real three-node Patroni cluster
// (etcd, Patroni, PostgreSQL 15, synchronous_mode) and measures how fast
// writes come back when the leader is killed, switched over or frozen,
// that no acknowledged write is lost, that the old leader is never
// written to once it is back as a replica, and that reads keep going.
// The figures it logs are the README's.
func TestPatroni(t *testing.T) {
	began := time.Now()
	cluster := fxtest_helpers.StartPatroniCluster(t, 3, fxtest_helpers.WithSynchronousMode())
	t.Logf("three-node cluster started in %v", time.Since(began).Round(100*time.Millisecond))

	writeURL := cluster.URL("postgres", "target_session_attrs=read-write")
	admin, err := pgx.Connect(ctxT(t), writeURL)
	require.NoError(t, err)
	_, err = admin.Exec(ctxT(t), "CREATE TABLE writes (writer int, n int, PRIMARY KEY (writer, n))")
	require.NoError(t, err)
	require.NoError(t, admin.Close(ctxT(t)))

	newHAPool := func(t *testing.T, change func(*sprocketspg.Config)) *sprocketspg.Pool {
		return newPoolAt(t, writeURL, func(c *sprocketspg.Config) {
			c.HostConnectTimeout = haHostConnectTimeout
			c.ConnectionTimeout = 5 * time.Second
			c.QueryTimeout = 60 * time.Second // the default: the bounds below do not come from it
			c.MinPoolSize, c.MaxPoolSize = haWriters, haWriters
			if change != nil {
				change(c)
			}
		})
	}
	port := func(i int) int32 {
		_, p, err := net.SplitHostPort(cluster.Address(i))
		require.NoError(t, err)
		n, err := strconv.Atoi(p)
		require.NoError(t, err)
		return int32(n)
	}

	t.Run("frozen leader", func(t *testing.T) {
		pool := newHAPool(t, nil)
		w := startWrites(t, pool)
		time.Sleep(time.Second)
		old := cluster.Leader(t)
		frozenAt := time.Now()
		cluster.Freeze(t, old)
		// A write that began before every process of the node stopped may
		// have been answered by it; none that began later can be.
		stoppedAt := time.Now()
		leader := cluster.WaitLeader(t, old)
		failover := time.Since(frozenAt)
		first := w.waitFirstOn(t, port(leader), frozenAt)
		inFlight := w.slowestFailureStartedBefore(frozenAt.Add(100*time.Millisecond), frozenAt)

		cluster.Thaw(t, old)
		thawedAt := time.Now()
		// Writes go on while the old leader finds it lost the lock and
		// comes back as a replica.
		time.Sleep(3 * time.Second)
		w.stop()

		t.Logf("statements in flight at the freeze failed within %v of it; Patroni named a new leader %v after the freeze; first write on it %v after the freeze",
			inFlight.Round(10*time.Millisecond), failover.Round(10*time.Millisecond), first.Sub(frozenAt).Round(10*time.Millisecond))
		w.report(t, frozenAt)
		assert.LessOrEqual(t, inFlight, 3*haHostConnectTimeout, "in-flight statements fail within 3 × HostConnectTimeout")
		assert.LessOrEqual(t, first.Sub(frozenAt), failover+haHostConnectTimeout+time.Second,
			"new connections do not wait out ConnectionTimeout on the frozen host")
		assert.Zero(t, w.countOn(port(old), stoppedAt), "no write reached the old leader after the freeze, frozen or thawed")
		w.assertNoneLost(t, pool)

		cluster.WaitHealthy(t)
		assert.NotEqual(t, old, cluster.Leader(t), "the old leader came back as a replica")
		t.Logf("old leader back as a replica %v after the thaw", time.Since(thawedAt).Round(100*time.Millisecond))
		replica, err := pgx.Connect(ctxT(t), cluster.NodeURL(old, "postgres"))
		require.NoError(t, err)
		defer replica.Close(context.Background())
		var inRecovery bool
		require.NoError(t, replica.QueryRow(ctxT(t), "SELECT pg_is_in_recovery()").Scan(&inRecovery))
		assert.True(t, inRecovery)
	})

	t.Run("leader killed", func(t *testing.T) {
		pool := newHAPool(t, nil)
		ready := watchReadyz(t, pool)
		w := startWrites(t, pool)
		time.Sleep(time.Second)
		old := cluster.Leader(t)
		killedAt := time.Now()
		cluster.Kill(t, old)
		// A write that began before every process of the node was gone
		// may have been answered by it; none that began later can be.
		deadAt := time.Now()
		leader := cluster.WaitLeader(t, old)
		failover := time.Since(killedAt)
		first := w.waitFirstOn(t, port(leader), killedAt)
		time.Sleep(500 * time.Millisecond)
		var readyAgain time.Time
		assert.Eventually(t, func() bool {
			readyAgain = ready.firstOKAfter(killedAt)
			return !readyAgain.IsZero()
		}, 5*time.Second, 20*time.Millisecond, "/readyz answers 200 again")
		ready.stop()

		t.Logf("Patroni named a new leader %v after the kill; first write on it %v after the kill; /readyz 200 again %v after the kill",
			failover.Round(10*time.Millisecond), first.Sub(killedAt).Round(10*time.Millisecond), readyAgain.Sub(killedAt).Round(10*time.Millisecond))
		w.report(t, killedAt)
		assert.LessOrEqual(t, first.Sub(killedAt), failover+time.Second, "writes resume within Patroni's failover time plus 1 s")
		assert.True(t, ready.sawUnavailable(killedAt), "/readyz was 503 while no primary answered")
		assert.LessOrEqual(t, readyAgain.Sub(first), time.Second, "/readyz is 200 within 1 s of the new primary taking writes")

		// The old leader comes back, as a replica, while the writes go on.
		cluster.Restart(t, old)
		time.Sleep(time.Second)
		w.stop()
		assert.Zero(t, w.countOn(port(old), deadAt), "no write reached the old leader once it was back")
		w.assertNoneLost(t, pool)
		cluster.WaitHealthy(t)
	})

	t.Run("read pool", func(t *testing.T) {
		pool := newHAPool(t, func(c *sprocketspg.Config) {
			c.ReadURL = cluster.URL("postgres", "target_session_attrs=standby")
		})
		r := startReads(t, pool)
		time.Sleep(time.Second)
		old := cluster.Leader(t)
		killedAt := time.Now()
		cluster.Kill(t, old)
		leader := cluster.WaitLeader(t, old)
		time.Sleep(2 * time.Second)
		fromStandby, fromPrimary, failed, gap := r.since(killedAt)
		t.Logf("through the failover: %d reads from a standby, %d from the primary, %d failed; longest pause %v",
			fromStandby, fromPrimary, failed, gap.Round(10*time.Millisecond))
		assert.Positive(t, fromStandby, "reads kept going to a standby")
		assert.LessOrEqual(t, gap, time.Second, "reads kept being served through the failover")

		// With no replica left, reads fall back to the primary.
		var replicas []int
		for i := range cluster.Nodes() {
			if i != old && i != leader {
				replicas = append(replicas, i)
			}
		}
		require.Len(t, replicas, 1, "one replica is left after the kill")
		goneAt := time.Now()
		cluster.Kill(t, replicas[0])
		require.Eventually(t, func() bool {
			_, fromPrimary, _, _ := r.since(goneAt)
			return fromPrimary > 0
		}, 10*time.Second, 20*time.Millisecond, "reads fall back to the primary when no replica is left")
		r.stop()
		_, fromPrimary, failed, gap = r.since(goneAt)
		t.Logf("without replicas: %d reads from the primary, %d failed; longest pause %v", fromPrimary, failed, gap.Round(10*time.Millisecond))

		cluster.Restart(t, old)
		cluster.Restart(t, replicas[0])
		cluster.WaitHealthy(t)
	})
	t.Run("switchover", func(t *testing.T) {
		pool := newHAPool(t, nil)
		w := startWrites(t, pool)
		time.Sleep(time.Second)
		old := cluster.Leader(t)
		promoted := watchPromotion(t, cluster, old)
		askedAt := time.Now()
		leader := cluster.Switchover(t, -1)
		done := time.Since(askedAt)
		first := w.waitFirstOn(t, port(leader), askedAt)
		time.Sleep(500 * time.Millisecond)
		w.stop()
		gap := w.longestGap(askedAt.Add(-time.Second))
		promotedAt := promoted()
		lastOnOld := w.lastOn(port(old))

		t.Logf("switchover from node %d to %d returned after %v; last write on the old leader %v after the request, the new one took writes at %v, first write on it %v",
			old, leader, done.Round(10*time.Millisecond), lastOnOld.Sub(askedAt).Round(10*time.Millisecond),
			promotedAt.Sub(askedAt).Round(10*time.Millisecond), first.Sub(askedAt).Round(10*time.Millisecond))
		t.Logf("longest pause between acknowledged writes %v, of which Patroni's (last write on the old leader to the new one taking writes) %v and the pool's %v",
			gap.Round(10*time.Millisecond), promotedAt.Sub(lastOnOld).Round(10*time.Millisecond), first.Sub(promotedAt).Round(10*time.Millisecond))
		w.report(t, askedAt)
		assert.LessOrEqual(t, first.Sub(promotedAt), 500*time.Millisecond, "writes resume as soon as the new primary takes them")
		assert.LessOrEqual(t, gap, 3*time.Second, "writes resume within 3 s of the last one on the old leader")
		w.assertNoneLost(t, pool)
		cluster.WaitHealthy(t)
	})

}

// loops runs goroutines that each repeat their work until stop, which
// the test's cleanup also calls.
type loops struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// start runs n goroutines of fn(i, ctx); fn returns when ctx ends.
func (l *loops) start(t *testing.T, n int, fn func(i int, ctx context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	for i := range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			fn(i, ctx)
		}()
	}
	t.Cleanup(l.stop)
}

// stop ends the goroutines and waits for them.
func (l *loops) stop() {
	l.cancel()
	l.wg.Wait()
}

// haWrites is the record of writers that insert rows through a pool, each
// row numbered by its writer, until stopped.
type haWrites struct {
	loops

	mu       sync.Mutex
	acked    []haAck
	failures []haFailure
}

type haAck struct {
	writer, n int
	port      int32
	began, at time.Time
}

type haFailure struct {
	began, ended time.Time
	err          error
}

// startWrites starts haWriters writers on pool.
func startWrites(t *testing.T, pool *sprocketspg.Pool) *haWrites {
	t.Helper()
	// Each test's writers number their rows from 1 again.
	_, err := pool.Execute(ctxT(t), "TRUNCATE writes")
	require.NoError(t, err)
	w := &haWrites{}
	w.start(t, haWriters, func(writer int, ctx context.Context) {
		for n := 1; ctx.Err() == nil; n++ {
			began := time.Now()
			// No deadline of the test's own: how long a write can
			// hang is what the module must bound.
			res, err := pool.Execute(context.WithoutCancel(ctx),
				"INSERT INTO writes (writer, n) VALUES ($1, $2) RETURNING inet_server_port() AS port", writer, n)
			now := time.Now()
			w.mu.Lock()
			if err == nil {
				w.acked = append(w.acked, haAck{writer: writer, n: n, port: res.Row["port"].(int32), began: began, at: now})
			} else {
				w.failures = append(w.failures, haFailure{began: began, ended: now, err: err})
			}
			w.mu.Unlock()
			if err != nil {
				time.Sleep(5 * time.Millisecond)
			}
		}
	})
	return w
}

// waitFirstOn waits for the first write acknowledged after since by the
// server on port, and returns when it was acknowledged.
func (w *haWrites) waitFirstOn(t *testing.T, port int32, since time.Time) time.Time {
	t.Helper()
	var first time.Time
	require.Eventually(t, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, a := range w.acked {
			if a.port == port && a.at.After(since) && (first.IsZero() || a.at.Before(first)) {
				first = a.at
			}
		}
		return !first.IsZero()
	}, 60*time.Second, 10*time.Millisecond, "no write reached the new leader within 60 s")
	return first
}

// longestGap is the longest time between two acknowledged writes after
// from.
func (w *haWrites) longestGap(from time.Time) time.Duration {
	w.mu.Lock()
	var times []time.Time
	for _, a := range w.acked {
		if a.at.After(from) {
			times = append(times, a.at)
		}
	}
	w.mu.Unlock()
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	var gap time.Duration
	for i := 1; i < len(times); i++ {
		gap = max(gap, times[i].Sub(times[i-1]))
	}
	return gap
}

// slowestFailureStartedBefore is how long after at the last of the writes
// that began before cutoff and failed ended.
func (w *haWrites) slowestFailureStartedBefore(cutoff, at time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var slowest time.Duration
	for _, f := range w.failures {
		if f.began.Before(cutoff) && f.ended.After(at) {
			slowest = max(slowest, f.ended.Sub(at))
		}
	}
	return slowest
}

// lastOn is when the server on port last acknowledged a write.
func (w *haWrites) lastOn(port int32) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	var last time.Time
	for _, a := range w.acked {
		if a.port == port && a.at.After(last) {
			last = a.at
		}
	}
	return last
}

// watchPromotion polls every node but old, each over a connection of its
// own, until one is out of recovery; the returned function waits for
// that and says when it was first seen.
func watchPromotion(t *testing.T, cluster *fxtest_helpers.PatroniCluster, old int) func() time.Time {
	t.Helper()
	var conns []*pgx.Conn
	for i := range cluster.Nodes() {
		if i == old {
			continue
		}
		c, err := pgx.Connect(ctxT(t), cluster.NodeURL(i, "postgres"))
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		conns = append(conns, c)
	}
	seen := make(chan time.Time, 1)
	go func() {
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			for _, c := range conns {
				var inRecovery bool
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
				cancel()
				if err == nil && !inRecovery {
					seen <- time.Now()
					return
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
		close(seen)
	}()
	return func() time.Time {
		at, ok := <-seen
		require.True(t, ok, "no node left recovery within a minute")
		return at
	}
}

// countOn counts the writes that began after since and that the server
// on port acknowledged.
func (w *haWrites) countOn(port int32, since time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, a := range w.acked {
		if a.port == port && a.began.After(since) {
			n++
		}
	}
	return n
}

// report logs the writes since from and their failures by kind.
func (w *haWrites) report(t *testing.T, from time.Time) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	kinds := map[string]int{}
	for _, f := range w.failures {
		if f.ended.After(from) {
			kinds[errorKind(f.err)]++
		}
	}
	acked := 0
	for _, a := range w.acked {
		if a.at.After(from) {
			acked++
		}
	}
	t.Logf("%d writes acknowledged since the event, %d failed", acked, len(w.failures))
	for k, n := range kinds {
		t.Logf("  %4d× %s", n, k)
	}
}

// assertNoneLost checks that every acknowledged write is on the primary
// pool now writes to.
func (w *haWrites) assertNoneLost(t *testing.T, pool *sprocketspg.Pool) {
	t.Helper()
	res, err := pool.Execute(ctxT(t), "SELECT writer, n FROM writes")
	require.NoError(t, err)
	stored := make(map[[2]int]bool, len(res.Rows))
	for _, row := range res.Rows {
		stored[[2]int{int(row["writer"].(int32)), int(row["n"].(int32))}] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	lost := 0
	for _, a := range w.acked {
		if !stored[[2]int{a.writer, a.n}] {
			lost++
		}
	}
	t.Logf("%d acknowledged writes in all, %d rows stored, %d acknowledged writes lost", len(w.acked), len(stored), lost)
	assert.Zero(t, lost, "no acknowledged write is lost")
	assert.NotEmpty(t, w.acked)
}

// haReads is the record of readers that read through pool.Reader().
type haReads struct {
	loops

	mu    sync.Mutex
	reads []haRead
}

type haRead struct {
	at      time.Time
	standby bool
	err     error
}

func startReads(t *testing.T, pool *sprocketspg.Pool) *haReads {
	t.Helper()
	r := &haReads{}
	r.start(t, 4, func(_ int, ctx context.Context) {
		for ctx.Err() == nil {
			res, err := pool.Reader().Execute(context.WithoutCancel(ctx), "SELECT pg_is_in_recovery() AS standby")
			read := haRead{at: time.Now(), err: err}
			if err == nil {
				read.standby = res.Row["standby"].(bool)
			}
			r.mu.Lock()
			r.reads = append(r.reads, read)
			r.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	})
	return r
}

// since counts the reads after from and the longest time between two
// that succeeded.
func (r *haReads) since(from time.Time) (fromStandby, fromPrimary, failed int, gap time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var last time.Time
	for _, read := range r.reads {
		if !read.at.After(from) {
			continue
		}
		switch {
		case read.err != nil:
			failed++
			continue
		case read.standby:
			fromStandby++
		default:
			fromPrimary++
		}
		if !last.IsZero() {
			gap = max(gap, read.at.Sub(last))
		}
		last = read.at
	}
	return fromStandby, fromPrimary, failed, gap
}

// readyzWatch polls the pool's /readyz every 20 ms.
type readyzWatch struct {
	loops

	mu      sync.Mutex
	answers []readyzAnswer
}

type readyzAnswer struct {
	at   time.Time
	code int
}

func watchReadyz(t *testing.T, pool *sprocketspg.Pool) *readyzWatch {
	t.Helper()
	srv := httptest.NewServer(sprocketspg.NewChecker(pool).ReadinessHandler())
	t.Cleanup(srv.Close)
	r := &readyzWatch{}
	r.start(t, 1, func(_ int, ctx context.Context) {
		for ctx.Err() == nil {
			code := 0
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				code = resp.StatusCode
				_ = resp.Body.Close()
			}
			r.mu.Lock()
			r.answers = append(r.answers, readyzAnswer{at: time.Now(), code: code})
			r.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	})
	return r
}

// sawUnavailable reports whether /readyz answered 503 after from.
func (r *readyzWatch) sawUnavailable(from time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.answers {
		if a.at.After(from) && a.code == http.StatusServiceUnavailable {
			return true
		}
	}
	return false
}

// firstOKAfter is when /readyz first answered 200 after its last other
// answer following from; zero when it has not yet.
func (r *readyzWatch) firstOKAfter(from time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	var lastDown, firstUp time.Time
	for _, a := range r.answers {
		if a.at.After(from) && a.code != http.StatusOK {
			lastDown = a.at
		}
	}
	for _, a := range r.answers {
		if a.at.After(lastDown) && a.code == http.StatusOK {
			firstUp = a.at
			break
		}
	}
	return firstUp
}
