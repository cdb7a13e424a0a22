package sprocketspg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The operations of a batch, as observers see them.
const (
	// OperationBatch is a whole ExecuteBatch.
	OperationBatch Operation = "batch"
	// OperationBatchStatement is one statement of a batch.
	OperationBatchStatement Operation = "batch_statement"
)

// Statement is one statement of ExecuteBatch.
type Statement struct {
	// SQL and Args are what Execute takes.
	SQL  string
	Args []any
	// MetricName names the statement in observer events and errors; ""
	// takes the batch's (WithMetricName on its ctx).
	MetricName string
}

// BatchOption changes how ExecuteBatch runs a batch.
type BatchOption interface{ applyBatch(*batchOptions) }

type batchOptions struct{ atomic bool }

type batchOptionFunc func(*batchOptions)

func (f batchOptionFunc) applyBatch(o *batchOptions) { f(o) }

// Atomic runs the batch in one transaction: all of it commits, or none
// of it. Without it each statement commits on its own, in order, which
// costs the server a transaction's end per statement: measured here
// (bench/README.md), about what a round trip costs on loopback, so that
// a batch of statements that commit on their own gains little over
// Execute calls, while an Atomic one of 10 takes about a quarter of
// their time.
func Atomic() BatchOption {
	return batchOptionFunc(func(o *batchOptions) { o.atomic = true })
}

// BatchError is the error of a batch whose statement Index failed. The
// statements before it are committed (Committed, without Atomic) or rolled
// back (with Atomic, and in a transaction that then aborts); the ones after
// it were not run: PostgreSQL skips the rest of a pipeline after an error.
type BatchError struct {
	// Index is the failed statement's position, from 0; Len the batch's
	// length.
	Index, Len int
	// MetricName is the failed statement's name, "" when it had none.
	MetricName string
	// Committed is true when the statements before Index stay committed.
	Committed bool
	// NoneRan is true when the batch failed before any of it ran: the
	// server refused to prepare the statement at Index (a syntax error,
	// a missing table), which pgx does for every statement first.
	NoneRan bool
	// Err is what failed.
	Err error
}

// Error names the statement, says what became of the others, and then
// what failed.
func (e *BatchError) Error() string {
	name := ""
	if e.MetricName != "" {
		name = fmt.Sprintf(" (%q)", e.MetricName)
	}
	before := "rolled back"
	if e.Committed {
		before = "committed"
	}
	if e.NoneRan {
		return fmt.Sprintf("batch statement %d of %d%s failed to prepare; no statement ran: %v", e.Index, e.Len, name, e.Err)
	}
	var others string
	if e.Index > 0 {
		others += "; " + span(0, e.Index-1) + " " + before
	}
	if e.Index < e.Len-1 {
		if others == "" {
			others = "; "
		} else {
			others += ", "
		}
		others += span(e.Index+1, e.Len-1) + " not run"
	}
	return fmt.Sprintf("batch statement %d of %d%s failed%s: %v", e.Index, e.Len, name, others, e.Err)
}

// Unwrap returns Err.
func (e *BatchError) Unwrap() error { return e.Err }

// span names the statements from a to b.
func span(a, b int) string {
	if a == b {
		return fmt.Sprintf("statement %d", a)
	}
	return fmt.Sprintf("statements %d-%d", a, b)
}

// commitSQL ends the pipeline's implicit transaction after a statement
// that is to commit on its own.
const commitSQL = "COMMIT"

// ExecuteBatch sends stmts to the server in one round trip and returns
// one QueryResult per statement, in order, with the result rules of
// Execute. Without Atomic each statement commits on its own; with it the
// batch is one transaction. When a statement fails, the error is a
// *BatchError that says which and what became of the others, and the
// results returned are those of the statements before it.
//
// A timeout from WithQueryTimeout applies to each statement, as
// Execute's. Observers get an event per statement (OperationBatchStatement,
// timed from the batch's start to its answer) and one for the batch
// (OperationBatch). An empty batch does nothing. Like Execute it returns
// ErrNotConnected before start and after stop, and an error matching
// ctx.Err() when ctx ended the call.
func (p *Pool) ExecuteBatch(ctx context.Context, stmts []Statement, opts ...BatchOption) ([]QueryResult, error) {
	pool, err := p.livePool()
	if err != nil {
		return nil, err
	}
	var o batchOptions
	for _, opt := range opts {
		opt.applyBatch(&o)
	}
	if len(stmts) == 0 {
		return []QueryResult{}, nil
	}
	began := time.Now()
	plan := newBatchPlan(ctx, stmts, !o.atomic, false)
	results, err := p.sendBatch(ctx, pool, plan, began)
	if err != nil && pgconn.SafeToRetry(err) && ctx.Err() == nil {
		results, err = p.sendBatch(ctx, pool, plan, began)
	}
	return results, p.finishBatch(ctx, plan, began, results, err)
}

// ExecuteBatch sends stmts in the transaction in one round trip, with the
// rules of Pool.ExecuteBatch; they commit or roll back with the
// transaction, and a failed one aborts it.
func (tx *Tx) ExecuteBatch(ctx context.Context, stmts []Statement) ([]QueryResult, error) {
	if len(stmts) == 0 {
		return []QueryResult{}, nil
	}
	began := time.Now()
	plan := newBatchPlan(ctx, stmts, false, true)
	if plan.timeout > 0 {
		defer tx.pool.deadline.extend(tx.Conn(), plan.timeout)()
	}
	results, err := tx.pool.readBatch(ctx, tx.SendBatch(ctx, plan.batch), plan, began)
	return results, tx.pool.finishBatch(ctx, plan, began, results, err)
}

// batchPlan is a batch of statements as it goes on the wire: each
// statement's own, and those around them (timeouts, commits).
type batchPlan struct {
	stmts []Statement
	batch *pgx.Batch
	// extra[i] counts the statements sent before stmts[i] that are not
	// its own, and extra[len(stmts)] those after the last.
	extra     []int
	timeout   time.Duration
	committed bool
}

// newBatchPlan queues stmts: each followed by COMMIT when commitEach, and
// with ctx's query timeout set before each (after a COMMIT it must be set
// again) or, in a transaction, saved first and restored last.
func newBatchPlan(ctx context.Context, stmts []Statement, commitEach, inTx bool) *batchPlan {
	plan := &batchPlan{stmts: stmts, batch: &pgx.Batch{}, extra: make([]int, len(stmts)+1), committed: commitEach}
	d, timed := QueryTimeoutOf(ctx)
	ms := ""
	if timed {
		plan.timeout = d
		ms = strconv.FormatInt(max(d.Milliseconds(), 1), 10)
	}
	for i, s := range stmts {
		n := 0
		if i > 0 && commitEach {
			plan.batch.Queue(commitSQL)
			n++
		}
		if timed {
			if inTx && i == 0 {
				plan.batch.Queue(saveTimeoutSQL)
				n++
			}
			if i == 0 || commitEach {
				plan.batch.Queue(setTimeoutSQL, ms)
				n++
			}
		}
		plan.extra[i] = n
		plan.batch.Queue(s.SQL, s.Args...)
	}
	last := 0
	if commitEach {
		plan.batch.Queue(commitSQL)
		last++
	}
	if timed && inTx {
		plan.batch.Queue(restoreTimeoutSQL)
		last++
	}
	plan.extra[len(stmts)] = last
	return plan
}

// sendBatch runs plan on a connection of pool.
func (p *Pool) sendBatch(ctx context.Context, pool *pgxpool.Pool, plan *batchPlan, began time.Time) ([]QueryResult, error) {
	conn, err := p.acquireConn(ctx, pool)
	if err != nil {
		return nil, &BatchError{Index: 0, Len: len(plan.stmts), MetricName: plan.name(ctx, 0), Err: err}
	}
	defer conn.Release()
	if plan.timeout > 0 {
		defer p.deadline.extend(conn.Conn(), plan.timeout)()
	}
	return p.readBatch(ctx, conn.SendBatch(ctx, plan.batch), plan, began)
}

// name is the metric name of statement i.
func (plan *batchPlan) name(ctx context.Context, i int) string {
	if n := plan.stmts[i].MetricName; n != "" {
		return n
	}
	return MetricName(ctx)
}

// readBatch reads the answers of plan from br and closes it, reporting
// each statement to the observers as its answer is read.
func (p *Pool) readBatch(ctx context.Context, br pgx.BatchResults, plan *batchPlan, began time.Time) (results []QueryResult, err error) {
	results = make([]QueryResult, 0, len(plan.stmts))
	defer func() {
		cerr := br.Close()
		if err == nil && cerr != nil {
			// Every answer was read: what failed is the pipeline's end,
			// the commit of the implicit transaction of the last
			// statement(s).
			last := len(plan.stmts) - 1
			err = &BatchError{Index: last, Len: len(plan.stmts), MetricName: plan.name(ctx, last), Committed: plan.committed, Err: cerr}
			results = results[:min(len(results), last)]
		}
	}()
	// fail ends the batch at statement i; observed is true when i was
	// already reported as a success, before its COMMIT failed.
	fail := func(i int, err error, observed bool) ([]QueryResult, error) {
		if at, ok := preparedFailure(plan, err); ok {
			// pgx prepares the statements before any runs, so the
			// first answer carries another statement's failure.
			p.observe(ctx, OperationBatchStatement, plan.name(ctx, at), plan.stmts[at].SQL, began, 0, callError(ctx, err))
			return results[:0], &BatchError{Index: at, Len: len(plan.stmts), MetricName: plan.name(ctx, at), NoneRan: true, Err: err}
		}
		if !observed {
			p.observe(ctx, OperationBatchStatement, plan.name(ctx, i), plan.stmts[i].SQL, began, 0, callError(ctx, err))
		}
		return results, &BatchError{Index: i, Len: len(plan.stmts), MetricName: plan.name(ctx, i), Committed: plan.committed, Err: err}
	}
	for i, s := range plan.stmts {
		for j := range plan.extra[i] {
			if _, err := br.Exec(); err != nil {
				if j == 0 && i > 0 && plan.committed {
					// The COMMIT of the statement before failed (a
					// deferred constraint, say): that one is not committed.
					results = results[:i-1]
					return fail(i-1, err, true)
				}
				return fail(i, err, false)
			}
		}
		rows, err := br.Query()
		if err != nil {
			return fail(i, err, false)
		}
		res, err := collectResult(rows)
		if err != nil {
			return fail(i, err, false)
		}
		results = append(results, res)
		p.observe(ctx, OperationBatchStatement, plan.name(ctx, i), s.SQL, began, res.RowCount, nil)
	}
	for range plan.extra[len(plan.stmts)] {
		if _, err := br.Exec(); err != nil {
			i := len(plan.stmts) - 1
			results = results[:i]
			return fail(i, err, true)
		}
	}
	return results, nil
}

// preparedFailure says whether err is pgx's failure to prepare one of the
// batch's statements before sending them, and which one.
func preparedFailure(plan *batchPlan, err error) (int, bool) {
	var pre pgx.ErrPreprocessingBatch
	if !errors.As(err, &pre) {
		return 0, false
	}
	for i, s := range plan.stmts {
		if s.SQL == pre.SQL() {
			return i, true
		}
	}
	return 0, false
}

// finishBatch reports the batch to the observers and wraps its error,
// naming the batch's metric name.
func (p *Pool) finishBatch(ctx context.Context, plan *batchPlan, began time.Time, results []QueryResult, err error) error {
	var rows int64
	for _, r := range results {
		rows += r.RowCount
	}
	name := MetricName(ctx)
	err = callError(ctx, err)
	p.observe(ctx, OperationBatch, name, "", began, rows, err)
	p.noteConnectionError(err)
	if err == nil {
		return nil
	}
	if name != "" {
		return p.errorForCaller(fmt.Errorf("execute batch %q: %w", name, err))
	}
	return p.errorForCaller(fmt.Errorf("execute batch: %w", err))
}
