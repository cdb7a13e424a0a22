// Package ctxerr makes an error that a caller's context caused say so.
//
// When a caller's context ends while its statement runs, pgx asks the
// server to cancel the statement, and the caller gets the server's answer:
// SQLSTATE 57014, "canceling statement due to user request", which does not
// match context.Canceled or context.DeadlineExceeded. Had the context ended
// a moment earlier, while the call waited for a connection, the caller
// would have got the context's error. Wrap removes that dependence on
// timing, in one place for every package of the module.
package ctxerr

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// codeQueryCanceled is the SQLSTATE of a statement the server cancelled,
// on a cancel request or its statement_timeout.
const codeQueryCanceled = "57014"

// Wrap returns err unchanged when ctx has not ended, when err already
// matches ctx.Err(), or when err is a server error other than a
// cancelled statement (a unique violation that came back as the context
// ended was not caused by it). Otherwise the call ended because ctx did,
// and Wrap returns an error matching both ctx.Err() and err, so
// errors.Is(err, context.DeadlineExceeded) holds and errors.As still finds
// the *pgconn.PgError.
func Wrap(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	ctxErr := ctx.Err()
	if ctxErr == nil || errors.Is(err, ctxErr) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code != codeQueryCanceled {
		return err
	}
	return fmt.Errorf("%w: %w", ctxErr, err)
}
