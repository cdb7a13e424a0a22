package fxtest_helpers

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testMigrations are the five goose migrations of testdata/migrations.
var testMigrations = os.DirFS("testdata/migrations")

// mapOf copies fsys into a MapFS, which a test can then change.
func mapOf(t testing.TB, fsys fs.FS) fstest.MapFS {
	t.Helper()
	out := fstest.MapFS{}
	require.NoError(t, fs.WalkDir(fsys, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return err
		}
		out[name] = &fstest.MapFile{Data: b, Mode: 0o644}
		return nil
	}))
	return out
}

// migrationsTemplate is the name of the template WithMigrations(fsys)
// builds.
func migrationsTemplate(t testing.TB, fsys fs.FS) string {
	t.Helper()
	key, err := migrationsKey(fsys)
	require.NoError(t, err)
	name, _ := templateName(key)
	return name
}

// dropTemplateAtEnd drops the template name once tb and its databases are
// done, so that templates of files made for one run do not pile up on a
// server that outlives the test binary.
func dropTemplateAtEnd(tb testing.TB, name string) {
	tb.Helper()
	Server(tb)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), dbTimeout)
		defer cancel()
		shared.templates.Delete(name)
		conn, err := pgx.Connect(ctx, Server(tb).AdminURL())
		if err != nil {
			tb.Errorf("drop template %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		ident := pgx.Identifier{name}.Sanitize()
		for _, sql := range []string{"ALTER DATABASE " + ident + " WITH IS_TEMPLATE false", "DROP DATABASE " + ident} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				tb.Errorf("drop template %s: %v", name, err)
				return
			}
		}
	})
}

func TestWithMigrationsBuildsSchema(t *testing.T) {
	u := NewDatabase(t, WithMigrations(testMigrations))
	conn := connect(t, u)
	ctx := ctxT(t)

	var tables []string
	rows, err := conn.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename`)
	require.NoError(t, err)
	for rows.Next() {
		var name string
		require.NoError(t, rows.Scan(&name))
		tables = append(tables, name)
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, []string{"accounts", "goose_db_version", "orders", "seed"}, tables)

	var versions []int64
	rows, err = conn.Query(ctx, `SELECT version_id FROM goose_db_version WHERE is_applied AND version_id > 0 ORDER BY id`)
	require.NoError(t, err)
	for rows.Next() {
		var v int64
		require.NoError(t, rows.Scan(&v))
		versions = append(versions, v)
	}
	require.NoError(t, rows.Err())
	assert.Equal(t, []int64{1, 2, 3, 4, 5}, versions)

	// The schema works: the index, the function and the view are there.
	var index string
	require.NoError(t, conn.QueryRow(ctx, `SELECT indexname FROM pg_indexes WHERE tablename = 'orders' AND indexname LIKE '%account%'`).Scan(&index))
	assert.Equal(t, "orders_account_id_idx", index)
	_, err = conn.Exec(ctx, `WITH a AS (INSERT INTO accounts (email) VALUES ('a@example.com') RETURNING id)
		INSERT INTO orders (account_id, total) SELECT id, 12.5 FROM a UNION ALL SELECT id, 7.5 FROM a`)
	require.NoError(t, err)
	var total string
	require.NoError(t, conn.QueryRow(ctx, `SELECT total::text FROM order_totals`).Scan(&total))
	assert.Equal(t, "20.00", total)

	// Each test's database is its own copy.
	other := connect(t, NewDatabase(t, WithMigrations(testMigrations)))
	var n int
	require.NoError(t, other.QueryRow(ctx, "SELECT count(*) FROM accounts").Scan(&n))
	assert.Zero(t, n)
}

func TestWithMigrationsBuildsTemplateOnce(t *testing.T) {
	// Files of this run's own, so that the clones race to build their
	// template however many runs came before; the same files in a
	// directory too.
	files := mapOf(t, testMigrations)
	files["00001_accounts.sql"].Data = append([]byte(fmt.Sprintf("-- TestWithMigrationsBuildsTemplateOnce %d %d\n",
		os.Getpid(), time.Now().UnixNano())), files["00001_accounts.sql"].Data...)
	dir := t.TempDir()
	for name, f := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), f.Data, 0o600))
	}
	tmpl := migrationsTemplate(t, files)
	require.Equal(t, tmpl, migrationsTemplate(t, os.DirFS(dir)))
	dropTemplateAtEnd(t, tmpl)
	const clones = 4
	urls := make([]string, clones)
	var wg sync.WaitGroup
	for i := range clones {
		wg.Go(func() {
			f := newFakeTB(t, fmt.Sprintf("migrations%d", i))
			// The key is the files', not the fs.FS value's.
			fsys := fs.FS(files)
			if i%2 == 1 {
				fsys = os.DirFS(dir)
			}
			f.run(func(tb testing.TB) { urls[i] = NewDatabase(tb, WithMigrations(fsys)) })
			assert.Empty(t, f.fatals)
			t.Cleanup(f.runCleanups)
		})
	}
	wg.Wait()

	ctx := ctxT(t)
	var ids []string
	for _, u := range urls {
		require.NotEmpty(t, u)
		var id string
		require.NoError(t, connect(t, u).QueryRow(ctx, "SELECT id::text FROM seed").Scan(&id))
		ids = append(ids, id)
	}
	for _, id := range ids[1:] {
		assert.Equal(t, ids[0], id, "clones differ: the migrations ran more than once")
	}
	exists, isTemplate := databaseExists(t, tmpl)
	assert.True(t, exists, "template %s", tmpl)
	assert.True(t, isTemplate)
	_, ok := shared.templates.Load(tmpl)
	assert.True(t, ok)
}

func TestWithMigrationsChangedFileGetsItsOwnTemplate(t *testing.T) {
	// Files of this run's own: the test drops their templates.
	comment := fmt.Sprintf("-- TestWithMigrationsChangedFileGetsItsOwnTemplate %d %d\n", os.Getpid(), time.Now().UnixNano())
	v1 := fstest.MapFS{"00001_things.sql": {Data: []byte(comment + "-- +goose Up\nCREATE TABLE things (a int);\n-- +goose Down\nDROP TABLE things;\n")}}
	v2 := fstest.MapFS{"00001_things.sql": {Data: []byte(comment + "-- +goose Up\nCREATE TABLE things (a int, b int);\n-- +goose Down\nDROP TABLE things;\n")}}
	t1, t2 := migrationsTemplate(t, v1), migrationsTemplate(t, v2)
	require.NotEqual(t, t1, t2)
	dropTemplateAtEnd(t, t1)
	dropTemplateAtEnd(t, t2)

	columns := func(u string) int {
		var n int
		require.NoError(t, connect(t, u).QueryRow(ctxT(t),
			"SELECT count(*) FROM information_schema.columns WHERE table_name = 'things'").Scan(&n))
		return n
	}
	assert.Equal(t, 1, columns(NewDatabase(t, WithMigrations(v1))))
	assert.Equal(t, 2, columns(NewDatabase(t, WithMigrations(v2))))
	assert.Equal(t, 1, columns(NewDatabase(t, WithMigrations(v1))), "the first template is still there")
	for _, tmpl := range []string{t1, t2} {
		exists, isTemplate := databaseExists(t, tmpl)
		assert.True(t, exists && isTemplate, tmpl)
	}
}

// errFS is an fs.FS that cannot be read.
type errFS struct{}

func (errFS) Open(string) (fs.File, error) { return nil, errors.New("disk on fire") }

func TestMigrationsKey(t *testing.T) {
	base, err := migrationsKey(testMigrations)
	require.NoError(t, err)
	again, err := migrationsKey(mapOf(t, testMigrations))
	require.NoError(t, err)
	assert.Equal(t, base, again, "the same files in another fs.FS")

	changed := mapOf(t, testMigrations)
	changed["00003_orders_account_index.sql"].Data = append(changed["00003_orders_account_index.sql"].Data, '\n')
	renamed := mapOf(t, testMigrations)
	renamed["00006_order_totals.sql"] = renamed["00005_order_totals.sql"]
	delete(renamed, "00005_order_totals.sql")
	added := mapOf(t, testMigrations)
	added["00006_more.sql"] = &fstest.MapFile{Data: []byte("-- +goose Up\nSELECT 1;\n")}
	removed := mapOf(t, testMigrations)
	delete(removed, "00005_order_totals.sql")
	// A name and content that run together the same way must not collide.
	split1 := fstest.MapFS{"a": {Data: []byte("bc")}}
	split2 := fstest.MapFS{"ab": {Data: []byte("c")}}

	keys := map[string][]byte{"base": base}
	for name, fsys := range map[string]fs.FS{
		"changed": changed, "renamed": renamed, "added": added, "removed": removed,
		"split1": split1, "split2": split2,
	} {
		k, err := migrationsKey(fsys)
		require.NoError(t, err, name)
		for other, ok := range keys {
			assert.NotEqual(t, ok, k, "%s and %s share a key", name, other)
		}
		keys[name] = k
	}

	_, err = migrationsKey(nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nil fs.FS")
	_, err = migrationsKey(errFS{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "read migrations")
	assert.Contains(t, err.Error(), "disk on fire")
}

func TestWithMigrationsErrorFailsTest(t *testing.T) {
	broken := fstest.MapFS{
		"00001_ok.sql":     {Data: []byte("-- +goose Up\nCREATE TABLE fine (v int);\n-- +goose Down\nDROP TABLE fine;\n")},
		"00002_broken.sql": {Data: []byte("-- TestWithMigrationsErrorFailsTest\n-- +goose Up\nCREATE TABLE broken (;\n-- +goose Down\nSELECT 1;\n")},
	}
	tests := []struct {
		name  string
		fsys  fs.FS
		wants []string
	}{
		{"nil fs", nil, []string{"WithMigrations", "nil fs.FS"}},
		{"unreadable fs", errFS{}, []string{"read migrations", "disk on fire"}},
		{"no migrations", fstest.MapFS{}, []string{"WithMigrations", "no migrations found"}},
		{"failing migration", broken, []string{"apply migrations", "00002_broken.sql", "syntax error"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeTB(t, tt.name)
			var u string
			f.run(func(tb testing.TB) { u = NewDatabase(tb, WithMigrations(tt.fsys)) })
			assert.Empty(t, u)
			require.Len(t, f.fatals, 1)
			t.Log(f.fatals[0])
			for _, want := range tt.wants {
				assert.Contains(t, f.fatals[0], want)
			}
			if key, err := migrationsKey(tt.fsys); err == nil {
				tmpl, _ := templateName(key)
				exists, _ := databaseExists(t, tmpl)
				assert.False(t, exists, "half-built template %s left behind", tmpl)
			}
		})
	}
}

func BenchmarkNewDatabaseWithMigrations(b *testing.B) {
	Server(b)
	// Files of this run's own, so that the first database builds its
	// template however many runs came before.
	fsys := mapOf(b, testMigrations)
	first := fsys["00001_accounts.sql"]
	first.Data = append([]byte(fmt.Sprintf("-- BenchmarkNewDatabaseWithMigrations %d %d\n", os.Getpid(), time.Now().UnixNano())), first.Data...)
	opt := WithMigrations(fsys)
	dropTemplateAtEnd(b, migrationsTemplate(b, fsys))
	began := time.Now()
	NewDatabase(b, opt) // builds the template
	build := time.Since(began)
	b.Logf("first database, template built with 5 migrations: %s", build.Round(100*time.Microsecond))
	for b.Loop() {
		NewDatabase(b, opt)
	}
	b.ReportMetric(float64(build.Microseconds())/1000, "first-ms")
}

func BenchmarkNewDatabaseEmpty(b *testing.B) {
	Server(b)
	for b.Loop() {
		NewDatabase(b)
	}
}
