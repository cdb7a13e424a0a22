package sprocketspg

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg/discovery"
	"github.com/sprockets/sprocketspg/instance"
	"github.com/sprockets/sprocketspg/internal/redact"
)

// shutdownLead is how long before its context's deadline Shutdown gives
// up waiting for connections (at most a tenth of the time left).
const shutdownLead = 50 * time.Millisecond

// statusTimeout bounds the SELECT 1 of Status, as in the Python original.
const statusTimeout = 3 * time.Second

// Pool is a PostgreSQL connection pool configured from a Config. It embeds
// *pgxpool.Pool, so every pgx method is available once the pool has
// started; the embedded pointer is nil before that, and only the methods
// declared on Pool itself (Execute, Callproc, Transaction, Ping, Status,
// IsConnected, Reader, Name, Config, Handle, Close, Shutdown) are safe to
// call at any time.
//
// A Pool starts once and stops once; it cannot be restarted.
type Pool struct {
	*pgxpool.Pool

	cfg        Config
	logger     *zap.Logger
	poolConfig *pgxpool.Config
	name       string // the instance's name; "" for the default
	target     string // host:port list, instance, database and user, for errors and logs
	// targetFor is target with another user, the one credentials gave.
	targetFor func(user string) string
	creds     *credentials // nil when the URL's password is used
	password  string       // scrubbed from every error text

	mu        sync.Mutex // serialises start and stop
	started   bool
	stopped   bool
	pool      atomic.Pointer[pgxpool.Pool]
	connected atomic.Bool

	// routineKinds remembers, per quoted routine name, whether it is a
	// procedure (true) or a function (false), so Callproc picks CALL or
	// SELECT without a failed statement or a catalog lookup each time.
	routineKinds sync.Map

	// dispatch delivers query events to observers; nil without any. A
	// read pool shares its primary's.
	dispatch *dispatcher

	// deadline bounds each statement's wait for the server's answer.
	deadline *responseDeadline
	// hostWatch notices a host that stops answering.
	hostWatch *hostWatch

	// replica is the read pool of Config.ReadURL; nil without one.
	replica *replica
	// replicaOf is set on a read pool itself.
	replicaOf *replica

	// opts are the options the pool was made with, for pools of the same
	// instance to other URLs (Handle.ConnConfig).
	opts options
	// extensions, guarded by extMu, extend the instance (WithExtension,
	// Handle.Attach); startedExts, guarded by mu, counts those whose Start
	// succeeded.
	extMu       sync.Mutex
	extensions  []instance.Extension
	extSealed   bool // guarded by extMu: set once start or Shutdown begins
	startedExts int
}

// Status is a snapshot of the pool's health, shaped like the Python
// original's postgres_status().
type Status struct {
	// Available is true when a SELECT 1 through the pool succeeded within
	// three seconds.
	Available bool
	// PoolSize is the number of open connections.
	PoolSize int
	// PoolFree is the number of idle connections.
	PoolFree int
	// Err says why Available is false; nil when it is true.
	Err error
}

// New builds a Pool from cfg, connects and pings the server, retrying
// until cfg.ConnectionTimeout has passed or ctx ends, and returns the
// started pool. It is the way to use sprocketspg without fx; release the
// pool with Close or Shutdown.
//
// New returns an error matching ErrInvalidConfig for a bad cfg, and an
// error naming the server (never the password) when it cannot connect.
func New(ctx context.Context, cfg Config, opts ...Option) (*Pool, error) {
	p, err := newPool(cfg, opts...)
	if err != nil {
		return nil, err
	}
	if err := p.start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// newPool validates cfg and prepares the pgxpool configuration. It does
// no I/O.
func newPool(cfg Config, opts ...Option) (*Pool, error) {
	var o options
	for _, opt := range opts {
		opt.apply(&o)
	}
	if o.nameErr != nil {
		return nil, o.nameErr
	}
	prefix := EnvPrefix(o.name)
	if err := cfg.validate(prefix); err != nil {
		return nil, err
	}
	if o.logger == nil {
		o.logger = zap.NewNop()
	}
	if o.name != "" && !o.loggerNamed {
		// Once: a read pool gets these options, logger and all.
		o.logger = o.logger.With(zap.String("instance", o.name))
		o.loggerNamed = true
	}
	tls, err := newTLSFiles(cfg, prefix)
	if err != nil {
		return nil, err
	}
	creds, err := newCredentials(cfg, prefix, o)
	if err != nil {
		return nil, err
	}
	parseURL := tls.connString(cfg.URL)
	var hosts *hostSource
	if discovery.IsSRV(cfg.URL) {
		if hosts, err = newHostSource(parseURL, o); err != nil {
			return nil, err
		}
		parseURL = hosts.placeholder
	}
	pc, err := parsePoolConfig(prefix+EnvURL, cfg.URL, parseURL)
	if err != nil {
		return nil, err
	}
	applyConfig(pc, cfg)

	// The gate comes first, so that a refused connection costs no DNS
	// lookup and no hook of the user's; credentials and TLS come after the
	// SRV lookup, which sets the hosts they apply to.
	deadline := newResponseDeadline(cfg)
	deadline.dropReadOnly = requiresPrimary(cfg.URL)
	watch := newHostWatch(cfg, deadline.base, o.logger, func(ctx context.Context, network, addr string) (net.Conn, error) {
		// The pool's own dialer, whatever WithPoolConfig made it.
		return pc.ConnConfig.DialFunc(ctx, network, addr)
	})
	idle := &idleChecks{}
	own := poolHooks{
		beforeConnect: []func(context.Context, *pgx.ConnConfig) error{refuseInitialFill},
		afterConnect:  []func(context.Context, *pgx.Conn) error{pc.AfterConnect, idle.afterConnect, watch.afterConnect},
		beforeClose: func(conn *pgx.Conn) {
			idle.beforeClose(conn)
			watch.beforeClose(conn)
		},
		shouldPing: func(ctx context.Context, params pgxpool.ShouldPingParams) bool {
			if watch.shouldDrop(params.Conn) {
				// A closed socket fails pgxpool's ping at once, and pgxpool
				// then destroys the connection and takes another.
				_ = params.Conn.PgConn().Conn().Close()
				return true
			}
			// A connection leaving the pool after some idle time gets a
			// deadline that has not passed, before pgxpool may ping it.
			if params.IdleDuration >= minPeekIdle {
				deadline.arm(params.Conn, false)
			}
			return idle.shouldPing(ctx, params)
		},
		tracers:      []pgx.QueryTracer{deadline},
		watchContext: deadline.watchContext,
	}
	if hosts != nil {
		own.beforeConnect = append(own.beforeConnect, hosts.beforeConnect)
	}
	if creds != nil {
		own.beforeConnect = append(own.beforeConnect, creds.beforeConnect)
	}
	if tls != nil {
		own.beforeConnect = append(own.beforeConnect, tls.beforeConnect)
	}
	if t := queryLogTracer(cfg, o.logger); t != nil {
		own.tracers = append(own.tracers, t)
	}
	own.tracers = append(own.tracers, o.tracers...)
	for _, newTracer := range o.instanceTracers {
		if t := newTracer(o.name); t != nil {
			own.tracers = append(own.tracers, t)
		}
	}
	// After SRV, credentials and TLS, so that it orders the hosts they
	// set; a BeforeConnect of the user's runs after it, as every one does
	// (installHooks), and sees the hosts in that order.
	own.beforeConnect = append(own.beforeConnect, watch.orderHosts)
	installHooks(pc, own, o.poolConfigs)
	installHostWatch(pc, watch)
	targetFor := func(user string) string {
		if hosts != nil {
			return "SRV " + hosts.name + " " + describeOwner(o.name, pc.ConnConfig.Database, user)
		}
		return describeTarget(o.name, pc.ConnConfig, user)
	}
	target := targetFor(pc.ConnConfig.User)
	p := &Pool{
		cfg:        cfg,
		logger:     o.logger,
		name:       o.name,
		poolConfig: pc,
		target:     target,
		targetFor:  targetFor,
		creds:      creds,
		password:   pc.ConnConfig.Password,
		deadline:   deadline,
		hostWatch:  watch,
		opts:       o,
		extensions: o.extensions,
	}
	if len(o.observers) > 0 {
		p.dispatch = newDispatcher(o.observers, o.logger)
	}
	if cfg.ReadURL != "" {
		r, err := newReplica(cfg, o)
		if err != nil {
			return nil, err
		}
		r.pool.dispatch = p.dispatch
		p.replica = r
	}
	return p, nil
}

// parsePoolConfig is pgx's parse of connString, the connection string
// newPool makes of raw, the value of variable; its error names variable
// and never holds the password.
func parsePoolConfig(variable, raw, connString string) (*pgxpool.Config, error) {
	pc, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, &ConfigError{Variable: variable, Value: redact.ConnString(raw),
			Reason: "cannot be parsed", Err: redact.Error(err, redact.Secrets(raw)...)}
	}
	return pc, nil
}

// connectionProblems reports what newPool would refuse in c's connection
// settings, without doing any I/O: TLS settings that disagree with the
// URL, a password file beside a password in the URL, and what pgx makes of
// the URLs (a bad sslmode, port or option). LoadConfig reports them with
// every other bad variable, rather than at start, a run later.
func (c Config) connectionProblems(prefix string) []error {
	var errs []error
	if _, err := newCredentials(c, prefix, options{}); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, urlProblems(c, prefix, prefix+EnvURL)...)
	if c.ReadURL != "" {
		rc := c
		rc.URL = c.ReadURL
		for _, err := range urlProblems(rc, prefix, prefix+EnvReadURL) {
			// The read URL is checked as the read pool's URL; its errors
			// name it.
			forEachConfigError(err, func(ce *ConfigError) {
				if ce.Variable == prefix+EnvURL {
					ce.Variable = prefix + EnvReadURL
				}
				ce.Reason = strings.ReplaceAll(ce.Reason, prefix+EnvURL, prefix+EnvReadURL)
			})
			errs = append(errs, err)
		}
	}
	return errs
}

// urlProblems is connectionProblems for c.URL, the value of variable.
func urlProblems(c Config, prefix, variable string) []error {
	tls, err := newTLSFiles(c, prefix)
	if err != nil {
		return []error{err}
	}
	connString := tls.connString(c.URL)
	if discovery.IsSRV(c.URL) {
		placeholder, err := discovery.Placeholder(connString)
		if err != nil {
			return []error{&ConfigError{Variable: variable, Value: redact.ConnString(c.URL),
				Reason: "is not a valid SRV URL", Err: redact.Error(err, redact.Secrets(c.URL)...)}}
		}
		connString = placeholder
	}
	if _, err := parsePoolConfig(variable, c.URL, connString); err != nil {
		return []error{err}
	}
	return nil
}

// applyConfig copies the Config's settings onto a pgxpool configuration.
func applyConfig(pc *pgxpool.Config, cfg Config) {
	pc.MaxConns = int32(cfg.MaxPoolSize)
	pc.MinConns = int32(cfg.MinPoolSize)
	pc.MaxConnLifetime = cfg.ConnectionTTL
	pc.MaxConnLifetimeJitter = cfg.ConnectionTTL / 10
	pc.MinIdleConns = int32(cfg.MinIdleConns)
	// Zero keeps pgx's defaults, so that a Config written in code before
	// these settings existed still works.
	if cfg.MaxConnIdleTime > 0 {
		pc.MaxConnIdleTime = cfg.MaxConnIdleTime
	}
	if cfg.HealthCheckPeriod > 0 {
		pc.HealthCheckPeriod = cfg.HealthCheckPeriod
	}
	if pc.HealthCheckPeriod > cfg.ConnectionTTL {
		// Idle connections past their TTL are only found by the health
		// check; keep its period within the TTL.
		pc.HealthCheckPeriod = cfg.ConnectionTTL
	}
	// pgx counts connect_timeout per host: a frozen first host of a
	// multi-host URL costs this much before the next is tried, and the
	// whole attempt is bounded by ConnectionTimeout (Pool.start, and the
	// caller's context for the pool's later connections).
	pc.ConnConfig.ConnectTimeout = cfg.hostConnectTimeout()
	// pgxpool pings a connection that was idle for a while before handing
	// it out; against a vanished server that ping must not wait for ever.
	pc.PingTimeout = cfg.hostConnectTimeout()
	if mode := queryExecModes[cfg.QueryExecMode]; mode != 0 {
		pc.ConnConfig.DefaultQueryExecMode = mode
	}

	// statement_timeout travels in the startup message, so setting it costs
	// no round trip.
	pc.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(cfg.QueryTimeout.Milliseconds(), 10)
	if cfg.SearchPath != "" {
		pc.ConnConfig.RuntimeParams["search_path"] = cfg.SearchPath
	}
	switch {
	case cfg.ApplicationName != "":
		pc.ConnConfig.RuntimeParams["application_name"] = cfg.ApplicationName
	case pc.ConnConfig.RuntimeParams["application_name"] == "":
		// The URL did not name the application either.
		pc.ConnConfig.RuntimeParams["application_name"] = defaultApplicationName()
	}

	// When a caller's context ends mid-query, ask the server to cancel the
	// query instead of closing the connection: the server stops working
	// and the connection stays usable. The deadline is the backstop for a
	// server that does not answer the cancel request.
	deadlineDelay := cfg.hostConnectTimeout()
	pc.ConnConfig.BuildContextWatcherHandler = func(conn *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: conn, DeadlineDelay: deadlineDelay}
	}

	pc.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		return registerTypes(ctx, conn, cfg)
	}
}

// defaultApplicationName is the application_name of a pool whose Config
// and URL give none: $SERVICE, as the status document reads it, else the
// executable's name.
func defaultApplicationName() string {
	if name := os.Getenv("SERVICE"); name != "" {
		return name
	}
	if len(os.Args) > 0 && os.Args[0] != "" {
		return filepath.Base(os.Args[0])
	}
	return "sprocketspg"
}

// describeTarget names the server(s) of a connection config, the
// instance, the database and user for errors and logs; it never includes
// the password.
func describeTarget(instance string, c *pgx.ConnConfig, user string) string {
	hosts := []string{hostPort(c.Host, c.Port)}
	for _, fb := range c.Fallbacks {
		hp := hostPort(fb.Host, fb.Port)
		if hp != hosts[len(hosts)-1] {
			hosts = append(hosts, hp)
		}
	}
	return strings.Join(hosts, ",") + " " + describeOwner(instance, c.Database, user)
}

// describeOwner is the parenthesis of describeTarget: the instance, when
// it has a name, the database and the user.
func describeOwner(instance, database, user string) string {
	if instance != "" {
		return fmt.Sprintf("(instance %q, database %q, user %q)", instance, database, user)
	}
	return fmt.Sprintf("(database %q, user %q)", database, user)
}

// attemptTarget is target as the last connection attempt saw it: with the
// user that WithCredentials returned, when that was another one.
func (p *Pool) attemptTarget() string {
	if p.creds != nil {
		if user := p.creds.lastUser.Load(); user != nil && *user != p.poolConfig.ConnConfig.User {
			return p.targetFor(*user)
		}
	}
	return p.target
}

func hostPort(host string, port uint16) string {
	if strings.HasPrefix(host, "/") {
		return host + "/.s.PGSQL." + strconv.Itoa(int(port))
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// start connects the pool: it builds the pgxpool, pings the server with
// backoff until the connection timeout or ctx ends, opens MinPoolSize
// connections and marks the pool connected.
func (p *Pool) start(ctx context.Context) (err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return errors.New("start postgres pool: already started")
	}
	if p.stopped {
		return errors.New("start postgres pool: it was shut down; a Pool cannot be restarted")
	}
	p.started = true
	defer func() {
		if err != nil {
			// The connections start opened are closed; so is their watch.
			p.hostWatch.close()
		}
	}()
	p.sealExtensions()
	began := time.Now()
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectionTimeout)
	defer cancel()

	// pgxpool would open MinConns connections in the background as well
	// as the ones start opens; the marker makes the gate refuse those.
	pool, err := pgxpool.NewWithConfig(context.WithValue(context.Background(), initialFillKey{}, true), p.poolConfig)
	if err != nil {
		return p.scrub(fmt.Errorf("create postgres pool for %s: %w", p.attemptTarget(), err))
	}
	if err := p.connect(ctx, pool); err != nil {
		pool.Close()
		if pgErr := rejection(err); pgErr != nil {
			return p.scrub(fmt.Errorf("connect to postgres at %s: %w: %w", p.attemptTarget(), ErrConnectionRejected, pgErr))
		}
		if permanentSetupError(err) {
			return p.scrub(fmt.Errorf("connect to postgres at %s: %w", p.attemptTarget(), err))
		}
		// When the connection timeout, not the caller, ended the attempts,
		// the server is what failed, whatever the last attempt returned.
		if parent.Err() == nil {
			err = fmt.Errorf("%w: %w", ErrConnectTimeout, err)
		}
		return p.scrub(fmt.Errorf("connect to postgres at %s within %s: %w", p.attemptTarget(), p.cfg.ConnectionTimeout, err))
	}
	if err := p.openConnections(ctx, pool, p.cfg.MinPoolSize); err != nil {
		pool.Close()
		if parent.Err() == nil && ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", ErrConnectTimeout, err)
		}
		return p.scrub(fmt.Errorf("open %d connections to postgres at %s: %w", p.cfg.MinPoolSize, p.attemptTarget(), err))
	}
	// Extensions see the pool from here on; the instance counts as
	// connected only once they have started.
	p.pool.Store(pool)
	if err := p.startExtensions(parent); err != nil {
		p.pool.Store(nil)
		pool.Close()
		return err
	}
	if p.replica != nil {
		if err := p.replica.start(); err != nil {
			stopErr := p.abandonExtensions(parent)
			p.pool.Store(nil)
			pool.Close()
			return errors.Join(err, stopErr)
		}
	}
	if p.dispatch != nil {
		p.dispatch.start()
	}
	p.Pool = pool
	p.pool.Store(pool)
	p.connected.Store(true)
	st := pool.Stat()
	p.logger.Info("connected to postgres",
		zap.String("url", redact.ConnString(p.cfg.URL)),
		zap.Int("min_pool_size", p.cfg.MinPoolSize),
		zap.Int("max_pool_size", p.cfg.MaxPoolSize),
		zap.Int32("open_connections", st.TotalConns()),
		zap.Duration("elapsed", time.Since(began)))
	return nil
}

// connect pings until the server answers. A refused or reset connection
// is the common state of a database that is still starting, so it is
// retried with capped, jittered backoff rather than failing start at once.
func (p *Pool) connect(ctx context.Context, pool *pgxpool.Pool) error {
	backoff := 50 * time.Millisecond
	var last error
	for attempt := 1; ; attempt++ {
		err := pool.Ping(ctx)
		if err == nil {
			return nil
		}
		// A wrong password or a missing database is the same on the
		// next attempt; waiting out the connection timeout would only
		// hide the server's answer.
		if rejection(err) != nil || permanentSetupError(err) {
			return err
		}
		// The final attempt usually fails only because ctx ended; the
		// error before it says why the server could not be reached.
		if last == nil || ctx.Err() == nil || !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			last = err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%d attempts: %w", attempt, last)
		}
		p.logger.Debug("postgres not reachable yet, retrying",
			zap.String("target", p.target), zap.Int("attempt", attempt),
			zap.Error(p.scrub(err)))
		wait := backoff/2 + rand.N(backoff/2+1)
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("%d attempts: %w", attempt, last)
		case <-timer.C:
		}
		backoff = min(backoff*2, time.Second)
	}
}

// initialFillKey marks the context of pgxpool's background fill to
// MinConns at pool creation, which refuseInitialFill refuses: start opens
// those connections itself, so that it can report why one failed and so
// that exactly MinPoolSize are open when it returns, not those plus
// pgxpool's.
type initialFillKey struct{}

// errInitialFill is what pgxpool's initial fill gets; pgxpool drops it.
var errInitialFill = errors.New("connections at start are opened by sprocketspg")

// refuseInitialFill is the first BeforeConnect hook of every pool.
// pgxpool's later top-ups to MinConns (after connections are closed for
// age or idleness) do not carry the marker and go ahead.
func refuseInitialFill(ctx context.Context, _ *pgx.ConnConfig) error {
	if ctx.Value(initialFillKey{}) != nil {
		return errInitialFill
	}
	return nil
}

// openConnections leaves exactly n connections open when start returns.
// The ping of connect has opened one, which is idle in the pool: with n of
// zero it is closed again, so that none is open until the first query;
// otherwise n acquired at once reuse it and open the rest concurrently.
func (p *Pool) openConnections(ctx context.Context, pool *pgxpool.Pool, n int) error {
	if n == 0 {
		c, err := pool.Acquire(ctx)
		if err != nil {
			return err
		}
		// Hijack takes the connection out of the pool, which then closes
		// nothing of its own accord: the pool's BeforeClose hooks run by
		// hand.
		conn := c.Hijack()
		if p.poolConfig.BeforeClose != nil {
			p.poolConfig.BeforeClose(conn)
		}
		return conn.Close(ctx)
	}
	conns := make([]*pgxpool.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { conns[i], errs[i] = pool.Acquire(ctx) })
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			c.Release()
		}
	}
	// The attempts share ctx, so after one failure the rest usually fail
	// only because ctx ended; the first error says why.
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Shutdown marks the pool not connected, so IsConnected and Status report
// false while in-flight queries finish, then closes every connection. It
// returns when the pool is closed or, if queries are still running when
// ctx ends, with an error wrapping ctx's error; the pool then finishes
// closing in the background as they return.
func (p *Pool) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.connected.Store(false)
	p.stopped = true
	p.sealExtensions()
	// Extensions first, since they may use the pool while they stop.
	extErr := p.stopExtensions(ctx)
	// The read pool next, but its failure must not keep this one open.
	var replicaErr error
	if p.replica != nil {
		replicaErr = p.replica.shutdown(ctx)
	}
	err := p.closePool(ctx)
	return errors.Join(extErr, replicaErr, err)
}

// closePool closes the pgx pool and then the observers' dispatcher, within
// ctx; see Shutdown.
func (p *Pool) closePool(ctx context.Context) error {
	// A read pool's dispatcher belongs to its primary.
	dispatch := p.dispatch
	if p.replicaOf != nil {
		dispatch = nil
	}
	pool := p.pool.Load()
	if pool == nil {
		if dispatch != nil {
			return dispatch.close(ctx)
		}
		return nil
	}
	done := make(chan struct{})
	go func() {
		pool.Close()
		// Every connection is closed: the host watch has nothing left.
		p.hostWatch.close()
		// Even when ctx ends first, the observers' goroutine ends once
		// the pool has closed.
		if dispatch != nil {
			dispatch.signalStop()
		}
		close(done)
	}()
	// Give up a moment before ctx's deadline: a caller such as fx reports
	// its own context error when the deadline has passed, and the reason
	// (connections still in use) would be lost.
	var early <-chan time.Time
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		timer := time.NewTimer(left - min(shutdownLead, left/10))
		defer timer.Stop()
		early = timer.C
	}
	stillInUse := func(err error) error {
		return fmt.Errorf("close postgres pool for %s: %d connections still in use when the stop deadline passed: %w",
			p.target, pool.Stat().AcquiredConns(), err)
	}
	select {
	case <-done:
		p.logger.Info("closed postgres pool", zap.String("target", p.target))
	case <-early:
		return stillInUse(context.DeadlineExceeded)
	case <-ctx.Done():
		return stillInUse(ctx.Err())
	}
	// Queries that finished while the pool drained have queued their
	// events; observers get them before Shutdown returns.
	if dispatch != nil {
		return dispatch.close(ctx)
	}
	return nil
}

// Close closes the pool, waiting for every acquired connection to be
// released. It replaces pgxpool.Pool.Close so the pool is also marked not
// connected.
func (p *Pool) Close() {
	_ = p.Shutdown(context.Background())
}

// IsConnected reports whether the pool has started and has not begun to
// stop. It does no I/O; use Status to test the server.
func (p *Pool) IsConnected() bool {
	return p.connected.Load()
}

// Name returns the name of the pool's instance (Named, WithName); "" for
// the default instance.
func (p *Pool) Name() string {
	return p.name
}

// Config returns the configuration the pool was built from.
func (p *Pool) Config() Config {
	return p.cfg
}

// Status runs SELECT 1 through the pool within three seconds (or ctx's
// earlier deadline) and reports the outcome with the pool's size. Before
// the pool starts and after it stops it reports Available false and sizes
// of zero, with Err set to ErrNotConnected. When ctx ends first, Err
// matches ctx.Err().
func (p *Pool) Status(ctx context.Context) Status {
	pool := p.pool.Load()
	if pool == nil || !p.connected.Load() {
		return Status{Err: p.errorForCaller(ErrNotConnected)}
	}
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	var one int
	err := pool.QueryRow(ctx, "SELECT 1").Scan(&one)
	st := pool.Stat()
	return Status{
		Available: err == nil,
		PoolSize:  int(st.TotalConns()),
		PoolFree:  int(st.IdleConns()),
		Err:       p.errorForCaller(callError(ctx, err)),
	}
}

// Execute runs sql with args and returns its whole result. Arguments use
// pgx's placeholders ($1, $2, ...) or a single pgx.NamedArgs (@name).
//
// The query is bounded by the server's statement_timeout
// (Config.QueryTimeout) and by ctx: when ctx ends first, the server is
// asked to cancel the query and the connection stays in the pool. A query
// that failed before any of it reached the server (a dead connection) is
// sent once more on another connection.
//
// Execute returns an error matching ErrNotConnected before start and after
// stop (also to a call still waiting for a connection when stop begins),
// and one matching ctx.Err() when ctx ended the call, whether it was
// waiting for a connection or running on the server. Other errors wrap
// pgx's, so IsUniqueViolation, IsQueryTimeout and errors.As with
// *pgconn.PgError work on them.
func (p *Pool) Execute(ctx context.Context, sql string, args ...any) (QueryResult, error) {
	pool, err := p.livePool()
	if err != nil {
		return QueryResult{}, err
	}
	began := p.startTime()
	res, err := p.query(ctx, pool, sql, args)
	if err != nil && pgconn.SafeToRetry(err) && ctx.Err() == nil {
		res, err = p.query(ctx, pool, sql, args)
	}
	return res, p.finish(ctx, OperationExecute, "execute", sql, began, res, err)
}

// Callproc calls the function or procedure name with args as positional
// arguments and returns its result, the way Execute does.
//
// name may be schema-qualified ("billing.charge"). It follows SQL's rules
// for identifiers, so it cannot inject SQL: unquoted parts fold to lower
// case, and a part in double quotes ("MyFunc") is taken literally. A
// function is called with SELECT * FROM name(...); when the server says
// the name is a procedure, Callproc uses CALL name(...) from then on.
func (p *Pool) Callproc(ctx context.Context, name string, args ...any) (QueryResult, error) {
	pool, err := p.livePool()
	if err != nil {
		return QueryResult{}, err
	}
	ident, err := parseRoutineName(name)
	if err != nil {
		return QueryResult{}, p.errorForCaller(fmt.Errorf("callproc: %w", err))
	}
	began := p.startTime()
	key := ident.Sanitize()
	isProc, known := p.routineKind(key)
	sql := callSQL(ident, len(args), isProc)
	res, err := p.query(ctx, pool, sql, args)
	if err != nil && !known && hasCode(err, codeWrongObjectType) {
		isProc = true
		sql = callSQL(ident, len(args), true)
		res, err = p.query(ctx, pool, sql, args)
	}
	if err != nil && pgconn.SafeToRetry(err) && ctx.Err() == nil {
		res, err = p.query(ctx, pool, sql, args)
	}
	if err == nil {
		p.routineKinds.Store(key, isProc)
	}
	return res, p.finish(ctx, OperationCallproc, "callproc "+key, sql, began, res, err)
}

func (p *Pool) routineKind(key string) (procedure, known bool) {
	v, ok := p.routineKinds.Load(key)
	if !ok {
		return false, false
	}
	return v.(bool), true
}

// routineIsProcedure answers from the cache or, the first time, from the
// catalog. Transactions use it because a failed SELECT would abort them.
func (p *Pool) routineIsProcedure(ctx context.Context, q querier, ident pgx.Identifier, key string) (bool, error) {
	if isProc, known := p.routineKind(key); known {
		return isProc, nil
	}
	var sql string
	var args []any
	switch len(ident) {
	case 1:
		sql = `SELECT p.prokind = 'p' AS is_procedure FROM pg_catalog.pg_proc p
			WHERE p.proname = $1 AND pg_catalog.pg_function_is_visible(p.oid) LIMIT 1`
		args = []any{ident[0]}
	default:
		// A three-part name's first part is the current database.
		sql = `SELECT p.prokind = 'p' AS is_procedure FROM pg_catalog.pg_proc p
			JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
			WHERE n.nspname = $1 AND p.proname = $2 LIMIT 1`
		args = []any{ident[len(ident)-2], ident[len(ident)-1]}
	}
	res, err := runQuery(ctx, q, sql, args)
	if err != nil {
		return false, fmt.Errorf("look up routine %s: %w", key, err)
	}
	if res.Row == nil {
		// Unknown: let SELECT report the missing function.
		return false, nil
	}
	isProc, _ := res.Row["is_procedure"].(bool)
	p.routineKinds.Store(key, isProc)
	return isProc, nil
}

// livePool returns the pgx pool while the Pool is connected.
func (p *Pool) livePool() (*pgxpool.Pool, error) {
	if !p.connected.Load() {
		return nil, p.errorForCaller(ErrNotConnected)
	}
	pool := p.pool.Load()
	if pool == nil {
		return nil, p.errorForCaller(ErrNotConnected)
	}
	return pool, nil
}

// finish reports the operation to the observers (or the debug log) and
// wraps its error, naming label and the metric name.
func (p *Pool) finish(ctx context.Context, op Operation, label, sql string, began time.Time, res QueryResult, err error) error {
	name := MetricName(ctx)
	err = callError(ctx, err)
	p.observe(ctx, op, name, sql, began, res.RowCount, err)
	p.noteConnectionError(err)
	if err == nil {
		return nil
	}
	if name != "" {
		return p.errorForCaller(fmt.Errorf("%s %q: %w", label, name, err))
	}
	return p.errorForCaller(fmt.Errorf("%s: %w", label, err))
}

// errorForCaller is the error of a call on the pool as its caller gets it:
// without the password, and naming the instance when it has a name (the
// default instance's errors read as they always have).
func (p *Pool) errorForCaller(err error) error {
	if err == nil {
		return nil
	}
	var named *instanceError
	if p.name != "" && !(errors.As(err, &named) && named.name == p.name) {
		// A Tx statement's error that fn returns to Transaction names
		// the instance already.
		err = &instanceError{name: p.name, err: err}
	}
	return p.scrub(err)
}

// instanceError is an error of a named instance's call.
type instanceError struct {
	name string
	err  error
}

func (e *instanceError) Error() string { return fmt.Sprintf("instance %q: %v", e.name, e.err) }
func (e *instanceError) Unwrap() error { return e.err }

// scrub removes the password from err's text.
func (p *Pool) scrub(err error) error {
	return redact.Error(err, p.password)
}
