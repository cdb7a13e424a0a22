package sprocketspg

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"

	"github.com/sprockets/sprocketspg/internal/ctxerr"
)

// ErrNotConnected is matched (errors.Is) by the errors of Pool methods
// called before the pool has started or after it has begun to stop,
// including calls that were waiting for a connection when stop began.
var ErrNotConnected = errors.New("postgres pool is not connected")

// ErrConnectionRejected is matched (errors.Is) by the error of a start-up
// that the server refused for a reason that trying again cannot cure: a
// wrong password (SQLSTATE 28P01), a role that does not exist or no
// pg_hba.conf entry for it (28000), a database that does not exist
// (3D000) or no CONNECT privilege on it (42501). Such a start fails on its
// first attempt; the error also wraps the server's *pgconn.PgError.
var ErrConnectionRejected = errors.New("postgres server rejected the connection")

// ErrConnectTimeout is matched (errors.Is) by the error of a start-up that
// could not connect within Config.ConnectionTimeout. IsConnectionError
// reports it as a connection error even when the last attempt ended with
// a bare context deadline, as it does against a server that accepts
// connections and never answers.
var ErrConnectTimeout = errors.New("postgres server not reachable within the connection timeout")

// SQLSTATE codes the helpers below test for.
// https://www.postgresql.org/docs/current/errcodes-appendix.html
const (
	codeUniqueViolation      = "23505"
	codeForeignKeyViolation  = "23503"
	codeQueryCanceled        = "57014"
	codeWrongObjectType      = "42809"
	codeAdminShutdown        = "57P01"
	codeCrashShutdown        = "57P02"
	codeCannotConnectNow     = "57P03"
	codeTooManyConnections   = "53300"
	codeReadOnlyTransaction  = "25006"
	classConnectionException = "08"

	codeInvalidPassword       = "28P01"
	codeInvalidAuthorization  = "28000"
	codeInvalidCatalogName    = "3D000"
	codeInsufficientPrivilege = "42501"
)

// IsUniqueViolation reports whether err (or any error it wraps) is a
// PostgreSQL unique_violation (SQLSTATE 23505). The original library
// answered these with HTTP 409 Conflict.
func IsUniqueViolation(err error) bool { return hasCode(err, codeUniqueViolation) }

// IsForeignKeyViolation reports whether err is a PostgreSQL
// foreign_key_violation (SQLSTATE 23503), answered with 409 Conflict by the
// original library.
func IsForeignKeyViolation(err error) bool { return hasCode(err, codeForeignKeyViolation) }

// IsQueryTimeout reports whether err means a query ran out of time: the
// server cancelled it (statement_timeout, or an operator's
// pg_cancel_backend, SQLSTATE 57014) or the caller's context deadline
// passed. A caller's context that was cancelled (context.Canceled: the
// client went away) is not a timeout, whether it struck while the query
// waited for a connection or while it ran.
func IsQueryTimeout(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, ErrServerNotResponding) {
		return false
	}
	return hasCode(err, codeQueryCanceled) ||
		errors.Is(err, context.DeadlineExceeded) ||
		pgconn.Timeout(err)
}

// IsConnectionError reports whether err means the server could not be
// reached or the connection was lost: dial and network failures, a closed
// pool (puddle.ErrClosedPool), ErrNotConnected, ErrConnectTimeout, and the SQLSTATEs of a
// server that is shutting down, starting up or out of connections (class
// 08, 57P01, 57P02, 57P03, 53300). The original library answered these
// with 503. The caller's own context ending is not a connection error,
// unless it ended while a connection was being opened.
func IsConnectionError(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrNotConnected) || errors.Is(err, ErrConnectTimeout) || errors.Is(err, puddle.ErrClosedPool) ||
		errors.Is(err, ErrServerNotResponding) {
		return true
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return true
	}
	// The caller's own deadline or cancellation is not the server's fault,
	// even when it struck before the query was sent.
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case codeAdminShutdown, codeCrashShutdown, codeCannotConnectNow, codeTooManyConnections:
			return true
		}
		return len(pgErr.Code) == 5 && pgErr.Code[:2] == classConnectionException
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	// A connection closed underneath a query surfaces as an io error, a
	// closed-conn error, or one pgconn marks safe to retry.
	return pgconn.SafeToRetry(err) || errors.Is(err, pgconn.ErrConnClosed) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

func hasCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// callError is the error a call of the pool returns for err, the error
// pgx gave it, with the rules every Pool and Tx method follows: a call
// that ended because ctx did matches ctx.Err(), however far it had got
// (see ctxerr.Wrap), and a call that was waiting for a connection when
// the pool closed matches ErrNotConnected.
func callError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, puddle.ErrClosedPool) && !errors.Is(err, ErrNotConnected) {
		err = fmt.Errorf("%w: %w", ErrNotConnected, err)
	}
	if ctx.Err() == nil && isReadTimeout(err) && !errors.Is(err, ErrServerNotResponding) {
		// Not the caller's deadline: the response deadline's, or the
		// host watch's for a host that did not answer its probe.
		err = fmt.Errorf("%w: %w", ErrServerNotResponding, err)
	}
	return ctxerr.Wrap(ctx, err)
}

// isReadTimeout reports whether err is a read from the server's socket
// that passed its deadline.
func isReadTimeout(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "read" && opErr.Timeout()
}

// rejection returns the server's error when err is a refusal that
// retrying cannot cure (see ErrConnectionRejected), else nil.
func rejection(err error) *pgconn.PgError {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return nil
	}
	switch pgErr.Code {
	case codeInvalidPassword, codeInvalidAuthorization, codeInvalidCatalogName, codeInsufficientPrivilege:
		return pgErr
	}
	return nil
}

// permanentSetupError reports whether err is a failure on this side of a
// connection attempt that the next attempt would meet again: credentials
// or TLS files that cannot be had, or a server certificate that is not
// trusted.
func permanentSetupError(err error) bool {
	return errors.Is(err, ErrCredentials) || errors.Is(err, ErrTLSFiles) || untrustedServer(err)
}

// untrustedServer reports whether err is the client's refusal of the
// server's certificate (an unknown authority, a name it is not for, one
// expired): what the next attempt would refuse again.
func untrustedServer(err error) bool {
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	return errors.As(err, &unknownAuthority) || errors.As(err, &hostname) || errors.As(err, &invalid)
}
