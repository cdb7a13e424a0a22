package migrate_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/migrate"
)

// The migrations of testdata, and the highest version of each.
var (
	basicFS      = os.DirFS("testdata/basic")      // widgets: 1, 2
	concurrentFS = os.DirFS("testdata/concurrent") // gadgets: 1, 2, 3, sleeping
	brokenFS     = os.DirFS("testdata/broken")     // 1 good, 2 fails halfway, 3 never reached
	sleepyFS     = os.DirFS("testdata/sleepy")     // 1 good, 2 sleeps 30 s
	ordersFS     = os.DirFS("testdata/orders")     // orders: 1, 2, 3
	directLockFS = os.DirFS("testdata/directlock") // records whether it holds goose's advisory lock
)

const (
	basicTarget  = 2
	ordersTarget = 3
)

// ctxT is a context for one test's work, generous enough for any start.
func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connect opens a connection of the test's own to url, outside any app,
// closed when the test ends.
func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctxT(t), url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// openDB opens a database/sql handle of pgx's stdlib on url, closed when
// the test ends.
func openDB(t *testing.T, url string) *sql.DB {
	t.Helper()
	cc, err := pgx.ParseConfig(url)
	require.NoError(t, err)
	db := stdlib.OpenDB(*cc)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// tableExists reports whether the database of conn has the table.
func tableExists(t *testing.T, conn *pgx.Conn, table string) bool {
	t.Helper()
	var ok bool
	require.NoError(t, conn.QueryRow(ctxT(t), "SELECT to_regclass($1) IS NOT NULL", table).Scan(&ok))
	return ok
}

// appliedVersions lists the versions goose's version table records, in
// the order they were applied, without goose's version-0 row.
func appliedVersions(t *testing.T, conn *pgx.Conn) []int64 {
	t.Helper()
	rows, err := conn.Query(ctxT(t), "SELECT version_id FROM goose_db_version WHERE version_id > 0 AND is_applied ORDER BY id")
	require.NoError(t, err)
	vs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	return vs
}

// newApp is fx.New with the test's logger and opts; it fails the test when
// fx.New does, and stops the app, if it started, when the test ends.
func newApp(t *testing.T, opts ...fx.Option) *fx.App {
	t.Helper()
	app := newAppErr(t, opts...)
	require.NoError(t, app.Err())
	return app
}

// newAppErr is newApp for an app whose fx.New may fail: the caller checks
// app.Err().
func newAppErr(t *testing.T, opts ...fx.Option) *fx.App {
	t.Helper()
	logger := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	all := append([]fx.Option{
		fx.Supply(logger),
		fx.WithLogger(func() fxevent.Logger {
			return &fxevent.ZapLogger{Logger: logger.WithOptions(zap.IncreaseLevel(zap.WarnLevel))}
		}),
	}, opts...)
	app := fx.New(all...)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = app.Stop(ctx) // a no-op for an app that never started
	})
	return app
}

// servedHook is an fx option whose OnStart hook comes after the default
// instance's pool, and records in served that it ran: the application
// "served".
func servedHook(served *bool) fx.Option {
	return fx.Invoke(func(_ *sprocketspg.Pool, lc fx.Lifecycle) {
		lc.Append(fx.Hook{OnStart: func(context.Context) error {
			*served = true
			return nil
		}})
	})
}

// readyz asks c's readiness handler, as health.Register serves it, and
// decodes the document.
func readyz(t *testing.T, c *health.Checker) (int, map[string]any) {
	t.Helper()
	mux := http.NewServeMux()
	health.Register(mux, c)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	var doc map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &doc), rec.Body.String())
	return rec.Code, doc
}

// readyzCheck returns the one result of the check called name in a
// readiness document.
func readyzCheck(t *testing.T, doc map[string]any, name string) map[string]any {
	t.Helper()
	checks, ok := doc["checks"].(map[string]any)
	require.True(t, ok, "no checks in %v", doc)
	list, ok := checks[name].([]any)
	require.True(t, ok, "no check %q in %v", name, doc)
	require.Len(t, list, 1, name)
	res, ok := list[0].(map[string]any)
	require.True(t, ok, "%v", list[0])
	return res
}

// schemaComponent finds the schemaVersion component of a database's report.
func schemaComponent(t *testing.T, r health.Report) health.ComponentReport {
	t.Helper()
	for _, c := range r.Components {
		if c.Name == "schemaVersion" {
			return c
		}
	}
	require.Failf(t, "no schemaVersion component", "%+v", r.Components)
	return health.ComponentReport{}
}

// migrateDirect applies the migrations in fsys to the database at url
// without fx, as a separate job would.
func migrateDirect(t *testing.T, url string, fsys fs.FS) ([]migrate.Applied, error) {
	t.Helper()
	m, err := migrate.New(fsys)
	require.NoError(t, err)
	return m.Apply(ctxT(t), openDB(t, url))
}

// poolConfig is the default Config of an instance (the environment's
// defaults) connected to url, for sprocketspg.New.
func poolConfig(t *testing.T, url string) sprocketspg.Config {
	t.Helper()
	cfg, err := sprocketspg.LoadConfig()
	require.NoError(t, err)
	cfg.URL = url
	cfg.ConnectionTimeout = 10 * time.Second
	return cfg
}

// emptyFS is an fs.FS with files but no migrations.
func emptyFS() fs.FS {
	return fstest.MapFS{"README.md": &fstest.MapFile{Data: []byte("no migrations here\n")}}
}

// serveHealth serves c's handlers, as health.Register registers them, on
// an HTTP server closed when the test ends.
func serveHealth(t *testing.T, c *health.Checker) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	health.Register(mux, c)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// decodeBody decodes a JSON response.
func decodeBody(t *testing.T, resp *http.Response) map[string]any {
	t.Helper()
	var doc map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
	return doc
}

// mustRead reads a file of testdata.
func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	require.NoError(t, err)
	return b
}
