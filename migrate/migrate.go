package migrate

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"regexp"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/instance"
)

// DefaultTableName is goose's version table, which records each applied
// migration.
const DefaultTableName = goose.DefaultTablename

// ComponentName is the name of the readiness check that reports an
// instance's schema version: "postgres:schemaVersion",
// "postgres-orders:schemaVersion".
const ComponentName = "schemaVersion"

var (
	// ErrLockTimeout is matched by the error of migrations that did not
	// get the lock within Config.LockTimeout, because another process
	// held it for all that time.
	ErrLockTimeout = errors.New("migration lock not acquired")
	// ErrTimeout is matched by the error of migrations that did not end
	// within Config.Timeout; the one running then was rolled back.
	ErrTimeout = errors.New("migrations did not finish in time")
	// ErrNotStarted is returned by Version before the instance has
	// started.
	ErrNotStarted = errors.New("migrations not started: the instance has not started")
	// ErrOnly is returned by start in ModeOnly when the exit function
	// (WithExit) returned instead of ending the process: the migrations
	// were applied and the application must not serve.
	ErrOnly = errors.New("migrations applied in mode only; the application does not serve")
)

// MigrationError is the error of a migration that failed. Its
// transaction, when it ran in one (goose's default), was rolled back, so
// nothing of it is applied and the version table does not list it; the
// migrations before it in the same run stay applied.
type MigrationError struct {
	// Version is the migration's version.
	Version int64
	// File is the migration's file name, such as "00002_orders.sql"; a Go
	// migration registered in code without a file is "Go migration N".
	File string
	// Applied are the migrations applied before it in the same run.
	Applied []Applied
	// Err is what failed; for a statement, errors.As finds the server's
	// *pgconn.PgError in it.
	Err error
}

// Error names the file and version, then the server's SQLSTATE and
// message, then goose's words.
func (e *MigrationError) Error() string {
	var pgErr *pgconn.PgError
	if errors.As(e.Err, &pgErr) {
		return fmt.Sprintf("migration %s (version %d) failed: SQLSTATE %s: %s: %v", e.File, e.Version, pgErr.Code, pgErr.Message, e.Err)
	}
	return fmt.Sprintf("migration %s (version %d) failed: %v", e.File, e.Version, e.Err)
}

// Unwrap returns Err.
func (e *MigrationError) Unwrap() error { return e.Err }

// Applied is one migration applied.
type Applied struct {
	Version  int64
	File     string
	Duration time.Duration
	// Empty is true for a migration with nothing to run, which goose
	// records as applied all the same.
	Empty bool
}

// Migrator applies the migrations of one fs.FS to a database with goose's
// Provider, under goose's lock. Its methods are safe for concurrent use.
type Migrator struct {
	fsys     fs.FS
	cfg      Config
	cfgFuncs []func(*Config)
	instName string
	table    string
	goOpts   []goose.ProviderOption
	logger   *zap.Logger
	// loggerSet is true when WithLogger chose the logger; otherwise the
	// instance's is used once the Migrator starts.
	loggerSet bool
	exit      func(code int)
	target    int64

	mu      sync.Mutex
	handle  instance.Handle
	applied []Applied
	// run is shared by the Migrators of one application, so that ModeOnly
	// ends the process once all of them have applied theirs.
	run *onlyRun
}

// Option changes how New makes a Migrator.
type Option interface{ apply(*Migrator) }

type optionFunc func(*Migrator)

func (f optionFunc) apply(m *Migrator) { f(m) }

// ForInstance makes the migrations those of the Named instance called
// name; without it they are the default instance's (sprocketspg.Module).
// Only Migrations reads it.
func ForInstance(name string) Option {
	return optionFunc(func(m *Migrator) { m.instName = name })
}

// WithConfig changes the Config after it has been read from the
// environment (Migrations) or set by WithConfigValue; set values win over
// the environment's.
func WithConfig(fn func(*Config)) Option {
	return optionFunc(func(m *Migrator) { m.cfgFuncs = append(m.cfgFuncs, fn) })
}

// WithTableName sets the version table; the default is DefaultTableName.
// A name may be schema-qualified ("app.goose_db_version").
func WithTableName(name string) Option {
	return optionFunc(func(m *Migrator) { m.table = name })
}

// WithGoMigrations adds migrations written in Go, with goose's
// goose.NewGoMigration, to those of the fs.FS.
func WithGoMigrations(migrations ...*goose.Migration) Option {
	return optionFunc(func(m *Migrator) { m.goOpts = append(m.goOpts, goose.WithGoMigrations(migrations...)) })
}

// WithProviderOptions passes options to goose's Provider, such as
// goose.WithAllowOutofOrder. Options that set the locker, the table or
// the logger are the Migrator's own.
func WithProviderOptions(opts ...goose.ProviderOption) Option {
	return optionFunc(func(m *Migrator) { m.goOpts = append(m.goOpts, opts...) })
}

// WithLogger sends the Migrator's logs to logger; Migrations uses the
// instance's. Without a logger, New logs nothing.
func WithLogger(logger *zap.Logger) Option {
	return optionFunc(func(m *Migrator) {
		if logger != nil {
			m.logger, m.loggerSet = logger, true
		}
	})
}

// WithExit replaces os.Exit as the way ModeOnly ends the process, for
// tests; when it returns, start fails with an error matching ErrOnly, so
// that the application does not serve.
func WithExit(exit func(code int)) Option {
	return optionFunc(func(m *Migrator) { m.exit = exit })
}

var tableNamePattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// New returns a Migrator of the migrations in fsys: goose's files,
// NNNNN_name.sql with -- +goose Up and -- +goose Down sections, at the top
// of fsys (use fs.Sub for a folder of an embed.FS). It reads the files and
// checks them (versions, names, Go migrations that are registered) but
// does no I/O on a database. Its Config is the defaults, changed by
// WithConfig; Migrations reads the environment first.
func New(fsys fs.FS, opts ...Option) (*Migrator, error) {
	return newMigrator(fsys, Config{}, opts)
}

func newMigrator(fsys fs.FS, cfg Config, opts []Option) (*Migrator, error) {
	if fsys == nil {
		return nil, errors.New("migrate: no fs.FS of migrations")
	}
	m := &Migrator{fsys: fsys, table: DefaultTableName, logger: zap.NewNop(), exit: os.Exit}
	for _, opt := range opts {
		opt.apply(m)
	}
	for _, fn := range m.cfgFuncs {
		fn(&cfg)
	}
	prefix := instance.EnvPrefix(m.instName)
	if err := cfg.validate(prefix); err != nil {
		return nil, err
	}
	m.cfg = cfg.withDefaults()
	if !tableNamePattern.MatchString(m.table) {
		return nil, fmt.Errorf("migrate: table name %q: want an identifier, optionally schema-qualified", m.table)
	}
	// A database/sql handle that never connects: goose reads and checks
	// the migrations when it makes a Provider, before any I/O.
	nodb := sql.OpenDB(noConnector{})
	defer nodb.Close()
	p, err := m.provider(nodb, nil)
	if err != nil {
		return nil, fmt.Errorf("migrate: read migrations: %w", err)
	}
	for _, s := range p.ListSources() {
		m.target = max(m.target, s.Version)
	}
	m.run = &onlyRun{members: []*Migrator{m}}
	return m, nil
}

// Config returns the Migrator's configuration, defaults applied.
func (m *Migrator) Config() Config { return m.cfg }

// Target is the highest version among the migrations.
func (m *Migrator) Target() int64 { return m.target }

// provider makes goose's Provider for db with the Migrator's settings
// and locker (nil for none).
func (m *Migrator) provider(db *sql.DB, extra []goose.ProviderOption) (*goose.Provider, error) {
	opts := []goose.ProviderOption{
		goose.WithTableName(m.table),
		// Each applied migration is logged by Apply, on the instance's
		// logger; goose's own lines would go to stdout.
		goose.WithSlog(slog.New(slog.DiscardHandler)),
	}
	opts = append(opts, m.goOpts...)
	opts = append(opts, extra...)
	return goose.NewProvider(goose.DialectPostgres, db, m.fsys, opts...)
}

// Apply applies the pending migrations to db, each in its own transaction
// unless its file says -- +goose NO TRANSACTION, under the Config's lock,
// within its LockTimeout and Timeout, and returns those it applied, in
// order. A process that finds the lock held waits for it, and then
// applies what is still pending: usually nothing.
//
// A failing migration returns a *MigrationError; a lock that stays held
// an error matching ErrLockTimeout; a run past the Timeout one matching
// ErrTimeout; a ctx that ends first one matching ctx.Err().
func (m *Migrator) Apply(ctx context.Context, db *sql.DB) ([]Applied, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	runCtx, cancel := context.WithTimeoutCause(ctx, m.cfg.Timeout, ErrTimeout)
	defer cancel()
	locker, err := m.locker()
	if err != nil {
		return nil, err
	}
	p, err := m.provider(db, []goose.ProviderOption{locker})
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	began := time.Now()
	results, err := p.Up(runCtx)
	var applied []Applied
	var partial *goose.PartialError
	if errors.As(err, &partial) {
		results = partial.Applied
	}
	for _, r := range results {
		a := Applied{Version: r.Source.Version, File: sourceName(r.Source), Duration: r.Duration, Empty: r.Empty}
		applied = append(applied, a)
		m.logger.Info("migration applied", zap.Int64("version", a.Version), zap.String("file", a.File),
			zap.Duration("duration", a.Duration), zap.Bool("empty", a.Empty))
	}
	if err != nil {
		return applied, m.runError(ctx, runCtx, err, partial, applied)
	}
	if len(applied) == 0 {
		m.logger.Info("schema up to date; no migrations to apply", zap.Int64("target", m.target), zap.Duration("elapsed", time.Since(began)))
	} else {
		m.logger.Info("schema migrated", zap.Int("applied", len(applied)),
			zap.Int64("version", applied[len(applied)-1].Version), zap.Duration("elapsed", time.Since(began)))
	}
	return applied, nil
}

// envPrefix is the prefix of the variables of the Migrator's instance.
func (m *Migrator) envPrefix() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return instance.EnvPrefix(m.instName)
}

// sourceName names a migration in logs and errors: its file's name, or
// "Go migration N" for one registered in code without a file.
func sourceName(s *goose.Source) string {
	if s.Path == "" {
		return fmt.Sprintf("Go migration %d", s.Version)
	}
	return path.Base(s.Path)
}

// runError is the error of a run that goose ended with err.
func (m *Migrator) runError(ctx, runCtx context.Context, err error, partial *goose.PartialError, applied []Applied) error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("%w: the start context's deadline passed before the migrations ended; "+
			"with fx, raise fx.StartTimeout above %s (%s) (%w)", ctx.Err(), m.cfg.Timeout, m.envPrefix()+EnvTimeout, err)
	case ctx.Err() != nil:
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	case errors.Is(context.Cause(runCtx), ErrTimeout):
		err = fmt.Errorf("%w: %s (%s) passed: %w", ErrTimeout, m.cfg.Timeout, m.envPrefix()+EnvTimeout, err)
	}
	if partial != nil {
		return fmt.Errorf("migrate: %w", &MigrationError{
			Version: partial.Failed.Source.Version,
			File:    sourceName(partial.Failed.Source),
			Applied: applied,
			Err:     err,
		})
	}
	return fmt.Errorf("migrate: %w", err)
}

// locker is goose's locker of the Config, wrapped so that a lock that
// stays held is reported as ErrLockTimeout.
func (m *Migrator) locker() (goose.ProviderOption, error) {
	// goose retries every period, at least a second, up to a number of
	// times.
	period := time.Second
	tries := uint64(max(1, (m.cfg.LockTimeout+period-1)/period))
	variable := m.envPrefix() + EnvLockTimeout
	switch m.cfg.Lock {
	case LockTable:
		l, err := lock.NewPostgresTableLocker(lock.WithTableLockTimeout(period, tries))
		if err != nil {
			return nil, fmt.Errorf("migrate: table locker: %w", err)
		}
		return goose.WithLocker(tableLock{Locker: l, timeout: m.cfg.LockTimeout, variable: variable}), nil
	default:
		l, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(uint64(period/time.Second), tries))
		if err != nil {
			return nil, fmt.Errorf("migrate: session locker: %w", err)
		}
		return goose.WithSessionLocker(sessionLock{SessionLocker: l, timeout: m.cfg.LockTimeout, variable: variable}), nil
	}
}

// sessionLock is goose's session locker with an error that says why.
type sessionLock struct {
	lock.SessionLocker
	timeout  time.Duration
	variable string
}

func (l sessionLock) SessionLock(ctx context.Context, conn *sql.Conn) error {
	if err := l.SessionLocker.SessionLock(ctx, conn); err != nil {
		return lockError(ctx, err, "advisory", l.timeout, l.variable)
	}
	return nil
}

// tableLock is goose's table locker with an error that says why.
type tableLock struct {
	lock.Locker
	timeout  time.Duration
	variable string
}

func (l tableLock) Lock(ctx context.Context, db *sql.DB) error {
	if err := l.Locker.Lock(ctx, db); err != nil {
		return lockError(ctx, err, "table", l.timeout, l.variable)
	}
	return nil
}

// lockError says that the lock stayed held, unless ctx ended the wait.
func lockError(ctx context.Context, err error, kind string, timeout time.Duration, variable string) error {
	if ctx.Err() != nil {
		return err
	}
	return fmt.Errorf("%w within %s (%s): another process held the %s lock for all that time: %w",
		ErrLockTimeout, timeout, variable, kind, err)
}

// Applied returns the migrations this Migrator applied when its instance
// started; nil when there were none or it has not run.
func (m *Migrator) Applied() []Applied {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Applied(nil), m.applied...)
}

// Version returns the schema version of the instance's database: the
// highest version in the version table, 0 when it has none. It asks the
// server, through the instance's pool, so a separate job's migrations
// show. Before the instance has started it returns ErrNotStarted.
func (m *Migrator) Version(ctx context.Context) (int64, error) {
	m.mu.Lock()
	h := m.handle
	m.mu.Unlock()
	if h == nil || h.Pool() == nil {
		return 0, ErrNotStarted
	}
	var v *int64
	err := h.Pool().QueryRow(ctx, "SELECT max(version_id) FROM "+m.table).Scan(&v)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "42P01":
		// undefined_table: nothing was ever migrated.
		return 0, nil
	case err != nil:
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%w)", ctxErr, err)
		}
		return 0, fmt.Errorf("migrate: read schema version from %s: %w", m.table, err)
	case v == nil:
		return 0, nil
	}
	return *v, nil
}

// component is the readiness check of the schema version: pass at the
// migrations' target or past it, warn while migrations are pending or the
// version cannot be read (the database's own checks say whether it can
// serve).
func (m *Migrator) component() health.Component {
	return health.Component{Name: ComponentName, Check: func(ctx context.Context) health.ComponentReport {
		v, err := m.Version(ctx)
		if err != nil {
			return health.ComponentReport{Status: health.StatusWarn, Output: err.Error()}
		}
		r := health.ComponentReport{Status: health.StatusPass, ObservedValue: v, ObservedUnit: "version"}
		if v < m.target {
			r.Status = health.StatusWarn
			r.Output = fmt.Sprintf("schema at version %d; migrations go to %d (%s %s)", v, m.target,
				m.envPrefix()+EnvMode, m.cfg.Mode)
		}
		return r
	}}
}

// Extension returns the Migrator as an extension of a sprocketspg
// instance: its Start applies the migrations (per the Config's Mode) over
// connections of their own, made with the instance's settings, to the
// instance's database or to Config.URL, and its readiness check reports
// the schema version. Give it to sprocketspg.New with
// sprocketspg.WithExtension; with fx, Migrations does it.
func (m *Migrator) Extension() instance.Extension {
	return instance.Extension{
		Name:       "migrations",
		Start:      m.start,
		Components: []health.Component{m.component()},
	}
}

// start is the Extension's Start.
func (m *Migrator) start(ctx context.Context, h instance.Handle) error {
	m.mu.Lock()
	m.handle = h
	// Without fx the instance's name is known only now; its variables are
	// the ones errors and the readiness check name.
	m.instName = h.Name()
	m.mu.Unlock()
	if !m.loggerSet {
		m.logger = h.Logger()
	}
	if m.cfg.Mode == ModeOff {
		m.logger.Info("schema migrations off", zap.String("variable", instance.EnvPrefix(h.Name())+EnvMode))
		return nil
	}
	variable := instance.EnvPrefix(h.Name()) + EnvURL
	cc, err := h.ConnConfig(ctx, m.cfg.URL, variable)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	// The instance's statement timeout is for its queries; a migration is
	// bounded by Config.Timeout instead, and keeps whatever the server or
	// role sets.
	delete(cc.RuntimeParams, "statement_timeout")
	db := stdlib.OpenDB(*cc)
	applied, err := m.Apply(ctx, db)
	if cerr := db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("migrate: close migration connections: %w", cerr)
	}
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.applied = applied
	m.mu.Unlock()
	return m.run.done(m, h)
}

// onlyRun ends the process once every Migrator of an application that
// migrates has applied its migrations, when one of them is in ModeOnly.
type onlyRun struct {
	mu       sync.Mutex
	members  []*Migrator
	finished int
}

func (r *onlyRun) done(m *Migrator, h instance.Handle) error {
	r.mu.Lock()
	r.finished++
	only, pending := false, 0
	for _, member := range r.members {
		switch member.cfg.Mode {
		case ModeOnly:
			only = true
			pending++
		case ModeUp:
			pending++
		}
	}
	last := r.finished >= pending
	r.mu.Unlock()
	if !only {
		return nil
	}
	if !last {
		return nil
	}
	m.logger.Info("schema migrated in mode only; exiting without serving",
		zap.String("variable", instance.EnvPrefix(h.Name())+EnvMode))
	if pool := h.Pool(); pool != nil {
		// A clean goodbye to the server before the process ends.
		pool.Close()
	}
	m.exit(0)
	return ErrOnly
}

// noConnector is a database/sql connector that never connects.
type noConnector struct{}

func (noConnector) Connect(context.Context) (driver.Conn, error) {
	return nil, errors.New("migrate: no database")
}

func (noConnector) Driver() driver.Driver { return stdlib.GetDefaultDriver() }
