package health

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Status is the outcome of a check, named as in the IETF health check
// draft.
type Status string

const (
	// StatusPass means the database answered a ping within the timeout.
	StatusPass Status = "pass"
	// StatusWarn means the database is usable but under strain: every
	// connection of the pool is in use. The service stays ready.
	StatusWarn Status = "warn"
	// StatusFail means the database could not be reached, or the service
	// is starting or stopping.
	StatusFail Status = "fail"
)

// Report is the result of one check.
type Report struct {
	// Status is pass, warn or fail.
	Status Status
	// Available is true for pass and warn: the database can serve
	// queries, as the Python original's postgres_status() reported it.
	Available bool
	// Stats is the pool's state as the check last saw it: after the ping,
	// or before it when the pool was saturated and no ping was made.
	Stats Stats
	// Latency is how long the ping took, including the wait for a
	// connection; zero when no ping was made.
	Latency time.Duration
	// Error says why Status is not pass; empty for pass. Anything in it
	// that looks like a password is masked.
	Error string
	// Time is when the check began, by the Checker's clock.
	Time time.Time
	// Replica is the read replica's own result when one was given with
	// WithReplica; nil otherwise.
	Replica *Report
}

// Checker checks a Database and serves the results over HTTP. Its
// methods are safe for concurrent use.
type Checker struct {
	db          Database
	replica     Database
	timeout     time.Duration
	window      time.Duration
	now         func() time.Time
	logger      *zap.Logger
	application string
	environment string
	version     string

	ready atomic.Bool

	// drainDelay is how long Drain waits; drainUntil, guarded by mu, is
	// when the first Drain's wait ends (zero before any).
	drainDelay time.Duration
	drainUntil time.Time

	mu sync.Mutex
	// gen counts readiness changes, so that a result obtained across one
	// is neither cached nor reused: a ping that failed while the pool was
	// starting says nothing about the started pool.
	gen        uint64
	cached     Report
	cachedGen  uint64
	hasCached  bool
	flight     *flight
	lastStatus Status
}

// flight is a check in progress, which concurrent callers wait for
// instead of pinging again.
type flight struct {
	gen  uint64
	done chan struct{}
	// report and abandoned are written before done is closed.
	report Report
	// abandoned is set when the caller running the check left before it
	// finished; its failure is the caller's, not the database's, so
	// waiters check again.
	abandoned bool
}

// NewChecker returns a Checker of db, which must not be nil. It does no
// I/O; it reads $SERVICE, $ENVIRONMENT and $VERSION for names not given as
// options. The Checker is not ready until SetReady(true) is called.
func NewChecker(db Database, opts ...Option) *Checker {
	o := options{
		cacheWindow: DefaultCacheWindow,
		timeout:     DefaultTimeout,
		now:         time.Now,
		logger:      zap.NewNop(),
	}
	for _, opt := range opts {
		opt.apply(&o)
	}
	return &Checker{
		db:          db,
		replica:     o.replica,
		timeout:     o.timeout,
		window:      o.cacheWindow,
		now:         o.now,
		logger:      o.logger,
		application: nameOr(o.application, envApplication),
		environment: nameOr(o.environment, envEnvironment),
		version:     nameOr(o.version, envVersion),
		drainDelay:  o.drainDelay,
	}
}

// SetReady opens (true) or closes (false) the readiness gate. The owner of
// the pool opens it once the pool has connected, and closes it before
// the pool begins to close, so that readiness fails, and traffic moves
// elsewhere, while in-flight work drains. While the gate is closed the
// readiness and status handlers answer 503 without pinging the database.
// A change discards cached results.
func (c *Checker) SetReady(ready bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ready.Swap(ready) == ready {
		return
	}
	c.gen++
	c.hasCached = false
	c.flight = nil
}

// Ready reports whether the readiness gate is open.
func (c *Checker) Ready() bool {
	return c.ready.Load()
}

// Check reports whether the database can serve queries. It ignores the
// readiness gate; the handlers apply it.
//
// When every connection of the pool is in use, Check reports warn without
// pinging: a ping would wait for a connection and time out exactly when
// the service is busiest. Otherwise it pings within the timeout and
// reports pass, or fail with the error's text. A result is reused for the
// cache window, and concurrent calls share one ping. When ctx ends
// before the result is known, Check reports fail with ctx's error; that
// result is not reused.
func (c *Checker) Check(ctx context.Context) Report {
	for {
		c.mu.Lock()
		if c.hasCached && c.cachedGen == c.gen && c.fresh(c.cached.Time) {
			r := c.cached
			c.mu.Unlock()
			return r
		}
		if f := c.flight; f != nil {
			c.mu.Unlock()
			select {
			case <-f.done:
				if f.abandoned {
					continue
				}
				return f.report
			case <-ctx.Done():
				return c.cancelled(ctx)
			}
		}
		f := &flight{gen: c.gen, done: make(chan struct{})}
		c.flight = f
		c.mu.Unlock()

		report := c.run(ctx)
		abandoned := report.Status == StatusFail && ctx.Err() != nil

		c.mu.Lock()
		if c.flight == f {
			c.flight = nil
		}
		var previous Status
		changed := false
		if !abandoned && f.gen == c.gen {
			c.cached, c.cachedGen, c.hasCached = report, f.gen, true
			previous, changed = c.lastStatus, c.lastStatus != report.Status
			c.lastStatus = report.Status
		}
		f.report, f.abandoned = report, abandoned
		close(f.done)
		c.mu.Unlock()

		if changed {
			c.logChange(previous, report)
		}
		return report
	}
}

// fresh reports whether a result from t may still be reused. A clock that
// went backwards makes it stale rather than fresh for ever.
func (c *Checker) fresh(t time.Time) bool {
	age := c.now().Sub(t)
	return age >= 0 && age < c.window
}

// run checks the database, and the replica if there is one, once.
func (c *Checker) run(ctx context.Context) Report {
	r := c.probe(ctx, c.db)
	if c.replica == nil {
		return r
	}
	rr := c.probe(ctx, c.replica)
	r.Replica = &rr
	if r.Status == StatusPass && rr.Status != StatusPass {
		r.Status = StatusWarn
		r.Error = "read replica: " + rr.Error
	}
	return r
}

// probe checks one database once.
func (c *Checker) probe(ctx context.Context, db Database) Report {
	began := c.now()
	if st := db.Stats(); saturated(st) {
		return saturatedReport(st, began, 0)
	}
	pingCtx, cancel := context.WithTimeout(ctx, c.timeout)
	start := time.Now()
	err := db.Ping(pingCtx)
	latency := time.Since(start)
	timedOut := errors.Is(pingCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
	cancel()

	st := db.Stats()
	if err == nil {
		return Report{Status: StatusPass, Available: true, Stats: st, Latency: latency, Time: began}
	}
	// The pool may have filled up between the look at its stats and the
	// ping; a ping that timed out waiting for a connection then says the
	// pool is busy, not that the database is gone.
	if timedOut && saturated(st) {
		return saturatedReport(st, began, latency)
	}
	return Report{Status: StatusFail, Stats: st, Latency: latency, Error: scrub(err.Error()), Time: began}
}

// cancelled is the report for a caller whose ctx ended while it waited
// for another caller's check.
func (c *Checker) cancelled(ctx context.Context) Report {
	return Report{
		Status: StatusFail,
		Stats:  c.db.Stats(),
		Error:  fmt.Sprintf("health check abandoned: %v", ctx.Err()),
		Time:   c.now(),
	}
}

func (c *Checker) logChange(previous Status, r Report) {
	fields := []zap.Field{
		zap.String("previous", string(previous)),
		zap.Int32("open_connections", r.Stats.Size),
		zap.Int32("idle_connections", r.Stats.Idle),
		zap.Duration("latency", r.Latency),
	}
	switch r.Status {
	case StatusPass:
		if previous != "" {
			c.logger.Info("postgres health check passing again", fields...)
		}
	case StatusWarn:
		c.logger.Warn("postgres health check warning", append(fields, zap.String("reason", r.Error))...)
	default:
		c.logger.Warn("postgres health check failing", append(fields, zap.String("error", r.Error))...)
	}
}

// saturated reports whether every connection the pool may open is in
// use, so that a ping would have to wait for one to be released.
func saturated(st Stats) bool {
	return st.Max > 0 && st.Acquired >= st.Max
}

func saturatedReport(st Stats, at time.Time, latency time.Duration) Report {
	return Report{
		Status:    StatusWarn,
		Available: true,
		Stats:     st,
		Latency:   latency,
		Error:     fmt.Sprintf("pool saturated: all %d connections in use", st.Max),
		Time:      at,
	}
}
