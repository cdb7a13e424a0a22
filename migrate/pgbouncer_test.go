package migrate_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/migrate"
)

// bouncedDatabase creates a database on the test server and starts
// PgBouncer in transaction pooling mode in front of it; it returns the
// database's direct URL and its URL through PgBouncer.
func bouncedDatabase(t *testing.T) (direct, bounced string) {
	t.Helper()
	srv := fxtest_helpers.Server(t)
	direct = srv.NewDatabase(t)
	u, err := url.Parse(direct)
	require.NoError(t, err)
	bounced = fxtest_helpers.StartPgBouncer(t, srv, strings.TrimPrefix(u.Path, "/"),
		fxtest_helpers.WithPgBouncerSetting("pool_mode", "transaction"))
	return direct, bounced
}

// Behind PgBouncer in transaction mode, where a session lock would land
// on a server connection other clients share, migrations take the table
// lock, or go to the server directly.
func TestMigrationsBehindPgBouncer(t *testing.T) {
	t.Run("table lock through PgBouncer", func(t *testing.T) {
		direct, bounced := bouncedDatabase(t)
		t.Setenv(sprocketspg.EnvURL, bounced)
		// No prepared statements, which transaction pooling cannot keep.
		t.Setenv(sprocketspg.EnvQueryExecMode, "exec")
		t.Setenv(migrate.EnvLock, "table")
		var m *migrate.Migrator
		var pool *sprocketspg.Pool
		app := newApp(t, sprocketspg.Module, migrate.Migrations(basicFS), fx.Populate(&m, &pool))
		assert.Equal(t, migrate.LockTable, m.Config().Lock)
		require.NoError(t, app.Start(ctxT(t)))
		assert.Len(t, m.Applied(), 2)

		conn := connect(t, direct)
		assert.Equal(t, []int64{1, 2}, appliedVersions(t, conn))
		assert.True(t, tableExists(t, conn, "goose_lock"), "goose's table locker was used")
		var held int
		require.NoError(t, conn.QueryRow(ctxT(t), "SELECT count(*) FROM goose_lock WHERE locked").Scan(&held))
		assert.Equal(t, 0, held, "the table lock was released")
		_, err := conn.Exec(ctxT(t), "INSERT INTO widgets (name, colour) VALUES ('cog', 'red')")
		require.NoError(t, err)
		// The pool itself works through PgBouncer on the migrated schema.
		res, err := pool.Execute(ctxT(t), "SELECT count(*) AS n FROM widgets WHERE colour = $1", "red")
		require.NoError(t, err)
		assert.EqualValues(t, 1, res.Row["n"])
		v, err := m.Version(ctxT(t))
		require.NoError(t, err)
		assert.EqualValues(t, basicTarget, v)
	})

	t.Run("migration URL to the server", func(t *testing.T) {
		direct, bounced := bouncedDatabase(t)
		t.Setenv(sprocketspg.EnvURL, bounced)
		t.Setenv(sprocketspg.EnvQueryExecMode, "exec")
		t.Setenv(migrate.EnvURL, direct)
		var m *migrate.Migrator
		app := newApp(t, sprocketspg.Module, migrate.Migrations(directLockFS), fx.Populate(&m))
		assert.Equal(t, migrate.LockSession, m.Config().Lock)
		require.NoError(t, app.Start(ctxT(t)))

		conn := connect(t, direct)
		assert.Equal(t, []int64{1}, appliedVersions(t, conn))
		var n int
		require.NoError(t, conn.QueryRow(ctxT(t), "SELECT n FROM lock_seen").Scan(&n))
		assert.Equal(t, 1, n, "the migration ran on a session of its own that held goose's advisory lock")
		assert.False(t, tableExists(t, conn, "goose_lock"), "no table lock")
		v, err := m.Version(ctxT(t))
		require.NoError(t, err, "Version reads through the pool, through PgBouncer")
		assert.EqualValues(t, 1, v)
	})
}
