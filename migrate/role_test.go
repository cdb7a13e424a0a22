package migrate_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/migrate"
)

// POSTGRES_MIGRATION_URL may name a role of its own for the DDL, while the
// pool connects as the application's role.
func TestMigrationURLWithItsOwnRole(t *testing.T) {
	dbURL := fxtest_helpers.NewDatabase(t)
	admin := connect(t, dbURL)
	ctx := ctxT(t)
	role := fmt.Sprintf("migrator_%d", os.Getpid())
	_, err := admin.Exec(ctx, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN")
	require.NoError(t, err)
	t.Cleanup(func() {
		// Before the database is dropped: the role's objects go first.
		_, _ = admin.Exec(context.Background(), "DROP OWNED BY "+pgx.Identifier{role}.Sanitize())
		_, _ = admin.Exec(context.Background(), "DROP ROLE "+pgx.Identifier{role}.Sanitize())
	})
	_, err = admin.Exec(ctx, "GRANT CREATE ON SCHEMA public TO "+pgx.Identifier{role}.Sanitize())
	require.NoError(t, err)
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	u.User = url.User(role)

	t.Setenv(sprocketspg.EnvURL, dbURL)
	t.Setenv(migrate.EnvURL, u.String())
	var pool *sprocketspg.Pool
	app := newApp(t, sprocketspg.Module, migrate.Migrations(basicFS), fx.Populate(&pool))
	require.NoError(t, app.Start(ctx))

	for _, table := range []string{"widgets", migrate.DefaultTableName} {
		var owner string
		require.NoError(t, admin.QueryRow(ctx, "SELECT tableowner FROM pg_tables WHERE tablename = $1", table).Scan(&owner))
		assert.Equal(t, role, owner, "%s was created by the migration role", table)
	}
	res, err := pool.Execute(ctx, "SELECT current_user AS u")
	require.NoError(t, err)
	assert.NotEqual(t, role, res.Row["u"], "the pool keeps the instance's role")
	assert.Equal(t, []int64{1, 2}, appliedVersions(t, admin))
}
