package health

import (
	"os"
	"time"

	"go.uber.org/zap"
)

const (
	// DefaultCacheWindow is how long a check's result is reused when
	// WithCacheWindow is not given.
	DefaultCacheWindow = time.Second
	// DefaultTimeout bounds a ping when WithTimeout is not given; it is
	// the Python original's three seconds.
	DefaultTimeout = 3 * time.Second

	// Environment variables read by NewChecker for the names the status
	// document reports, as the Python original read them.
	envApplication = "SERVICE"
	envEnvironment = "ENVIRONMENT"
	envVersion     = "VERSION"

	// unknown is reported for a name that is neither given nor in the
	// environment.
	unknown = "unknown"
)

// An Option changes how NewChecker builds a Checker.
type Option interface {
	apply(*options)
}

type options struct {
	cacheWindow time.Duration
	timeout     time.Duration
	application string
	environment string
	version     string
	now         func() time.Time
	logger      *zap.Logger
	replica     Database
	drainDelay  time.Duration
	// name is the main database's, from WithName.
	name string
	// instances are the other databases, from WithInstance, in the order
	// given; NewChecker drops duplicates.
	instances []instanceOption
	// optional holds the names given to OptionalInstance.
	optional map[string]bool
}

// instanceOption is one call of WithInstance.
type instanceOption struct {
	name    string
	db      Database
	replica Database
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithCacheWindow sets how long a check's result is reused; the default
// is DefaultCacheWindow. Probes from load balancers, orchestrators and
// monitoring add up, and under load each ping takes a connection that a
// request could have used. A window of zero or less turns reuse off,
// though concurrent checks still share one ping.
func WithCacheWindow(d time.Duration) Option {
	return optionFunc(func(o *options) {
		o.cacheWindow = max(d, 0)
	})
}

// WithTimeout bounds each ping, including the wait for a connection; the
// default is DefaultTimeout. A value of zero or less keeps the default.
func WithTimeout(d time.Duration) Option {
	return optionFunc(func(o *options) {
		if d > 0 {
			o.timeout = d
		}
	})
}

// WithApplication sets the application name of the status document.
// Without it, or with an empty name, NewChecker reads $SERVICE, and
// reports "unknown" when that is unset or empty.
func WithApplication(name string) Option {
	return optionFunc(func(o *options) { o.application = name })
}

// WithEnvironment sets the environment name of the status document.
// Without it, or with an empty name, NewChecker reads $ENVIRONMENT, and
// reports "unknown" when that is unset or empty.
func WithEnvironment(name string) Option {
	return optionFunc(func(o *options) { o.environment = name })
}

// WithVersion sets the version of the status document. Without it, or
// with an empty v, NewChecker reads $VERSION, and reports "unknown" when
// that is unset or empty.
func WithVersion(v string) Option {
	return optionFunc(func(o *options) { o.version = v })
}

// WithClock makes the Checker read the time from now instead of
// time.Now, for tests of the cache window. It decides when a result
// expires and stamps reports; ping latency is always measured with the
// real clock. A nil now keeps time.Now.
func WithClock(now func() time.Time) Option {
	return optionFunc(func(o *options) {
		if now != nil {
			o.now = now
		}
	})
}

// WithLogger makes the Checker log when the database's health changes
// (pass, warn, fail), not on every check. Without it the Checker logs
// nothing.
func WithLogger(logger *zap.Logger) Option {
	return optionFunc(func(o *options) {
		if logger != nil {
			o.logger = logger
		}
	})
}

// nameOr returns given when it is not empty, else the environment
// variable env when it is not empty, else "unknown".
func nameOr(given, env string) string {
	if given != "" {
		return given
	}
	if v := os.Getenv(env); v != "" {
		return v
	}
	return unknown
}

// WithReplica adds a read replica of the main database (the one given to
// NewChecker) to the checks. Each check pings it too (through its own
// pool, within the same timeout) and reports it under Report.Replica and
// the readiness checks "postgres-replica:connections" and
// "postgres-replica:responseTime" ("postgres-<name>-replica:..." when
// WithName gave the main database a name). A replica that fails turns a
// passing check into warn, never fail: reads fall back to the primary,
// so the service can still serve.
func WithReplica(db Database) Option {
	return optionFunc(func(o *options) { o.replica = db })
}

// WithName names the main database, the one given to NewChecker, as an
// application with several PostgreSQL instances names them. The default
// is "", the application's default instance, whose checks are
// "postgres:connections" and "postgres:responseTime"; a database named
// "orders" has "postgres-orders:connections" and
// "postgres-orders:responseTime", and its replica
// "postgres-orders-replica:...", so that a probe's document says which
// instance is which.
func WithName(name string) Option {
	return optionFunc(func(o *options) { o.name = name })
}

// WithInstance adds another database to the checks under name, with its
// read replica when replica is not nil. Each check pings every database
// concurrently, each within the timeout, with the rules of the main one: a
// saturated pool is warn without a ping, a failing replica turns pass into
// warn. The Checker's verdict is fail when any database that is not
// optional (OptionalInstance) fails. The database's report is in
// Report.Instances, its checks are named as WithName names them, and the
// status document lists it under "instances".
//
// Names are unique within a Checker: a database whose name is already
// taken, by the main database or an earlier WithInstance, is left out, and
// NewChecker logs a warning (WithLogger) rather than fail, since options
// may come from a group that several parts of an application add to. A
// nil db is left out the same way.
func WithInstance(name string, db Database, replica Database) Option {
	return optionFunc(func(o *options) {
		o.instances = append(o.instances, instanceOption{name: name, db: db, replica: replica})
	})
}

// OptionalInstance marks the database named name optional: the main one
// when it has that name (WithName; "" is the unnamed one), else the one
// WithInstance added under it. When an optional database fails, the
// Checker's verdict is warn, not fail: the service stays ready and /readyz
// answers 200, since it can serve without that database, while the
// document still shows the failure. Marking a name that no database has
// is not an error, so that the option may come from a group shared by
// several Checkers.
func OptionalInstance(name string) Option {
	return optionFunc(func(o *options) {
		if o.optional == nil {
			o.optional = map[string]bool{}
		}
		o.optional[name] = true
	})
}
