package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/txn"
)

// timeoutErrorLimit is the statement_timeout of GET /timeout-error, well
// below the two seconds its query sleeps.
const timeoutErrorLimit = 100 * time.Millisecond

// maxBody bounds request bodies; the service only ever reads small JSON.
const maxBody = 1 << 16

// handlers holds what the endpoints need.
type handlers struct {
	db     *sprocketspg.Pool
	logger *zap.Logger
}

// newMux routes every endpoint of the service.
func newMux(db *sprocketspg.Pool, checker *health.Checker, metrics metricsHandler, logger *zap.Logger) *http.ServeMux {
	h := &handlers{db: db, logger: logger}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /callproc", h.callproc)
	mux.HandleFunc("GET /count", h.getCount)
	mux.HandleFunc("POST /count", h.bumpCount)
	mux.HandleFunc("GET /execute", h.execute)
	mux.HandleFunc("GET /multi-row", h.getMultiRow)
	mux.HandleFunc("POST /multi-row", h.toggleMultiRow)
	mux.HandleFunc("GET /no-row", h.noRow)
	mux.HandleFunc("GET /row-count-no-rows", h.rowCountNoRows)
	mux.HandleFunc("POST /transaction", h.createInTransaction)
	mux.HandleFunc("GET /transaction/{id}", h.getTransaction)
	mux.HandleFunc("GET /timeout-error", h.timeoutError)
	mux.HandleFunc("GET /unhandled-exception", h.unhandledException)
	health.Register(mux, checker)
	mux.Handle("GET /metrics", metrics)
	return mux
}

// result is a QueryResult as the endpoints answer it, so that its rules
// show: row is set only when exactly one row came back, rows is [] (never
// null) when none did.
type result struct {
	Count int64            `json:"count"`
	Row   map[string]any   `json:"row"`
	Rows  []map[string]any `json:"rows"`
}

func newResult(r sprocketspg.QueryResult) result {
	return result{Count: r.RowCount, Row: r.Row, Rows: r.Rows}
}

// callproc answers a fresh UUID from the schema's new_id() function, as
// the original's /callproc did from uuid_generate_v4().
func (h *handlers) callproc(w http.ResponseWriter, r *http.Request) {
	res, err := h.db.Callproc(sprocketspg.WithMetricName(r.Context(), "callproc"), "new_id")
	if err != nil {
		h.databaseError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"value": res.Row["new_id"]})
}

// getCount answers every counter of query_count.
func (h *handlers) getCount(w http.ResponseWriter, r *http.Request) {
	res, err := h.db.Execute(sprocketspg.WithMetricName(r.Context(), "count-get"),
		"SELECT key, last_updated_at, count FROM public.query_count ORDER BY key")
	if err != nil {
		h.databaseError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newResult(res))
}

// bumpCount adds one to the 'test' counter and answers it.
func (h *handlers) bumpCount(w http.ResponseWriter, r *http.Request) {
	res, err := h.db.Execute(sprocketspg.WithMetricName(r.Context(), "count-bump"), bumpCountSQL, "test")
	if err != nil {
		h.databaseError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res.Row)
}

// bumpCountSQL adds one to the counter named $1, creating it when missing.
const bumpCountSQL = `
INSERT INTO public.query_count (key, last_updated_at, count)
     VALUES ($1, now(), 1)
ON CONFLICT (key) DO UPDATE
        SET count = query_count.count + 1, last_updated_at = now()
  RETURNING key, last_updated_at, count`

// execute echoes ?value= through the database. ?timeout= (seconds, or a
// Go duration) bounds the query with a context deadline; when it passes,
// the server is asked to cancel the query and the answer is 500 Query
// Timeout.
func (h *handlers) execute(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !q.Has("value") {
		writeError(w, http.StatusBadRequest, "Bad Request", "the query parameter value is required")
		return
	}
	ctx := sprocketspg.WithMetricName(r.Context(), "execute")
	if t := q.Get("timeout"); t != "" {
		d, err := parseTimeout(t)
		if err != nil {
			writeError(w, http.StatusBadRequest, "Bad Request", err.Error())
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	res, err := h.db.Execute(ctx, "SELECT $1::text AS value", q.Get("value"))
	if err != nil {
		h.databaseError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"value": res.Row["value"]})
}

// parseTimeout reads seconds ("1.5"), as the original's timeout argument
// was, or a Go duration ("1500ms").
func parseTimeout(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		secs, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil {
			return 0, fmt.Errorf("timeout=%q: want seconds (1.5) or a duration (1500ms)", s)
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d <= 0 {
		return 0, fmt.Errorf("timeout=%q: must be more than zero", s)
	}
	return d, nil
}

// getMultiRow answers every row of test.
func (h *handlers) getMultiRow(w http.ResponseWriter, r *http.Request) {
	res, err := h.db.Execute(sprocketspg.WithMetricName(r.Context(), "multi-row-get"),
		"SELECT * FROM public.test ORDER BY created_at, value, id")
	if err != nil {
		h.databaseError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newResult(res))
}

// toggleMultiRow flips the toggle of every row of test and answers the
// changed rows.
func (h *handlers) toggleMultiRow(w http.ResponseWriter, r *http.Request) {
	res, err := h.db.Execute(sprocketspg.WithMetricName(r.Context(), "multi-row-toggle"),
		"UPDATE public.test SET toggle = NOT toggle, last_modified_at = now() RETURNING *")
	if err != nil {
		h.databaseError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newResult(res))
}

// noRow runs a query that finds nothing: count 0, row null, rows [].
func (h *handlers) noRow(w http.ResponseWriter, r *http.Request) {
	res, err := h.db.Execute(sprocketspg.WithMetricName(r.Context(), "no-row"),
		"SELECT * FROM information_schema.tables WHERE table_schema = $1", "no_such_schema")
	if err != nil {
		h.databaseError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newResult(res))
}

// rowCountNoRows inserts five rows with statements that return none, to
// show that RowCount then counts the rows affected.
func (h *handlers) rowCountNoRows(w http.ResponseWriter, r *http.Request) {
	ctx := sprocketspg.WithMetricName(r.Context(), "row-count-no-rows")
	var total int64
	for i := range 5 {
		res, err := h.db.Execute(ctx, "INSERT INTO public.test (id, value) VALUES (public.new_id(), $1)",
			"row-count-no-rows "+strconv.Itoa(i+1))
		if err != nil {
			h.databaseError(w, r, err)
			return
		}
		if res.RowCount != 1 || len(res.Rows) != 0 {
			h.internalError(w, fmt.Errorf("INSERT reported %d rows affected and %d returned, want 1 and 0",
				res.RowCount, len(res.Rows)))
			return
		}
		total += res.RowCount
	}
	writeJSON(w, http.StatusOK, map[string]any{"count": total})
}

// transactionRequest is the body of POST /transaction.
type transactionRequest struct {
	ID    uuid.UUID `json:"id"`
	Value string    `json:"value"`
}

// createInTransaction bumps the 'transaction' counter and inserts the
// row, in one transaction. The counter comes first on purpose: when the
// insert fails (a duplicate id is a unique violation, answered 409), the
// bump is rolled back with it and the counter is unchanged.
func (h *handlers) createInTransaction(w http.ResponseWriter, r *http.Request) {
	var req transactionRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "Bad Request", "want a JSON object {\"id\": uuid, \"value\": text}: "+err.Error())
		return
	}
	if req.ID == uuid.Nil {
		writeError(w, http.StatusBadRequest, "Bad Request", "id is required")
		return
	}
	ctx := sprocketspg.WithMetricName(r.Context(), "transaction")
	var count any
	err := h.db.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		res, err := tx.Execute(ctx, bumpCountSQL, "transaction")
		if err != nil {
			return err
		}
		count = res.Row["count"]
		_, err = tx.Execute(ctx, "INSERT INTO public.test (id, value) VALUES ($1, $2)", req.ID, req.Value)
		return err
	})
	if err != nil {
		h.databaseError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"count": count, "id": req.ID, "value": req.Value})
}

// getTransaction answers the row of test with the id in the path, 404 when
// there is none.
func (h *handlers) getTransaction(w http.ResponseWriter, r *http.Request) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "Bad Request", "the id in the path is not a UUID")
		return
	}
	res, err := h.db.Execute(sprocketspg.WithMetricName(r.Context(), "transaction-get"),
		"SELECT * FROM public.test WHERE id = $1", id)
	if err != nil {
		h.databaseError(w, r, err)
		return
	}
	if res.Row == nil {
		writeError(w, http.StatusNotFound, "Not Found", "no row with id "+id.String())
		return
	}
	writeJSON(w, http.StatusOK, res.Row)
}

// timeoutError runs a query longer than its transaction's
// statement_timeout. The server cancels it (SQLSTATE 57014), which
// WriteProblem answers as the original did: 500 Query Timeout.
func (h *handlers) timeoutError(w http.ResponseWriter, r *http.Request) {
	ctx := sprocketspg.WithMetricName(r.Context(), "timeout-error")
	err := h.db.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.Execute(ctx, "SELECT pg_sleep(2)")
		return err
	}, txn.Timeout(timeoutErrorLimit), txn.ReadOnly())
	if err == nil {
		h.internalError(w, errors.New("pg_sleep(2) finished within its timeout"))
		return
	}
	if !sprocketspg.IsQueryTimeout(err) {
		h.logger.Warn("timeout-error failed otherwise than by timing out", zap.Error(err))
	}
	h.databaseError(w, r, err)
}

// unhandledException divides by zero. The default mapping answers an
// unexpected database error with 500; this handler alone answers it with
// 422, as overriding on_postgres_error in one handler did.
func (h *handlers) unhandledException(w http.ResponseWriter, r *http.Request) {
	_, err := h.db.Execute(sprocketspg.WithMetricName(r.Context(), "unhandled-exception"), "SELECT 100 / 0")
	if err == nil {
		h.internalError(w, errors.New("100 / 0 did not fail"))
		return
	}
	h.databaseError(w, r, err, func(_ context.Context, _ error, p sprocketspg.Problem) (sprocketspg.Problem, bool) {
		if p.SQLState == "22012" { // division_by_zero
			p.Status = http.StatusUnprocessableEntity
			p.Title = http.StatusText(http.StatusUnprocessableEntity)
		}
		return p, true
	})
}

// databaseError answers err as an RFC 9457 problem when it is a database
// error, and as a plain 500 otherwise. Problems the service is to blame
// for (5xx, after the handler's own mappers) are logged; the client's own,
// such as a conflict, are not worth a log line.
func (h *handlers) databaseError(w http.ResponseWriter, r *http.Request, err error, mappers ...sprocketspg.ProblemMapper) {
	logServerErrors := func(_ context.Context, err error, p sprocketspg.Problem) (sprocketspg.Problem, bool) {
		if p.Status >= http.StatusInternalServerError {
			h.logger.Warn("database error", zap.String("path", r.URL.Path), zap.Int("status", p.Status), zap.Error(err))
		}
		return p, true
	}
	if !sprocketspg.WriteProblem(w, r, err, append(mappers, logServerErrors)...) {
		h.internalError(w, err)
	}
}

// internalError logs err and answers 500 without its text, which may say
// more about the service than a client should see.
func (h *handlers) internalError(w http.ResponseWriter, err error) {
	h.logger.Error("internal error", zap.Error(err))
	writeError(w, http.StatusInternalServerError, "Internal Server Error", "")
}

// writeError answers a problem of the service's own, in the same format
// as the database problems.
func writeError(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Status int    `json:"status"`
		Detail string `json:"detail,omitempty"`
	}{"about:blank", title, status, detail})
}

// writeJSON answers v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "Internal Server Error", "")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
