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

// The readiness document reports the schema version once the app has
// started, and the Migrator says what it applied.
func TestReadyzReportsSchemaVersion(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, url)
	var m *migrate.Migrator
	var checker *health.Checker
	app := newApp(t, sprocketspg.Module, migrate.Migrations(basicFS),
		sprocketspg.ProvideHealthOptions(health.WithCacheWindow(0)),
		fx.Populate(&m, &checker))
	ctx := ctxT(t)

	_, err := m.Version(ctx)
	assert.ErrorIs(t, err, migrate.ErrNotStarted)
	assert.Nil(t, m.Applied())
	assert.EqualValues(t, basicTarget, m.Target())
	code, doc := readyz(t, checker)
	assert.Equal(t, http.StatusServiceUnavailable, code, "not ready before start: %v", doc)

	require.NoError(t, app.Start(ctx))

	v, err := m.Version(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, basicTarget, v)
	applied := m.Applied()
	require.Len(t, applied, 2)
	for i, want := range []struct {
		version int64
		file    string
	}{{1, "00001_widgets.sql"}, {2, "00002_widget_colour.sql"}} {
		assert.Equal(t, want.version, applied[i].Version)
		assert.Equal(t, want.file, applied[i].File)
		assert.Positive(t, applied[i].Duration)
		assert.False(t, applied[i].Empty)
	}
	applied[0].File = "changed"
	assert.Equal(t, "00001_widgets.sql", m.Applied()[0].File, "Applied returns a copy")

	code, doc = readyz(t, checker)
	require.Equal(t, http.StatusOK, code, doc)
	assert.Equal(t, "pass", doc["status"])
	res := readyzCheck(t, doc, "postgres:schemaVersion")
	assert.EqualValues(t, basicTarget, res["observedValue"])
	assert.Equal(t, "version", res["observedUnit"])
	assert.Equal(t, "pass", res["status"])
	assert.Equal(t, "datastore", res["componentType"])
	assert.NotContains(t, res, "output")

	// A version past the migrations' target (a newer release migrated)
	// still passes.
	conn := connect(t, url)
	_, err = conn.Exec(ctx, "INSERT INTO goose_db_version (version_id, is_applied) VALUES (7, true)")
	require.NoError(t, err)
	code, doc = readyz(t, checker)
	require.Equal(t, http.StatusOK, code, doc)
	res = readyzCheck(t, doc, "postgres:schemaVersion")
	assert.EqualValues(t, 7, res["observedValue"])
	assert.Equal(t, "pass", res["status"])

	require.NoError(t, app.Stop(ctx))
	_, err = m.Version(ctx)
	assert.Error(t, err, "no version from a stopped instance")
	t.Logf("Version after stop: %v", err)
}

// Through an HTTP server, as a service serves it, with a Migrator whose
// migrations were all applied before start.
func TestReadyzOverHTTPWithNothingPending(t *testing.T) {
	t.Parallel()
	url := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithMigrations(basicFS))
	var m *migrate.Migrator
	var checker *health.Checker
	fxtest_helpers.NewAppWithDatabase(t, url, migrate.Migrations(basicFS), fx.Populate(&m, &checker))
	assert.Empty(t, m.Applied(), "nothing was pending")
	srv := serveHealth(t, checker)
	resp, err := http.Get(srv.URL + "/readyz")
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	doc := decodeBody(t, resp)
	res := readyzCheck(t, doc, "postgres:schemaVersion")
	assert.EqualValues(t, basicTarget, res["observedValue"])
	assert.Equal(t, "pass", res["status"])
}
