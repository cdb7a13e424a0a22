package migrate_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/migrate"
)

// A migration whose second statement fails is rolled back whole, fails
// start with an error naming its file and the server's words, and leaves
// the migrations before it applied; the application never becomes ready.
func TestFailingMigrationFailsStartAndRollsBack(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, url)
	var checker *health.Checker
	var m *migrate.Migrator
	served := false
	app := newApp(t, sprocketspg.Module, migrate.Migrations(brokenFS), fx.Populate(&checker, &m), servedHook(&served))

	err := app.Start(ctxT(t))
	require.Error(t, err)
	t.Logf("start error: %v", err)
	msg := err.Error()
	assert.Contains(t, msg, "00002_broken.sql")
	assert.Contains(t, msg, "version 2")
	assert.Contains(t, msg, "SQLSTATE 42P01")
	assert.Contains(t, msg, `relation "no_such_table" does not exist`)

	var me *migrate.MigrationError
	require.ErrorAs(t, err, &me)
	assert.Equal(t, "00002_broken.sql", me.File)
	assert.EqualValues(t, 2, me.Version)
	require.Len(t, me.Applied, 1, "the migration before it in the same run")
	assert.Equal(t, "00001_widgets.sql", me.Applied[0].File)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "42P01", pgErr.Code)

	conn := connect(t, url)
	assert.False(t, tableExists(t, conn, "half_done"), "the failed migration's first statement was rolled back")
	assert.False(t, tableExists(t, conn, "after_broken"), "no migration after the failed one ran")
	assert.True(t, tableExists(t, conn, "widgets"), "the migration before it stays applied")
	assert.Equal(t, []int64{1}, appliedVersions(t, conn), "the version table does not list the failed one")
	assert.Nil(t, m.Applied(), "Applied lists a successful start's migrations")

	assert.False(t, served, "nothing after the pool started")
	assert.False(t, checker.Ready(), "readiness never opened")
	code, doc := readyz(t, checker)
	assert.Equal(t, http.StatusServiceUnavailable, code, doc)
	assert.Equal(t, "fail", doc["status"])
}

// The same failure without fx: Apply returns the *MigrationError itself.
func TestApplyFailingMigrationReturnsMigrationError(t *testing.T) {
	t.Parallel()
	url := fxtest_helpers.NewDatabase(t)
	m, err := migrate.New(brokenFS)
	require.NoError(t, err)
	db := openDB(t, url)

	applied, err := m.Apply(ctxT(t), db)
	require.Error(t, err)
	require.Len(t, applied, 1)
	assert.EqualValues(t, 1, applied[0].Version)
	var me *migrate.MigrationError
	require.True(t, errors.As(err, &me), "%v", err)
	assert.Equal(t, "00002_broken.sql", me.File)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "42P01", pgErr.Code)

	conn := connect(t, url)
	assert.False(t, tableExists(t, conn, "half_done"))
	assert.Equal(t, []int64{1}, appliedVersions(t, conn))
}
