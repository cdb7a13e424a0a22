package sprocketspg_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// problemFor runs sql through a real pool inside an HTTP handler that
// answers with WriteProblem, and returns the response.
func problemFor(t *testing.T, pool *sprocketspg.Pool, ctx context.Context, sql string, args ...any) (*http.Response, map[string]any) {
	t.Helper()
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := pool.Execute(ctx, sql, args...)
		if err == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if !sprocketspg.WriteProblem(w, r, err) {
			http.Error(w, "unclassified", http.StatusTeapot)
		}
	})
	srv := httptest.NewServer(handler)
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	var body map[string]any
	if resp.Header.Get("Content-Type") == "application/problem+json" {
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	}
	return resp, body
}

func TestProblemTableFromRealErrors(t *testing.T) {
	pool, _ := newPool(t, func(c *sprocketspg.Config) { c.QueryTimeout = 5 * time.Second })
	ctx := ctxT(t)
	_, err := pool.Exec(ctx, `
		CREATE TABLE parents (id int PRIMARY KEY);
		CREATE TABLE children (id int PRIMARY KEY, parent int REFERENCES parents (id));
		INSERT INTO parents VALUES (1);`)
	require.NoError(t, err)

	const secretArg = "s3cret-argument-value"
	tests := []struct {
		name   string
		ctx    func(*testing.T) context.Context
		sql    string
		args   []any
		status int
		title  string
		code   string
	}{
		{"unique", ctxT, "INSERT INTO parents VALUES ($1)", []any{1}, 409, "Unique Violation", "23505"},
		{"foreign key", ctxT, "INSERT INTO children VALUES (1, $1)", []any{42}, 409, "Foreign Key Violation", "23503"},
		{"division by zero", ctxT, "SELECT 1 / $1::int", []any{0}, 500, "Database Error", "22012"},
		{"bad input quoting an argument", ctxT, "SELECT $1::text::int", []any{secretArg}, 500, "Database Error", "22P02"},
		{"statement timeout", ctxT, "SELECT pg_sleep(10)", nil, 500, "Query Timeout", "57014"},
		{"context deadline", func(t *testing.T) context.Context { return shortCtx(t, 100*time.Millisecond) }, "SELECT pg_sleep(10)", nil, 500, "Query Timeout", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := problemFor(t, pool, tt.ctx(t), tt.sql, tt.args...)
			assert.Equal(t, tt.status, resp.StatusCode)
			assert.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
			assert.Equal(t, tt.title, body["title"])
			assert.EqualValues(t, tt.status, body["status"])
			assert.Contains(t, body["type"], sprocketspg.ProblemTypeBase)
			if tt.code != "" {
				assert.Equal(t, tt.code, body["sqlstate"])
			}
			assert.NotContains(t, fmt.Sprint(body), secretArg)
		})
	}
}

func TestProblemWhenServerStopped(t *testing.T) {
	pool, _ := newPool(t, func(c *sprocketspg.Config) { c.ConnectionTimeout = time.Second })
	server := fxtest_helpers.Server(t)
	require.NoError(t, server.Stop(ctxT(t)))
	t.Cleanup(func() { require.NoError(t, server.Start(context.Background())) })

	resp, body := problemFor(t, pool, ctxT(t), "SELECT 1")
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Contains(t, []any{"Database Connection Error", "Database Error"}, body["title"])
}

func TestProblemNotConnectedAndUnclassified(t *testing.T) {
	p, ok := sprocketspg.ClassifyError(fmt.Errorf("handler: %w", sprocketspg.ErrNotConnected))
	require.True(t, ok)
	assert.Equal(t, 503, p.Status)
	assert.Equal(t, "Database Connection Error", p.Title)

	_, ok = sprocketspg.ClassifyError(errors.New("not a database error"))
	assert.False(t, ok)
	_, ok = sprocketspg.ClassifyError(nil)
	assert.False(t, ok)

	rec := httptest.NewRecorder()
	assert.False(t, sprocketspg.WriteProblem(rec, httptest.NewRequest("GET", "/", nil), errors.New("plain")))
	assert.Equal(t, 200, rec.Code)
	assert.Empty(t, rec.Body.String())
}

func TestProblemMappersOverrideOrSwallow(t *testing.T) {
	pool := appPool(t)
	_, err := pool.Execute(ctxT(t), "CREATE TABLE u (id int PRIMARY KEY)")
	require.NoError(t, err)
	_, err = pool.Execute(ctxT(t), "INSERT INTO u VALUES (1)")
	require.NoError(t, err)
	_, dupErr := pool.Execute(ctxT(t), "INSERT INTO u VALUES (1)")
	require.Error(t, dupErr)
	req := httptest.NewRequest("POST", "/u", nil)

	rec := httptest.NewRecorder()
	wrote := sprocketspg.WriteProblem(rec, req, dupErr, func(_ context.Context, err error, p sprocketspg.Problem) (sprocketspg.Problem, bool) {
		if sprocketspg.IsUniqueViolation(err) {
			p.Status, p.Title, p.Detail = http.StatusUnprocessableEntity, "Already Registered", "that id is taken"
		}
		return p, true
	})
	require.True(t, wrote)
	assert.Equal(t, http.StatusUnprocessableEntity, rec.Code)
	assert.Contains(t, rec.Body.String(), "Already Registered")

	rec = httptest.NewRecorder()
	wrote = sprocketspg.WriteProblem(rec, req, dupErr, func(context.Context, error, sprocketspg.Problem) (sprocketspg.Problem, bool) {
		return sprocketspg.Problem{}, false
	})
	assert.False(t, wrote)
	assert.Empty(t, rec.Body.String())
}

func shortCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
