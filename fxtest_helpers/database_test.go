package fxtest_helpers

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/internal/pgserver"
)

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func connect(t testing.TB, u string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctxT(t), u)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func dbNameOf(t testing.TB, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	return strings.TrimPrefix(u.Path, "/")
}

// databaseExists asks the server whether name exists, and whether it is a
// template.
func databaseExists(t testing.TB, name string) (exists, isTemplate bool) {
	t.Helper()
	err := connect(t, Server(t).AdminURL()).QueryRow(ctxT(t),
		"SELECT datistemplate FROM pg_database WHERE datname = $1", name).Scan(&isTemplate)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false
	}
	require.NoError(t, err)
	return true, isTemplate
}

func TestNewDatabaseIsolation(t *testing.T) {
	a, b := NewDatabase(t), NewDatabase(t)
	require.NotEqual(t, a, b)
	for _, u := range []string{a, b} {
		assert.True(t, strings.HasPrefix(u, "postgres://"), u)
		assert.Contains(t, u, "sslmode=disable")
		assert.True(t, strings.HasPrefix(dbNameOf(t, u), "t_testnewdatabaseisolation_"), u)
	}
	ctx := ctxT(t)
	connA, connB := connect(t, a), connect(t, b)
	_, err := connA.Exec(ctx, "CREATE TABLE only_in_a (v int)")
	require.NoError(t, err)

	var n int
	require.NoError(t, connB.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").Scan(&n))
	assert.Equal(t, 0, n, "table of one database visible in another")
	var db string
	require.NoError(t, connB.QueryRow(ctx, "SELECT current_database()").Scan(&db))
	assert.Equal(t, dbNameOf(t, b), db)
}

func TestNewDatabaseParallel(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]bool{}
	for i := range 8 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			u := NewDatabase(t, WithSchema("CREATE TABLE par (v int)"))
			mu.Lock()
			assert.False(t, seen[u], "database handed out twice: %s", u)
			seen[u] = true
			mu.Unlock()
			_, err := connect(t, u).Exec(ctxT(t), "INSERT INTO par VALUES ($1)", i)
			require.NoError(t, err)
		})
	}
}

func TestWithSchemaBuildsTemplateOnce(t *testing.T) {
	// A random value proves the schema ran once: every clone holds the
	// same row only if they all copy one template.
	schema := "CREATE TABLE seeded (id uuid NOT NULL); INSERT INTO seeded VALUES (gen_random_uuid()); -- TestWithSchemaBuildsTemplateOnce"
	tmpl, _ := templateName([]byte(schema))

	const clones = 6
	urls := make([]string, clones)
	var wg sync.WaitGroup
	for i := range clones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := newFakeTB(t, fmt.Sprintf("clone%d", i))
			f.run(func(tb testing.TB) { urls[i] = NewDatabase(tb, WithSchema(schema)) })
			assert.Empty(t, f.fatals)
			t.Cleanup(f.runCleanups)
		}()
	}
	wg.Wait()

	ctx := ctxT(t)
	var ids []string
	for _, u := range urls {
		require.NotEmpty(t, u)
		var id string
		require.NoError(t, connect(t, u).QueryRow(ctx, "SELECT id::text FROM seeded").Scan(&id))
		ids = append(ids, id)
	}
	for _, id := range ids[1:] {
		assert.Equal(t, ids[0], id, "clones differ: the schema ran more than once")
	}

	var n int
	var isTemplate, allowConn bool
	require.NoError(t, connect(t, Server(t).AdminURL()).QueryRow(ctx,
		"SELECT count(*) OVER (), datistemplate, datallowconn FROM pg_database WHERE datname = $1", tmpl).
		Scan(&n, &isTemplate, &allowConn))
	assert.Equal(t, 1, n)
	assert.True(t, isTemplate)
	assert.False(t, allowConn)
}

func TestWithSchemaRebuildsIncompleteTemplate(t *testing.T) {
	// The test meddles with the template without the builders' lock, so
	// the template is its own even when test binaries share a server.
	schema := fmt.Sprintf("CREATE TABLE complete (v int); -- TestWithSchemaRebuildsIncompleteTemplate %d", os.Getpid())
	tmpl, _ := templateName([]byte(schema))
	ctx := ctxT(t)
	admin := connect(t, Server(t).AdminURL())
	ident := pgx.Identifier{tmpl}.Sanitize()
	t.Cleanup(func() {
		ctx := context.Background()
		_, err := admin.Exec(ctx, "ALTER DATABASE "+ident+" WITH IS_TEMPLATE false")
		assert.NoError(t, err)
		_, err = admin.Exec(ctx, "DROP DATABASE "+ident)
		assert.NoError(t, err)
		shared.templates.Delete(tmpl)
	})
	// What a builder killed half way leaves: the database, not marked.
	_, err := admin.Exec(ctx, "CREATE DATABASE "+ident)
	require.NoError(t, err)
	// Forget any build of this process so that the leftover is examined.
	shared.templates.Delete(tmpl)

	conn := connect(t, NewDatabase(t, WithSchema(schema)))
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'complete'").Scan(&n))
	assert.Equal(t, 1, n, "schema missing from a clone of a rebuilt template")
	exists, isTemplate := databaseExists(t, tmpl)
	assert.True(t, exists)
	assert.True(t, isTemplate)
}

func TestWithSchemaErrorFailsTest(t *testing.T) {
	schema := "CREATE TABLE broken (; -- TestWithSchemaErrorFailsTest"
	f := newFakeTB(t, "broken")
	f.run(func(tb testing.TB) { NewDatabase(tb, WithSchema(schema)) })
	require.Len(t, f.fatals, 1)
	assert.Contains(t, f.fatals[0], "apply schema")
	assert.Contains(t, f.fatals[0], "syntax error")
	tmpl, _ := templateName([]byte(schema))
	exists, _ := databaseExists(t, tmpl)
	assert.False(t, exists, "half-built template left behind")
}

func TestDatabaseDroppedOnPass(t *testing.T) {
	var name string
	t.Run("inner", func(t *testing.T) {
		name = dbNameOf(t, NewDatabase(t))
		exists, _ := databaseExists(t, name)
		require.True(t, exists)
	})
	exists, _ := databaseExists(t, name)
	assert.False(t, exists, "database %s of a passed test not dropped", name)
}

func TestDatabaseKeptOnFailure(t *testing.T) {
	f := newFakeTB(t, "TestThatFails")
	var u string
	f.run(func(tb testing.TB) { u = NewDatabase(tb) })
	require.NotEmpty(t, u)
	f.setFailed()
	f.runCleanups()

	name := dbNameOf(t, u)
	exists, _ := databaseExists(t, name)
	assert.True(t, exists, "database of a failed test dropped")
	require.Len(t, f.logs, 1)
	assert.Contains(t, f.logs[0], u)
	_, err := connect(t, Server(t).AdminURL()).Exec(ctxT(t), "DROP DATABASE "+pgx.Identifier{name}.Sanitize())
	require.NoError(t, err)
}

func TestServerStopStart(t *testing.T) {
	srv := Server(t)
	if srv.Backend() == pgserver.BackendURL {
		t.Skip("a server given by " + pgserver.EnvURL + " cannot be stopped")
	}
	ctx := ctxT(t)
	u := NewDatabase(t)
	_, err := connect(t, u).Exec(ctx, "CREATE TABLE kept (v int)")
	require.NoError(t, err)

	require.NoError(t, srv.Stop(ctx))
	_, err = pgx.Connect(ctx, u)
	require.Error(t, err, "server answers while stopped")
	require.NoError(t, srv.Start(ctx))

	// Admin connections from before the outage are not reused broken.
	other := NewDatabase(t)
	assert.NotEqual(t, u, other)
	var n int
	require.NoError(t, connect(t, u).QueryRow(ctx, "SELECT count(*) FROM kept").Scan(&n))
	assert.Equal(t, Server(t).AdminURL(), srv.AdminURL())
}

func TestStartFailureFailsEveryTest(t *testing.T) {
	var calls atomic.Int32
	s := newSharedServer(func(context.Context, func(string, ...any)) (*pgserver.Server, error) {
		calls.Add(1)
		return nil, errors.New("no PostgreSQL server available for tests: set " + pgserver.EnvURL)
	})
	for i := range 3 {
		f := newFakeTB(t, fmt.Sprint("test", i))
		f.run(func(tb testing.TB) { s.newDatabase(tb) })
		require.Len(t, f.fatals, 1, "test %d", i)
		assert.Contains(t, f.fatals[0], pgserver.EnvURL)
	}
	assert.Equal(t, int32(1), calls.Load(), "start attempted more than once")
}

func TestShutdown(t *testing.T) {
	s := newSharedServer(func(ctx context.Context, logf func(string, ...any)) (*pgserver.Server, error) {
		return pgserver.Start(ctx, pgserver.WithLogf(logf))
	})
	u := s.get(t).URL()
	connect(t, u)
	require.NoError(t, s.shutdown())
	require.NoError(t, s.shutdown(), "second shutdown")

	f := newFakeTB(t, "after")
	f.run(func(tb testing.TB) { s.get(tb) })
	require.Len(t, f.fatals, 1)
	assert.Contains(t, f.fatals[0], "shut down")

	never := newSharedServer(func(context.Context, func(string, ...any)) (*pgserver.Server, error) {
		t.Error("server started after shutdown")
		return nil, errors.New("unexpected")
	})
	require.NoError(t, never.shutdown())
	f = newFakeTB(t, "never")
	f.run(func(tb testing.TB) { never.get(tb) })
	assert.Len(t, f.fatals, 1)
}

func TestDatabaseName(t *testing.T) {
	long := strings.Repeat("TestVeryLongName/With Sub-test#", 5)
	tests := []struct {
		test string
		pid  int
		n    int64
		want string
	}{
		{"TestX", 42, 1, "t_testx_42_1"},
		{"TestX/sub_test#01", 42, 7, "t_testx_sub_test_01_42_7"},
		{"TestÜber/ünïcode", 1, 1, "t_test_ber_n_code_1_1"},
		{"BenchmarkNewDatabase/with_schema-8", 9, 3, "t_benchmarknewdatabase_with_schema_8_9_3"},
		{long, 4194304, 123456, ""},
	}
	for _, tt := range tests {
		got := databaseName(tt.test, tt.pid, tt.n)
		assert.LessOrEqual(t, len(got), maxIdentLen, tt.test)
		assert.Regexp(t, `^t_[a-z0-9_]*[a-z0-9]_\d+_\d+$`, got, tt.test)
		if tt.want != "" {
			assert.Equal(t, tt.want, got, tt.test)
		}
	}
	assert.True(t, strings.HasSuffix(databaseName(long, 4194304, 123456), "_4194304_123456"))
	assert.NotEqual(t, databaseName(long, 1, 1), databaseName(long, 1, 2))
}

func TestDatabaseURL(t *testing.T) {
	tests := []struct{ admin, want string }{
		{"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "postgres://postgres@127.0.0.1:5432/t_x?sslmode=disable"},
		{"postgresql://u:pw@h:1/postgres", "postgresql://u:pw@h:1/t_x?sslmode=disable"},
		{"postgres://u@h/db?sslmode=require&application_name=a", "postgres://u@h/t_x?application_name=a&sslmode=require"},
	}
	for _, tt := range tests {
		got, err := databaseURL(tt.admin, "t_x")
		require.NoError(t, err)
		assert.Equal(t, tt.want, got)
	}
	_, err := databaseURL("host=h password=sekrit", "t_x")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "sekrit")
}

func BenchmarkNewDatabase(b *testing.B) {
	Server(b)
	b.Run("empty", func(b *testing.B) {
		for b.Loop() {
			NewDatabase(b)
		}
	})
	b.Run("schema", func(b *testing.B) {
		opt := WithSchema("CREATE TABLE bench (id bigint PRIMARY KEY, v text); CREATE INDEX ON bench (v); INSERT INTO bench SELECT g, g::text FROM generate_series(1, 1000) g")
		NewDatabase(b, opt) // build the template outside the loop
		for b.Loop() {
			NewDatabase(b, opt)
		}
	})
}
