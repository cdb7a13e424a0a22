package txn

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg/internal/ctxerr"
)

// Beginner starts a transaction. *pgxpool.Pool, *pgx.Conn and pgx.Tx
// satisfy it; on a pgx.Tx, Begin makes a savepoint.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// txBeginner is what *pgxpool.Pool and *pgx.Conn offer beyond Beginner:
// beginning with options, which lets Run send its own BEGIN.
type txBeginner interface {
	BeginTx(ctx context.Context, txOptions pgx.TxOptions) (pgx.Tx, error)
}

const (
	// rollbackTimeout bounds a ROLLBACK sent after the caller's context
	// ended: long enough for a server under load, short enough that a
	// dead one does not hold the caller.
	rollbackTimeout = 5 * time.Second

	backoffBase = 5 * time.Millisecond
	backoffMax  = 200 * time.Millisecond
)

// SQLSTATE codes of the failures that running the transaction again can
// cure.
const (
	codeSerializationFailure = "40001"
	codeDeadlockDetected     = "40P01"
)

// RetryError is returned by Run when every attempt allowed by Retries
// failed with a serialization failure or a deadlock. Err is the last
// attempt's error.
type RetryError struct {
	// Attempts is how many times the transaction ran.
	Attempts int
	// Err is the error of the last attempt.
	Err error
}

// Error says how many attempts failed and why the last one did.
func (e *RetryError) Error() string {
	msg := "transaction failed after " + strconv.Itoa(e.Attempts) + " attempts"
	if e.Err == nil {
		return msg
	}
	return msg + ": " + e.Err.Error()
}

// Unwrap returns the last attempt's error, so errors.As finds the
// *pgconn.PgError in it.
func (e *RetryError) Unwrap() error { return e.Err }

// IsRetryable reports whether err, or an error it wraps, is a PostgreSQL
// serialization failure (SQLSTATE 40001) or deadlock (40P01): failures
// after which running the whole transaction again can succeed.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	return pgErr.Code == codeSerializationFailure || pgErr.Code == codeDeadlockDetected
}

// Run runs fn in a transaction on db. It begins the transaction, calls fn
// with it, and commits when fn returns nil. It rolls back when fn returns
// an error, when fn panics (the panic then goes on with its own value) and
// when ctx has ended by the time fn returns (a statement running when ctx
// ends fails, as pgx cancels it); the connection is then back to its own
// state: no open transaction and its own statement_timeout. fn must not commit or roll
// back tx itself, nor keep it after returning.
//
// When db is a pgx.Tx, Run makes a savepoint instead: a failure rolls back
// only what fn did, and a success releases the savepoint, leaving the
// outer transaction to commit. Isolation, ReadOnly, Deferrable and Retries
// cannot apply to a savepoint, and Run fails if one is given.
//
// Run returns fn's error as it is; an error of BEGIN or COMMIT wrapped with
// the operation's name (a COMMIT that found the transaction aborted gives
// pgx.ErrTxCommitRollback, a deferred constraint failing at commit its
// *pgconn.PgError); ctx's error, wrapped, when ctx ended after fn returned
// nil; and, with Retries, a *RetryError when every attempt failed with a
// serialization failure or a deadlock. Whenever the attempt ended because
// ctx did, however far it had got, the error matches ctx.Err() (and still
// wraps the server's *pgconn.PgError when there is one). A failed ROLLBACK
// is logged, not returned: pgx closes such a connection, so it never
// returns to a pool.
func Run(ctx context.Context, db Beginner, fn func(ctx context.Context, tx pgx.Tx) error, opts ...Option) error {
	s := Apply(opts...)
	_, nested := db.(pgx.Tx)
	if err := validate(&s, nested); err != nil {
		return err
	}

	// The clock is read only for the debug line that reports the time.
	var began time.Time
	if s.Logger != nil && s.Logger.Core().Enabled(zap.DebugLevel) {
		began = time.Now()
	}
	attempts := 1
	var err error
	if nested {
		err = runSavepoint(ctx, db, fn, &s)
	} else {
		for {
			err = runOnce(ctx, db, fn, &s)
			if err == nil || attempts > s.Retries || !IsRetryable(err) {
				break
			}
			if werr := wait(ctx, &s, attempts, err); werr != nil {
				err = werr
				break
			}
			attempts++
		}
		if s.Retries > 0 && attempts > s.Retries && IsRetryable(err) {
			err = &RetryError{Attempts: attempts, Err: err}
		}
	}

	if !began.IsZero() {
		if ce := s.Logger.Check(zap.DebugLevel, "transaction"); ce != nil {
			ce.Write(
				zap.String("metric_name", s.MetricName),
				zap.Duration("duration", time.Since(began)),
				zap.Int("attempts", attempts),
				zap.Error(err),
			)
		}
	}
	// A statement cancelled because ctx ended comes back as the server's
	// 57014; the caller is told it was its own context.
	return ctxerr.Wrap(ctx, err)
}

// validate checks what the server would otherwise reject mid-way, or what
// would be silently lost on a savepoint.
func validate(s *Settings, nested bool) error {
	if s.Timeout < 0 {
		return fmt.Errorf("transaction options: negative timeout %v", s.Timeout)
	}
	if s.Retries < 0 {
		return fmt.Errorf("transaction options: negative retries %d", s.Retries)
	}
	switch s.Isolation {
	case "", pgx.Serializable, pgx.RepeatableRead, pgx.ReadCommitted, pgx.ReadUncommitted:
	default:
		// The level is written into the BEGIN we send; only the known ones
		// may go there.
		return fmt.Errorf("transaction options: unknown isolation level %q", s.Isolation)
	}
	if !nested {
		return nil
	}
	switch {
	case s.Isolation != "":
		return errors.New("nested transaction: Isolation cannot apply to a savepoint")
	case s.ReadOnly:
		return errors.New("nested transaction: ReadOnly cannot apply to a savepoint")
	case s.Deferrable:
		return errors.New("nested transaction: Deferrable cannot apply to a savepoint")
	case s.Retries > 0:
		return errors.New("nested transaction: Retries cannot apply to a savepoint; give them to the outermost Run")
	}
	return nil
}

// runOnce is one attempt: BEGIN, fn, COMMIT or ROLLBACK.
func runOnce(ctx context.Context, db Beginner, fn func(context.Context, pgx.Tx) error, s *Settings) error {
	tx, err := begin(ctx, db, s)
	if err != nil {
		return err
	}

	// Without recover: a panic, or runtime.Goexit, in fn goes on unchanged
	// after the rollback, with its value and stack.
	done := false
	defer func() {
		if !done {
			rollback(ctx, tx, s)
		}
	}()

	if err := fn(ctx, tx); err != nil {
		done = true
		rollback(ctx, tx, s)
		return err
	}
	if err := ctx.Err(); err != nil {
		// COMMIT with an ended ctx would fail without reaching the server
		// and pgx would then close the connection; roll back cleanly.
		done = true
		rollback(ctx, tx, s)
		return fmt.Errorf("commit transaction: %w", err)
	}
	done = true
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit transaction: %w", err)
	}
	return nil
}

// begin starts the transaction with the settings, in one round trip.
func begin(ctx context.Context, db Beginner, s *Settings) (pgx.Tx, error) {
	plain := s.Isolation == "" && !s.ReadOnly && !s.Deferrable && s.Timeout == 0
	tb, ok := db.(txBeginner)
	switch {
	case ok:
		opts := pgx.TxOptions{IsoLevel: s.Isolation}
		if s.ReadOnly {
			opts.AccessMode = pgx.ReadOnly
		}
		if s.Deferrable {
			opts.DeferrableMode = pgx.Deferrable
		}
		if s.Timeout > 0 {
			// BeginQuery replaces the BEGIN pgx would build, and a
			// statement without arguments goes out as one simple-protocol
			// Query message, so BEGIN and SET LOCAL share a round trip.
			opts.BeginQuery = beginQuery(s)
		}
		tx, err := tb.BeginTx(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("begin transaction: %w", err)
		}
		return tx, nil
	case plain:
		tx, err := db.Begin(ctx)
		if err != nil {
			return nil, fmt.Errorf("begin transaction: %w", err)
		}
		return tx, nil
	case s.Isolation != "" || s.ReadOnly || s.Deferrable:
		return nil, fmt.Errorf("begin transaction: %T cannot take transaction options", db)
	}

	// A Beginner that only has Begin: the timeout costs a statement of its
	// own.
	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin transaction: %w", err)
	}
	if _, err := tx.Exec(ctx, setLocalTimeout(s.Timeout)); err != nil {
		rollback(ctx, tx, s)
		return nil, fmt.Errorf("set transaction timeout: %w", err)
	}
	return tx, nil
}

// beginKey is what a BEGIN with a statement timeout depends on.
type beginKey struct {
	isolation  pgx.TxIsoLevel
	readOnly   bool
	deferrable bool
	millis     int64
}

type beginEntry struct {
	key beginKey
	sql string
}

// recentBegins keeps the last BEGIN strings built, one per slot, so that
// the transactions of a service, which use a few timeouts, do not each
// allocate theirs: an allocation per transaction shows in its time.
var recentBegins [8]atomic.Pointer[beginEntry]

// beginQuery renders BEGIN with the settings followed by SET LOCAL
// statement_timeout, as one string.
func beginQuery(s *Settings) string {
	key := beginKey{isolation: s.Isolation, readOnly: s.ReadOnly, deferrable: s.Deferrable, millis: timeoutMillis(s.Timeout)}
	slot := &recentBegins[uint64(key.millis)%uint64(len(recentBegins))]
	if e := slot.Load(); e != nil && e.key == key {
		return e.sql
	}
	sql := buildBeginQuery(s)
	slot.Store(&beginEntry{key: key, sql: sql})
	return sql
}

// buildBeginQuery is beginQuery without the cache.
func buildBeginQuery(s *Settings) string {
	// Room for the longest: begin isolation level read uncommitted read
	// only deferrable; set local statement_timeout = <19 digits>.
	var room [128]byte
	buf := append(room[:0], "begin"...)
	if s.Isolation != "" {
		buf = append(buf, " isolation level "...)
		buf = append(buf, s.Isolation...)
	}
	if s.ReadOnly {
		buf = append(buf, " read only"...)
	}
	if s.Deferrable {
		buf = append(buf, " deferrable"...)
	}
	buf = append(buf, "; set local statement_timeout = "...)
	buf = strconv.AppendInt(buf, timeoutMillis(s.Timeout), 10)
	return string(buf)
}

func setLocalTimeout(d time.Duration) string {
	return "set local statement_timeout = " + strconv.FormatInt(timeoutMillis(d), 10)
}

// timeoutMillis rounds d up to whole milliseconds, the unit of
// statement_timeout, so a positive timeout never becomes 0 (no timeout).
func timeoutMillis(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// runSavepoint runs fn in a savepoint of the transaction db.
func runSavepoint(ctx context.Context, db Beginner, fn func(context.Context, pgx.Tx) error, s *Settings) error {
	sp, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin savepoint: %w", err)
	}
	done := false
	defer func() {
		if !done {
			rollback(ctx, sp, s)
		}
	}()

	// SET LOCAL lasts until the outer transaction ends: ROLLBACK TO
	// SAVEPOINT undoes it, RELEASE SAVEPOINT does not, so on success the
	// previous value is put back by hand.
	var previous string
	if s.Timeout > 0 {
		if err := sp.QueryRow(ctx, "show statement_timeout").Scan(&previous); err != nil {
			done = true
			rollback(ctx, sp, s)
			return fmt.Errorf("read savepoint timeout: %w", err)
		}
		if _, err := sp.Exec(ctx, setLocalTimeout(s.Timeout)); err != nil {
			done = true
			rollback(ctx, sp, s)
			return fmt.Errorf("set savepoint timeout: %w", err)
		}
	}

	if err := fn(ctx, sp); err != nil {
		done = true
		rollback(ctx, sp, s)
		return err
	}
	if err := ctx.Err(); err != nil {
		done = true
		rollback(ctx, sp, s)
		return fmt.Errorf("release savepoint: %w", err)
	}
	if s.Timeout > 0 {
		if _, err := sp.Exec(ctx, "select set_config('statement_timeout', $1, true)", previous); err != nil {
			done = true
			rollback(ctx, sp, s)
			return fmt.Errorf("restore savepoint timeout: %w", err)
		}
	}
	done = true
	if err := sp.Commit(ctx); err != nil {
		return fmt.Errorf("release savepoint: %w", err)
	}
	return nil
}

// rollback rolls tx back on a context that ctx's end does not cancel (it
// keeps ctx's values), so that a transaction whose ctx has ended is still
// rolled back and its connection freed.
func rollback(ctx context.Context, tx pgx.Tx, s *Settings) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	if err := tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) && s.Logger != nil {
		s.Logger.Warn("rollback transaction",
			zap.String("metric_name", s.MetricName),
			zap.Error(err),
		)
	}
}

// wait sleeps before attempt+1, with full jitter over an exponential
// backoff so that transactions that collided do not collide again. It
// returns an error when ctx ends first.
func wait(ctx context.Context, s *Settings, attempt int, cause error) error {
	ceiling := backoffMax
	if attempt < 8 {
		ceiling = min(backoffBase<<(attempt-1), backoffMax)
	}
	// Half fixed, half random: never a zero wait, never in lockstep.
	d := ceiling/2 + rand.N(ceiling/2+1)
	if s.Logger != nil {
		s.Logger.Info("retrying transaction",
			zap.String("metric_name", s.MetricName),
			zap.Int("attempt", attempt),
			zap.Duration("backoff", d),
			zap.Error(cause),
		)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("retry transaction after %d attempts: %w (last error: %w)", attempt, ctx.Err(), cause)
	}
}
