package migrate_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"testing/fstest"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/migrate"
)

// Without fx, a Migrator's Extension migrates when sprocketspg.New starts
// the pool.
func TestExtensionWithoutFx(t *testing.T) {
	t.Parallel()
	url := fxtest_helpers.NewDatabase(t)
	m, err := migrate.New(basicFS)
	require.NoError(t, err)
	ctx := ctxT(t)
	_, err = m.Version(ctx)
	require.ErrorIs(t, err, migrate.ErrNotStarted)

	pool, err := sprocketspg.New(ctx, poolConfig(t, url), sprocketspg.WithExtension(m.Extension()))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	require.Len(t, m.Applied(), 2)
	v, err := m.Version(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, basicTarget, v)
	_, err = pool.Execute(ctx, "INSERT INTO widgets (name, colour) VALUES ('cog', 'blue')")
	require.NoError(t, err)

	r := sprocketspg.NewChecker(pool).Check(ctx)
	c := schemaComponent(t, r)
	assert.Equal(t, "pass", string(c.Status))
	assert.EqualValues(t, basicTarget, c.ObservedValue)
}

// Apply migrates a *sql.DB of pgx's stdlib, and a second Apply finds
// nothing to do.
func TestApplyToSQLDB(t *testing.T) {
	t.Parallel()
	url := fxtest_helpers.NewDatabase(t)
	m, err := migrate.New(basicFS)
	require.NoError(t, err)
	assert.Equal(t, migrate.Config{Mode: migrate.ModeUp, Lock: migrate.LockSession,
		LockTimeout: migrate.DefaultLockTimeout, Timeout: migrate.DefaultTimeout}, m.Config(), "the defaults")
	db := openDB(t, url)
	ctx := ctxT(t)

	applied, err := m.Apply(ctx, db)
	require.NoError(t, err)
	require.Len(t, applied, 2)
	assert.Equal(t, "00001_widgets.sql", applied[0].File)
	assert.Equal(t, "00002_widget_colour.sql", applied[1].File)

	again, err := m.Apply(ctx, db)
	require.NoError(t, err)
	assert.Empty(t, again, "nothing applied the second time")

	conn := connect(t, url)
	assert.Equal(t, []int64{1, 2}, appliedVersions(t, conn))
	_, err = conn.Exec(ctx, "INSERT INTO widgets (name, colour) VALUES ('cog', 'green')")
	require.NoError(t, err)

	// A later release adds a migration: only it is applied.
	next := fstest.MapFS{
		"00001_widgets.sql":       {Data: mustRead(t, "testdata/basic/00001_widgets.sql")},
		"00002_widget_colour.sql": {Data: mustRead(t, "testdata/basic/00002_widget_colour.sql")},
		"00003_widget_weight.sql": {Data: []byte("-- +goose Up\nALTER TABLE widgets ADD COLUMN weight int;\n\n-- +goose Down\nALTER TABLE widgets DROP COLUMN weight;\n")},
	}
	m3, err := migrate.New(next)
	require.NoError(t, err)
	applied, err = m3.Apply(ctx, db)
	require.NoError(t, err)
	require.Len(t, applied, 1)
	assert.EqualValues(t, 3, applied[0].Version)
	assert.Equal(t, []int64{1, 2, 3}, appliedVersions(t, conn))
}

func TestNewRefusesBadInput(t *testing.T) {
	t.Parallel()
	for name, fsys := range map[string]fstest.MapFS{
		"no files":      {},
		"no migrations": emptyFS().(fstest.MapFS),
	} {
		_, err := migrate.New(fsys)
		require.Error(t, err, name)
		assert.ErrorIs(t, err, goose.ErrNoMigrations, name)
	}
	_, err := migrate.New(nil)
	assert.Error(t, err)

	_, err = migrate.New(fstest.MapFS{
		"00001_a.sql": {Data: []byte("-- +goose Up\nSELECT 1;\n")},
		"1_b.sql":     {Data: []byte("-- +goose Up\nSELECT 2;\n")},
	})
	assert.Error(t, err, "two migrations of version 1")

	_, err = migrate.New(basicFS, migrate.WithTableName("bad name; DROP TABLE x"))
	assert.ErrorContains(t, err, "table name")

	_, err = migrate.New(basicFS, migrate.WithConfig(func(c *migrate.Config) { c.Mode = "sideways" }))
	assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	_, err = migrate.New(basicFS, migrate.WithConfig(func(c *migrate.Config) { c.URL = "not a url" }))
	assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	assert.ErrorContains(t, err, "POSTGRES_MIGRATION_URL")
	_, err = migrate.New(basicFS, migrate.WithConfig(func(c *migrate.Config) { c.LockTimeout = -time.Second }))
	assert.ErrorContains(t, err, "POSTGRES_MIGRATION_LOCK_TIMEOUT")
}

// Apply returns at once for a cancelled context, and stops waiting for the
// lock when its context is cancelled.
func TestApplyHonoursContext(t *testing.T) {
	t.Parallel()
	url := fxtest_helpers.NewDatabase(t)
	m, err := migrate.New(basicFS)
	require.NoError(t, err)
	db := openDB(t, url)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	applied, err := m.Apply(ctx, db)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Empty(t, applied)
	assert.False(t, tableExists(t, connect(t, url), migrate.DefaultTableName), "nothing was done")

	holdSessionLock(t, url)
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(300*time.Millisecond, cancel)
	began := time.Now()
	_, err = m.Apply(ctx, db)
	assert.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, migrate.ErrLockTimeout)
	assert.Less(t, time.Since(began), 10*time.Second)
	assert.False(t, tableExists(t, connect(t, url), "widgets"))
}

// Options: a version table of its own name, Go migrations, empty
// migrations.
func TestApplyOptions(t *testing.T) {
	t.Parallel()
	url := fxtest_helpers.NewDatabase(t)
	ran := false
	goMigration := goose.NewGoMigration(3, &goose.GoFunc{RunTx: func(ctx context.Context, tx *sql.Tx) error {
		ran = true
		_, err := tx.ExecContext(ctx, "INSERT INTO widgets (name) VALUES ('from go')")
		return err
	}}, nil)
	fsys := fstest.MapFS{
		"00001_widgets.sql": {Data: mustRead(t, "testdata/basic/00001_widgets.sql")},
		"00002_nothing.sql": {Data: []byte("-- +goose Up\n\n-- +goose Down\n")},
	}
	m, err := migrate.New(fsys, migrate.WithTableName("app_versions"), migrate.WithGoMigrations(goMigration))
	require.NoError(t, err)
	assert.EqualValues(t, 3, m.Target())

	applied, err := m.Apply(ctxT(t), openDB(t, url))
	require.NoError(t, err)
	require.Len(t, applied, 3)
	assert.True(t, ran)
	assert.False(t, applied[0].Empty)
	assert.True(t, applied[1].Empty, "a migration with nothing to run")
	assert.EqualValues(t, 3, applied[2].Version)

	conn := connect(t, url)
	assert.True(t, tableExists(t, conn, "app_versions"))
	assert.False(t, tableExists(t, conn, migrate.DefaultTableName))
	var n int
	require.NoError(t, conn.QueryRow(ctxT(t), "SELECT count(*) FROM app_versions WHERE version_id > 0").Scan(&n))
	assert.Equal(t, 3, n)
	require.NoError(t, conn.QueryRow(ctxT(t), "SELECT count(*) FROM widgets WHERE name = 'from go'").Scan(&n))
	assert.Equal(t, 1, n)
}

// A Go migration registered with WithGoMigrations has no file; Applied and
// MigrationError must still name it usefully, not as ".".
func TestGoMigrationIsNamed(t *testing.T) {
	t.Parallel()
	url := fxtest_helpers.NewDatabase(t)
	good := goose.NewGoMigration(1, &goose.GoFunc{RunTx: func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "CREATE TABLE from_go (id int)")
		return err
	}}, nil)
	bad := goose.NewGoMigration(2, &goose.GoFunc{RunTx: func(context.Context, *sql.Tx) error {
		return errors.New("go migration failed")
	}}, nil)
	m, err := migrate.New(fstest.MapFS{}, migrate.WithGoMigrations(good, bad))
	require.NoError(t, err)
	applied, err := m.Apply(ctxT(t), openDB(t, url))
	require.Error(t, err)
	require.Len(t, applied, 1)
	var me *migrate.MigrationError
	require.ErrorAs(t, err, &me)
	assert.EqualValues(t, 2, me.Version)
	t.Logf("applied file %q; failed file %q; error: %v", applied[0].File, me.File, err)
	for _, file := range []string{applied[0].File, me.File} {
		assert.NotContains(t, []string{"", "."}, file, "a Go migration's name")
	}
}

// Mode only without fx: New starts the pool, migrates, and calls the exit
// function; when it returns, New fails with ErrOnly and returns no pool.
func TestOnlyModeWithoutFx(t *testing.T) {
	t.Parallel()
	url := fxtest_helpers.NewDatabase(t)
	var codes []int
	m, err := migrate.New(basicFS, migrate.WithConfig(func(c *migrate.Config) { c.Mode = migrate.ModeOnly }),
		migrate.WithExit(func(code int) { codes = append(codes, code) }))
	require.NoError(t, err)
	pool, err := sprocketspg.New(ctxT(t), poolConfig(t, url), sprocketspg.WithExtension(m.Extension()))
	if pool != nil {
		pool.Close()
	}
	require.ErrorIs(t, err, migrate.ErrOnly)
	assert.Nil(t, pool)
	assert.Equal(t, []int{0}, codes)
	assert.Equal(t, []int64{1, 2}, appliedVersions(t, connect(t, url)))
}
