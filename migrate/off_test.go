package migrate_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/migrate"
)

// In mode off the application starts without touching the schema, and
// its readiness warns while migrations are pending; once a separate job
// has migrated, it passes.
func TestOffModeLeavesSchemaAlone(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, url)
	t.Setenv(migrate.EnvMode, "OFF") // case does not matter
	var m *migrate.Migrator
	var checker *health.Checker
	served := false
	app := newApp(t, sprocketspg.Module, migrate.Migrations(basicFS),
		sprocketspg.ProvideHealthOptions(health.WithCacheWindow(0)),
		fx.Populate(&m, &checker), servedHook(&served))
	assert.Equal(t, migrate.ModeOff, m.Config().Mode)
	ctx := ctxT(t)
	require.NoError(t, app.Start(ctx))
	assert.True(t, served, "the application serves")

	conn := connect(t, url)
	assert.False(t, tableExists(t, conn, migrate.DefaultTableName), "no version table")
	assert.False(t, tableExists(t, conn, "widgets"))
	v, err := m.Version(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 0, v)
	assert.Nil(t, m.Applied())

	r := checker.Check(ctx)
	c := schemaComponent(t, r.Databases()[0])
	assert.Equal(t, health.StatusWarn, c.Status)
	assert.Contains(t, c.Output, "schema at version 0; migrations go to 2")
	assert.Contains(t, c.Output, "POSTGRES_MIGRATE off")
	assert.Equal(t, health.StatusWarn, r.Status)
	assert.True(t, r.Available, "pending migrations warn, they do not fail")

	code, doc := readyz(t, checker)
	assert.Equal(t, http.StatusOK, code, doc)
	assert.Equal(t, "warn", doc["status"])
	res := readyzCheck(t, doc, "postgres:schemaVersion")
	assert.Equal(t, "warn", res["status"])
	assert.EqualValues(t, 0, res["observedValue"])

	// A separate job migrates; the check follows the server.
	_, err = migrateDirect(t, url, basicFS)
	require.NoError(t, err)
	v, err = m.Version(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, basicTarget, v)
	c = schemaComponent(t, checker.Check(ctx).Databases()[0])
	assert.Equal(t, health.StatusPass, c.Status, c.Output)
	assert.EqualValues(t, basicTarget, c.ObservedValue)
}
