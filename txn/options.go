package txn

import (
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// Option changes how Run runs a transaction. Build one with Timeout,
// Isolation, ReadOnly, Deferrable, Retries, MetricName or Logger; the zero
// Option changes nothing. When several options set the same thing, the
// last one wins.
//
// An Option is a small value rather than a closure or an interface so that
// passing options to Run allocates nothing: Run sits on the path of every
// transaction.
type Option struct {
	kind   optionKind
	num    int64
	str    string
	logger *zap.Logger
}

type optionKind uint8

const (
	optNone optionKind = iota
	optTimeout
	optIsolation
	optReadOnly
	optDeferrable
	optRetries
	optMetricName
	optLogger
)

// Settings is what a list of options amounts to, as Run sees it. Callers
// that wrap Run (and so need to know, say, the metric name a caller chose)
// get it from Apply.
type Settings struct {
	// Timeout is the statement_timeout of every statement of the
	// transaction; 0 leaves the connection's own setting.
	Timeout time.Duration
	// Isolation is the isolation level; empty leaves the server default.
	Isolation pgx.TxIsoLevel
	// ReadOnly makes the transaction READ ONLY.
	ReadOnly bool
	// Deferrable makes the transaction DEFERRABLE.
	Deferrable bool
	// Retries is how many more times a transaction that failed with a
	// serialization failure or a deadlock is run.
	Retries int
	// MetricName names the transaction in logs.
	MetricName string
	// Logger receives the logs; nil logs nothing.
	Logger *zap.Logger
}

// Apply returns the Settings that opts amount to, applied in order over
// the defaults (no timeout, server default isolation, read-write, not
// deferrable, no retries, no metric name, no logger). It never fails:
// Run validates the result.
func Apply(opts ...Option) Settings {
	var s Settings
	for i := range opts {
		opts[i].applyTo(&s)
	}
	return s
}

func (o *Option) applyTo(s *Settings) {
	switch o.kind {
	case optTimeout:
		s.Timeout = time.Duration(o.num)
	case optIsolation:
		s.Isolation = pgx.TxIsoLevel(o.str)
	case optReadOnly:
		s.ReadOnly = o.num != 0
	case optDeferrable:
		s.Deferrable = o.num != 0
	case optRetries:
		s.Retries = int(o.num)
	case optMetricName:
		s.MetricName = o.str
	case optLogger:
		s.Logger = o.logger
	}
}

// Timeout sets the server-side statement_timeout of every statement of the
// transaction to d, rounded up to a whole millisecond. On a db with
// BeginTx (a pool or a connection) it is sent in the same message as
// BEGIN, so it costs no round trip, only the server's few microseconds
// of running one more statement; on a db with only Begin it is a
// statement of its own. It ends with the transaction, so the connection
// returns to the pool with its own setting. A statement that runs longer
// fails with SQLSTATE 57014 (query_canceled) and the transaction is rolled
// back. 0, the default, leaves the connection's setting; Run fails when d
// is negative.
//
// In a nested Run (db is a pgx.Tx) the timeout is set after the savepoint
// and, when the nested Run succeeds, set back to the value it had before,
// so it never outlives the nested Run; reading, setting and restoring it
// cost three round trips more.
func Timeout(d time.Duration) Option {
	return Option{kind: optTimeout, num: int64(d)}
}

// Isolation sets the isolation level of the transaction: one of
// pgx.Serializable, pgx.RepeatableRead, pgx.ReadCommitted or
// pgx.ReadUncommitted. Run fails for any other value, and in a nested Run,
// since a savepoint cannot change it.
func Isolation(level pgx.TxIsoLevel) Option {
	return Option{kind: optIsolation, str: string(level)}
}

// ReadOnly makes the transaction READ ONLY: a statement that writes fails
// with SQLSTATE 25006. Run fails when ReadOnly is given to a nested Run,
// since a savepoint cannot change the access mode.
func ReadOnly() Option {
	return Option{kind: optReadOnly, num: 1}
}

// Deferrable makes the transaction DEFERRABLE, which only matters for a
// SERIALIZABLE READ ONLY one: it waits for a snapshot that cannot fail
// with a serialization failure. Run fails when Deferrable is given to a
// nested Run.
func Deferrable() Option {
	return Option{kind: optDeferrable, num: 1}
}

// Retries makes Run run the whole transaction again, from BEGIN, up to n
// more times when it fails with a serialization failure (SQLSTATE 40001)
// or a deadlock (40P01), whether from fn or from COMMIT, after a short
// jittered exponential backoff. Other errors are never retried. fn must
// therefore be safe to run more than once: it must not keep effects of a
// failed attempt outside the database. When every attempt fails that way
// Run returns a *RetryError. The default is 0: such an error is returned
// as it is. Run fails when n is negative, and when n > 0 in a nested Run,
// since only the outermost transaction can be run again.
func Retries(n int) Option {
	return Option{kind: optRetries, num: int64(n)}
}

// MetricName names the transaction in the logs Run writes.
func MetricName(name string) Option {
	return Option{kind: optMetricName, str: name}
}

// Logger sends Run's logs to l: each retry at Info, each transaction
// (metric name, duration, attempts, error) at Debug. The default, and a
// nil l, log nothing.
func Logger(l *zap.Logger) Option {
	return Option{kind: optLogger, logger: l}
}
