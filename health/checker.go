package health

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
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
//
// A Checker of several databases (WithInstance, Combine) reports its main
// database in the top-level fields and the others in Instances, except
// for Status, Available and Error, which are the verdict over all of
// them. Databases gives each database's own report.
type Report struct {
	// Status is pass, warn or fail. For a Checker of several databases it
	// is fail when a database that is not optional fails, warn when any
	// database warns or an optional one fails, and pass otherwise.
	Status Status
	// Available is true for pass and warn: the database can serve
	// queries, as the Python original's postgres_status() reported it.
	// For a Checker of several databases it is true unless Status is
	// fail.
	Available bool
	// Stats is the pool's state as the check last saw it: after the ping,
	// or before it when the pool was saturated and no ping was made.
	Stats Stats
	// Latency is how long the ping took, including the wait for a
	// connection; zero when no ping was made.
	Latency time.Duration
	// Error says why Status is not pass; empty for pass. Anything in it
	// that looks like a password is masked. For a Checker of several
	// databases, or of one named database, each problem is prefixed with
	// the database's check name, e.g. "postgres-orders: ...", and several
	// are joined with "; ".
	Error string
	// Time is when the check began, by the Checker's clock.
	Time time.Time
	// Replica is the read replica's own result when one was given with
	// WithReplica; nil otherwise.
	Replica *Report
	// Name is the database's name (WithName, WithInstance); "" for the
	// application's default, unnamed one. A Replica's report carries the
	// name of the database it belongs to.
	Name string
	// Instances are the own reports of the Checker's other databases
	// (WithInstance, Combine), sorted by name; nil when there are none.
	Instances []Report
	// Components are the reports of the database's Components
	// (ComponentSource), in the order the database lists them; nil when
	// it has none. Their verdicts are part of the database's own Status.
	Components []ComponentReport

	// own is the main database's own verdict, which Status, Available and
	// Error replace with the overall one; it is set only when they differ
	// in meaning, that is when there are several databases or a name.
	own *verdict
}

// verdict is a database's own Status, Available and Error.
type verdict struct {
	status    Status
	available bool
	err       string
}

// Databases returns the report of each database on its own, the main
// database first and then Instances: the main one's Status, Available and
// Error are its own, not the overall verdict of r. Each report's Name says
// which database it is.
func (r Report) Databases() []Report {
	main := r
	if r.own != nil {
		main.Status, main.Available, main.Error = r.own.status, r.own.available, r.own.err
	}
	main.Instances, main.own = nil, nil
	return append([]Report{main}, r.Instances...)
}

// Checker checks one or more Databases and serves the results over HTTP.
// Its methods are safe for concurrent use.
type Checker struct {
	// dbs are the databases checked: the main one first, then the others
	// sorted by name. Names are unique.
	dbs         []database
	timeout     time.Duration
	window      time.Duration
	now         func() time.Time
	logger      *zap.Logger
	application string
	environment string
	version     string

	ready atomic.Bool
	// parts are the Checkers that Combine combined, whose gates must all
	// be open for this one's to be; nil for NewChecker's.
	parts []*Checker
	// gen counts readiness changes of this Checker's own gate, so that a
	// result obtained across one is neither cached nor reused: a ping that
	// failed while the pool was starting says nothing about the started
	// pool. It changes under mu, but is read without it by the Checkers
	// combining this one.
	gen atomic.Uint64

	// drainDelay is how long Drain waits; drainUntil, guarded by mu, is
	// when the first Drain's wait ends (zero before any).
	drainDelay time.Duration
	drainUntil time.Time

	mu        sync.Mutex
	cached    Report
	cachedGen uint64
	hasCached bool
	flight    *flight
	// lastByDB is each database's last cached status, by index of dbs,
	// so that changes are logged per database.
	lastByDB []Status
}

// database is one database a Checker checks.
type database struct {
	name     string
	db       Database
	replica  Database
	optional bool
	// timeout bounds its pings; a combined Checker keeps each database's
	// from the Checker it came from.
	timeout time.Duration
}

// checkName returns the prefix of the database's check names:
// "postgres" for the unnamed one, "postgres-<name>" otherwise.
func checkName(name string) string {
	if name == "" {
		return "postgres"
	}
	return "postgres-" + name
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

// NewChecker returns a Checker of db, which must not be nil, and of the
// databases WithInstance adds. It does no I/O; it reads $SERVICE,
// $ENVIRONMENT and $VERSION for names not given as options. The Checker
// is not ready until SetReady(true) is called.
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
	dbs := []database{{name: o.name, db: db, replica: o.replica, optional: o.optional[o.name], timeout: o.timeout}}
	for _, in := range o.instances {
		if in.db == nil {
			o.logger.Warn("postgres health check: database without a pool left out", zap.String("database", checkName(in.name)))
			continue
		}
		dbs = append(dbs, database{name: in.name, db: in.db, replica: in.replica, optional: o.optional[in.name], timeout: o.timeout})
	}
	c := &Checker{
		dbs:         uniqueDatabases(o.logger, dbs),
		timeout:     o.timeout,
		window:      o.cacheWindow,
		now:         o.now,
		logger:      o.logger,
		application: nameOr(o.application, envApplication),
		environment: nameOr(o.environment, envEnvironment),
		version:     nameOr(o.version, envVersion),
		drainDelay:  o.drainDelay,
	}
	c.lastByDB = make([]Status, len(c.dbs))
	return c
}

// uniqueDatabases returns dbs with the main database, dbs[0], first and the
// others sorted by name, each name once: the first database given a name
// keeps it, and each later one is left out with a warning, so that the
// result does not depend on which was given last.
func uniqueDatabases(logger *zap.Logger, dbs []database) []database {
	seen := make(map[string]bool, len(dbs))
	out := make([]database, 0, len(dbs))
	for _, d := range dbs {
		if seen[d.name] {
			logger.Warn("postgres health check: a second database with the same name left out; names must be unique",
				zap.String("database", checkName(d.name)))
			continue
		}
		seen[d.name] = true
		out = append(out, d)
	}
	slices.SortStableFunc(out[1:], func(a, b database) int { return strings.Compare(a.name, b.name) })
	return out
}

// SetReady opens (true) or closes (false) the readiness gate. The owner of
// the pool opens it once the pool has connected, and closes it before
// the pool begins to close, so that readiness fails, and traffic moves
// elsewhere, while in-flight work drains. While the gate is closed the
// readiness and status handlers answer 503 without pinging the database.
// A change discards cached results. On a Checker from Combine it opens or
// closes that Checker's own gate, which is open from the start, in
// addition to those of the Checkers combined.
func (c *Checker) SetReady(ready bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ready.Swap(ready) == ready {
		return
	}
	c.gen.Add(1)
	c.hasCached = false
	c.flight = nil
}

// Ready reports whether the readiness gate is open. The gate of a Checker
// from Combine is open only while its own and those of all the Checkers
// combined are.
func (c *Checker) Ready() bool {
	if !c.ready.Load() {
		return false
	}
	for _, p := range c.parts {
		if !p.Ready() {
			return false
		}
	}
	return true
}

// generation changes whenever the gate of c or of a Checker it combines
// opens or closes. Each counter only grows, so their sum changes with any
// of them.
func (c *Checker) generation() uint64 {
	g := c.gen.Load()
	for _, p := range c.parts {
		g += p.generation()
	}
	return g
}

// Check reports whether the databases can serve queries. It ignores the
// readiness gate; the handlers apply it.
//
// When every connection of a pool is in use, Check reports warn for it
// without pinging: a ping would wait for a connection and time out
// exactly when the service is busiest. Otherwise it pings within the
// timeout and reports pass, or fail with the error's text. Several
// databases are pinged concurrently. A result is reused for the cache
// window, and concurrent calls share one round of pings. When ctx ends
// before the result is known, Check reports fail with ctx's error; that
// result is not reused.
func (c *Checker) Check(ctx context.Context) Report {
	for {
		gen := c.generation()
		c.mu.Lock()
		if c.hasCached && c.cachedGen == gen && c.fresh(c.cached.Time) {
			r := c.cached
			c.mu.Unlock()
			return r
		}
		// A flight begun before a readiness change of a combined Checker
		// is not shared; its result would not be cached either.
		if f := c.flight; f != nil && f.gen == gen {
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
		f := &flight{gen: gen, done: make(chan struct{})}
		c.flight = f
		c.mu.Unlock()

		reports := c.run(ctx)
		report := c.overall(reports)
		abandoned := report.Status == StatusFail && ctx.Err() != nil

		c.mu.Lock()
		if c.flight == f {
			c.flight = nil
		}
		var changes []statusChange
		if !abandoned && f.gen == c.generation() {
			c.cached, c.cachedGen, c.hasCached = report, f.gen, true
			for i, r := range reports {
				if previous := c.lastByDB[i]; previous != r.Status {
					changes = append(changes, statusChange{previous: previous, db: c.dbs[i], report: r})
					c.lastByDB[i] = r.Status
				}
			}
		}
		f.report, f.abandoned = report, abandoned
		close(f.done)
		c.mu.Unlock()

		for _, ch := range changes {
			c.logChange(ch)
		}
		return report
	}
}

// statusChange is a database whose status differs from its last one.
type statusChange struct {
	previous Status
	db       database
	report   Report
}

// fresh reports whether a result from t may still be reused. A clock that
// went backwards makes it stale rather than fresh for ever.
func (c *Checker) fresh(t time.Time) bool {
	age := c.now().Sub(t)
	return age >= 0 && age < c.window
}

// run checks every database once, concurrently, and returns their own
// reports in the order of c.dbs.
func (c *Checker) run(ctx context.Context) []Report {
	reports := make([]Report, len(c.dbs))
	if len(c.dbs) == 1 {
		reports[0] = c.runOne(ctx, c.dbs[0])
		return reports
	}
	var wg sync.WaitGroup
	for i, d := range c.dbs {
		wg.Go(func() { reports[i] = c.runOne(ctx, d) })
	}
	wg.Wait()
	return reports
}

// runOne checks one database, and its replica if it has one, once.
func (c *Checker) runOne(ctx context.Context, d database) Report {
	if d.replica == nil {
		r := c.probe(ctx, d.db, d.timeout)
		r.Name = d.name
		checkComponents(ctx, d.db, d.timeout, &r)
		return r
	}
	var rr Report
	done := make(chan struct{})
	go func() {
		defer close(done)
		rr = c.probe(ctx, d.replica, d.timeout)
	}()
	r := c.probe(ctx, d.db, d.timeout)
	<-done
	r.Name, rr.Name = d.name, d.name
	r.Replica = &rr
	if r.Status == StatusPass && rr.Status != StatusPass {
		r.Status = StatusWarn
		r.Error = "read replica: " + rr.Error
	}
	checkComponents(ctx, d.db, d.timeout, &r)
	return r
}

// overall returns the overall report of the databases' own reports, in
// the order of c.dbs: the main database's, with the overall verdict and
// the others in Instances.
func (c *Checker) overall(reports []Report) Report {
	r := reports[0]
	if len(reports) == 1 && c.dbs[0].name == "" {
		// One unnamed database: its own report is the verdict, word for
		// word, as it was before a Checker could hold several.
		return r
	}
	r.own = &verdict{status: r.Status, available: r.Available, err: r.Error}
	if len(reports) > 1 {
		r.Instances = slices.Clone(reports[1:])
	}
	status := StatusPass
	var problems []string
	for i, own := range reports {
		switch {
		case own.Status == StatusPass:
			continue
		case own.Status == StatusFail && !c.dbs[i].optional:
			status = StatusFail
		case status == StatusPass:
			status = StatusWarn
		}
		problems = append(problems, checkName(c.dbs[i].name)+": "+own.Error)
	}
	r.Status, r.Available, r.Error = status, status != StatusFail, strings.Join(problems, "; ")
	return r
}

// probe checks one database once, with a ping bounded by timeout.
func (c *Checker) probe(ctx context.Context, db Database, timeout time.Duration) Report {
	began := c.now()
	if st := db.Stats(); saturated(st) {
		return saturatedReport(st, began, 0)
	}
	pingCtx, cancel := context.WithTimeout(ctx, timeout)
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
// for another caller's check. It has no Instances: the caller is gone,
// and the databases were not checked on its behalf.
func (c *Checker) cancelled(ctx context.Context) Report {
	return Report{
		Status: StatusFail,
		Stats:  c.dbs[0].db.Stats(),
		Error:  fmt.Sprintf("health check abandoned: %v", ctx.Err()),
		Time:   c.now(),
		Name:   c.dbs[0].name,
	}
}

// logChange logs a database's new status. The messages are those of a
// Checker of one database; the database field says which one changed.
func (c *Checker) logChange(ch statusChange) {
	r := ch.report
	fields := []zap.Field{
		zap.String("database", checkName(ch.db.name)),
		zap.String("previous", string(ch.previous)),
		zap.Int32("open_connections", r.Stats.Size),
		zap.Int32("idle_connections", r.Stats.Idle),
		zap.Duration("latency", r.Latency),
	}
	if ch.db.optional {
		fields = append(fields, zap.Bool("optional", true))
	}
	switch r.Status {
	case StatusPass:
		if ch.previous != "" {
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
