package sprocketspg_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
)

// sleepOps are the calls of the pool that run a statement, each running
// pg_sleep(2) so that a 200 ms context ends while the server runs it.
func sleepOps(pool *sprocketspg.Pool) map[string]func(ctx context.Context) error {
	return map[string]func(ctx context.Context) error{
		"Execute": func(ctx context.Context) error {
			_, err := pool.Execute(ctx, "SELECT pg_sleep(2)")
			return err
		},
		"Callproc": func(ctx context.Context) error {
			_, err := pool.Callproc(ctx, "pg_sleep", 2)
			return err
		},
		"Tx.Execute": func(ctx context.Context) error {
			var inner error
			err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
				_, inner = tx.Execute(ctx, "SELECT pg_sleep(2)")
				return inner
			})
			return errors.Join(inner, err)
		},
		"Tx.Callproc": func(ctx context.Context) error {
			var inner error
			err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
				_, inner = tx.Callproc(ctx, "pg_sleep", 2)
				return inner
			})
			return errors.Join(inner, err)
		},
		// pgx's own Exec inside the transaction: what Transaction returns
		// must say so too, not only the module's own calls.
		"Transaction": func(ctx context.Context) error {
			return pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
				_, err := tx.Exec(ctx, "SELECT pg_sleep(2)")
				return err
			})
		},
	}
}

func TestDeadlineWhileRunningMatchesContext(t *testing.T) {
	pool, _ := newPool(t, nil)
	for name, op := range sleepOps(pool) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			began := time.Now()
			err := op(ctx)
			require.Error(t, err)
			t.Logf("after %s: %v", time.Since(began).Round(time.Millisecond), err)
			assert.Less(t, time.Since(began), 1500*time.Millisecond)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr, "the server's error is still there")
			assert.Equal(t, "57014", pgErr.Code)
			assert.True(t, sprocketspg.IsQueryTimeout(err))
			assert.False(t, sprocketspg.IsConnectionError(err))
			p, ok := sprocketspg.ClassifyError(err)
			require.True(t, ok)
			assert.Equal(t, http.StatusInternalServerError, p.Status)
			assert.Equal(t, "Query Timeout", p.Title)
		})
	}
	// The connection was not lost: the pool still answers.
	_, err := pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err)
}

func TestCancelWhileRunningMatchesContext(t *testing.T) {
	pool, _ := newPool(t, nil)
	for name, op := range sleepOps(pool) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			timer := time.AfterFunc(200*time.Millisecond, cancel)
			defer timer.Stop()
			err := op(ctx)
			require.Error(t, err)
			assert.ErrorIs(t, err, context.Canceled)
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			assert.Equal(t, "57014", pgErr.Code)
			assert.False(t, sprocketspg.IsQueryTimeout(err), "a client that went away is not a timeout")
			assertClientClosed(t, err)
		})
	}
}

// assertClientClosed checks the problem written for a call whose caller
// went away.
func assertClientClosed(t *testing.T, err error) {
	t.Helper()
	p, ok := sprocketspg.ClassifyError(err)
	require.True(t, ok, "a cancelled call is answered: %v", err)
	assert.Equal(t, sprocketspg.StatusClientClosedRequest, p.Status)
	assert.Equal(t, "Client Closed Request", p.Title)
	assert.NotContains(t, p.Title, "Timeout")

	rec := httptest.NewRecorder()
	require.True(t, sprocketspg.WriteProblem(rec, httptest.NewRequest(http.MethodGet, "/", nil), err))
	assert.Equal(t, sprocketspg.StatusClientClosedRequest, rec.Code)
	assert.Contains(t, rec.Body.String(), `"status":`+strconv.Itoa(sprocketspg.StatusClientClosedRequest))
}

// waitOps are calls that need a connection of a pool whose only one is
// taken, so that the context ends while they wait.
func waitOps(pool *sprocketspg.Pool) map[string]func(ctx context.Context) error {
	ops := sleepOps(pool)
	ops["Ping"] = pool.Ping
	ops["Status"] = func(ctx context.Context) error { return pool.Status(ctx).Err }
	return ops
}

func TestContextEndingWhileWaitingMatchesContext(t *testing.T) {
	pool, _ := newPool(t, func(c *sprocketspg.Config) { c.MaxPoolSize = 1 })
	held, err := pool.Acquire(ctxT(t))
	require.NoError(t, err)
	defer held.Release()

	for name, op := range waitOps(pool) {
		t.Run(name+"/deadline", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			err := op(ctx)
			require.Error(t, err)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			p, ok := sprocketspg.ClassifyError(err)
			require.True(t, ok, "%v", err)
			assert.Equal(t, http.StatusInternalServerError, p.Status, "the same answer as while running")
			assert.Equal(t, "Query Timeout", p.Title)
		})
		t.Run(name+"/cancel", func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			timer := time.AfterFunc(200*time.Millisecond, cancel)
			defer timer.Stop()
			err := op(ctx)
			require.Error(t, err)
			assert.ErrorIs(t, err, context.Canceled)
			assertClientClosed(t, err)
		})
	}
}

// An operator's pg_cancel_backend cancels the statement while the
// caller's context is alive: that stays what it is, the server's 57014.
func TestOperatorCancelIsNotTheCallersContext(t *testing.T) {
	pool, url := newPool(t, func(c *sprocketspg.Config) { c.MinPoolSize, c.MaxPoolSize = 1, 1 })
	admin := adminConn(t, url)
	res, err := pool.Execute(ctxT(t), "SELECT pg_backend_pid() AS pid")
	require.NoError(t, err)
	pid := res.Row["pid"].(int32)

	canceller := make(chan struct{})
	defer func() { <-canceller }() // admin is closed when the test ends
	go func() {
		defer close(canceller)
		// Once the statement runs, cancel it as an operator would.
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			var state string
			err := admin.QueryRow(context.Background(),
				"SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = $1", pid).Scan(&state)
			if err == nil && state == "active" {
				_, _ = admin.Exec(context.Background(), "SELECT pg_cancel_backend($1)", pid)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	ctx := ctxT(t)
	_, err = pool.Execute(ctx, "SELECT pg_sleep(5)")
	require.Error(t, err)
	require.NoError(t, ctx.Err())
	assert.NotErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, context.DeadlineExceeded)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "57014", pgErr.Code)
	p, ok := sprocketspg.ClassifyError(err)
	require.True(t, ok)
	assert.Equal(t, "Query Timeout", p.Title)
	assert.Equal(t, "57014", p.SQLState)
}

// A unique violation that comes back as the context ends was not caused
// by it, and keeps its own identity.
func TestServerErrorsKeepTheirIdentityAfterContextEnds(t *testing.T) {
	pool, _ := newPool(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		if _, err := tx.Exec(ctx, "CREATE TABLE u2 (id int PRIMARY KEY); INSERT INTO u2 VALUES (1)"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO u2 VALUES (1)")
		cancel() // ends as the error comes back
		return err
	})
	require.Error(t, err)
	assert.True(t, sprocketspg.IsUniqueViolation(err))
	assert.NotErrorIs(t, err, context.Canceled)
	p, ok := sprocketspg.ClassifyError(err)
	require.True(t, ok)
	assert.Equal(t, "Unique Violation", p.Title)
}
