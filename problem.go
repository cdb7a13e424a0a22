package sprocketspg

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"
)

// ProblemTypeBase prefixes the type URI of every Problem this package
// builds; the rest is the problem's slug, such as "unique-violation".
const ProblemTypeBase = "https://github.com/sprockets/sprocketspg/problems/"

// Problem is an RFC 9457 problem detail for a database error, ready to be
// written as application/problem+json.
type Problem struct {
	// Type identifies the kind of problem (ProblemTypeBase plus a slug).
	Type string `json:"type"`
	// Title is the original library's short description, such as
	// "Unique Violation".
	Title string `json:"title"`
	// Status is the HTTP status code.
	Status int `json:"status"`
	// Detail explains the occurrence from the error's structured fields
	// only (SQLSTATE, constraint, table, column); never the server's
	// message, which can quote query arguments.
	Detail string `json:"detail,omitempty"`
	// Instance optionally identifies the occurrence, such as a request ID.
	Instance string `json:"instance,omitempty"`
	// SQLState is the PostgreSQL error code, when there is one.
	SQLState string `json:"sqlstate,omitempty"`
}

// StatusClientClosedRequest is the status of the Problem for a call whose
// context was cancelled, as when the HTTP client went away: 499, the code
// nginx logs for a client that closed its connection first. No client
// reads it; it keeps logs and metrics from counting the abandoned request
// as a server error or a timeout.
const StatusClientClosedRequest = 499

// ClassifyError maps a database error to the HTTP status and title the
// Python original's on_postgres_error used:
//
//	cannot connect                          503 Database Connection Error
//	no free connection (ErrPoolExhausted)   503 Database Busy
//	query timeout                           500 Query Timeout
//	foreign key violation                   409 Foreign Key Violation
//	unique violation                        409 Unique Violation
//	SQLSTATE class 08, 53 or 57 (not 57014) 503 Database Error
//	any other PostgreSQL error              500 Database Error
//
// A query timeout is the server's statement_timeout or an operator's
// pg_cancel_backend (SQLSTATE 57014), or a caller's context deadline that
// passed, whether the call was waiting for a connection or running. A
// caller's context that was cancelled (context.Canceled, the client went
// away) is neither a timeout nor the database's fault: it is 499 Client
// Closed Request (StatusClientClosedRequest), at whatever stage it struck.
//
// It returns false for errors that are not database errors, which the
// caller handles as it would without this package.
func ClassifyError(err error) (Problem, bool) {
	if err == nil {
		return Problem{}, false
	}
	if errors.Is(err, context.Canceled) {
		return newProblem("client-closed-request", "Client Closed Request", StatusClientClosedRequest,
			"the caller cancelled the request before the database answered", ""), true
	}
	connectionError := newProblem("database-connection-error", "Database Connection Error",
		http.StatusServiceUnavailable, "the database could not be reached", "")
	// A refused connection may carry the server's SQLSTATE (too many
	// connections, starting up); it is still a failure to connect.
	if errors.Is(err, ErrPoolExhausted) {
		return newProblem("pool-exhausted", "Database Busy", http.StatusServiceUnavailable,
			"every database connection stayed busy for longer than the acquire timeout", ""), true
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) || errors.Is(err, ErrNotConnected) || errors.Is(err, ErrConnectTimeout) {
		return connectionError, true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && !errors.Is(err, context.DeadlineExceeded) {
		return classifyPgError(pgErr), true
	}
	switch {
	case IsConnectionError(err):
		return connectionError, true
	case IsQueryTimeout(err):
		// The same answer whether the deadline struck while the call
		// waited for a connection or after the server had the statement.
		return newProblem("query-timeout", "Query Timeout", http.StatusInternalServerError,
			"the query did not finish within its time limit", ""), true
	}
	return Problem{}, false
}

func classifyPgError(e *pgconn.PgError) Problem {
	detail := describePgError(e)
	switch {
	case e.Code == codeQueryCanceled:
		return newProblem("query-timeout", "Query Timeout", http.StatusInternalServerError, detail, e.Code)
	case e.Code == codeForeignKeyViolation:
		return newProblem("foreign-key-violation", "Foreign Key Violation", http.StatusConflict, detail, e.Code)
	case e.Code == codeUniqueViolation:
		return newProblem("unique-violation", "Unique Violation", http.StatusConflict, detail, e.Code)
	}
	switch e.Code[:min(2, len(e.Code))] {
	case classConnectionException, "53", "57":
		return newProblem("database-error", "Database Error", http.StatusServiceUnavailable, detail, e.Code)
	}
	return newProblem("database-error", "Database Error", http.StatusInternalServerError, detail, e.Code)
}

func newProblem(slug, title string, status int, detail, code string) Problem {
	return Problem{Type: ProblemTypeBase + slug, Title: title, Status: status, Detail: detail, SQLState: code}
}

// describePgError builds a detail from fields that name schema objects,
// never from Message or Detail, which may hold row values.
func describePgError(e *pgconn.PgError) string {
	s := "the database reported SQLSTATE " + e.Code
	if e.ConstraintName != "" {
		s += " on constraint " + strconv.Quote(e.ConstraintName)
	}
	if e.TableName != "" {
		s += " of table " + strconv.Quote(e.TableName)
	}
	if e.ColumnName != "" {
		s += " in column " + strconv.Quote(e.ColumnName)
	}
	return s
}

// A ProblemMapper adjusts the Problem written for err, as overriding
// on_postgres_error did in the original: return a changed Problem, or false
// to swallow the error and write nothing.
type ProblemMapper func(ctx context.Context, err error, p Problem) (Problem, bool)

// WriteProblem writes err as an application/problem+json response when
// ClassifyError recognises it and reports whether it wrote one. mappers,
// applied in order, may change or swallow the problem; a handler passes
// its own to override the mapping for itself alone.
//
// WriteProblem returns false, writing nothing, for errors that are not
// database errors and for errors a mapper swallowed.
func WriteProblem(w http.ResponseWriter, r *http.Request, err error, mappers ...ProblemMapper) bool {
	p, ok := ClassifyError(err)
	if !ok {
		return false
	}
	for _, m := range mappers {
		if p, ok = m(r.Context(), err, p); !ok {
			return false
		}
	}
	body, jerr := json.Marshal(p)
	if jerr != nil {
		// Problem holds only strings and an int; this cannot fail, but a
		// response must still go out.
		http.Error(w, p.Title, p.Status)
		return true
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.Status)
	_, _ = w.Write(body)
	return true
}
