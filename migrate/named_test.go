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

// bothMigrators is a constructor's view of an app with migrations for the
// default instance and for orders.
type bothMigrators struct {
	fx.In

	Default *migrate.Migrator
	Orders  *migrate.Migrator `name:"orders"`
}

// A Named instance has migrations of its own, on its own database, with
// its own variables, next to the default instance's.
func TestNamedInstanceMigrations(t *testing.T) {
	defaultURL, ordersURL := fxtest_helpers.NewDatabase(t), fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, defaultURL)
	t.Setenv("ORDERS_POSTGRES_URL", ordersURL)
	t.Setenv("ORDERS_POSTGRES_MIGRATE", "up")
	t.Setenv("ORDERS_POSTGRES_MIGRATION_LOCK_TIMEOUT", "45")
	t.Setenv(migrate.EnvLockTimeout, "30") // the default instance's, not orders'
	var both bothMigrators
	var annotated *migrate.Migrator
	var checker *health.Checker
	app := newApp(t,
		sprocketspg.Module, migrate.Migrations(basicFS),
		sprocketspg.Named("orders"), migrate.Migrations(ordersFS, migrate.ForInstance("orders")),
		sprocketspg.ProvideHealthOptions(health.WithCacheWindow(0)),
		fx.Populate(&both, &checker),
		fx.Invoke(fx.Annotate(func(m *migrate.Migrator) { annotated = m }, fx.ParamTags(`name:"orders"`))),
	)
	require.NotSame(t, both.Default, both.Orders)
	assert.Same(t, both.Orders, annotated, "the tagged Migrator, by fx.Annotate as by fx.In")
	assert.Equal(t, int64(basicTarget), both.Default.Target())
	assert.Equal(t, int64(ordersTarget), both.Orders.Target())
	assert.Equal(t, "45s", both.Orders.Config().LockTimeout.String())
	assert.Equal(t, "30s", both.Default.Config().LockTimeout.String())

	ctx := ctxT(t)
	require.NoError(t, app.Start(ctx))

	def, orders := connect(t, defaultURL), connect(t, ordersURL)
	assert.Equal(t, []int64{1, 2}, appliedVersions(t, def))
	assert.Equal(t, []int64{1, 2, 3}, appliedVersions(t, orders))
	assert.True(t, tableExists(t, def, "widgets"))
	assert.False(t, tableExists(t, def, "orders"), "orders' schema is not in the default database")
	assert.True(t, tableExists(t, orders, "orders"))
	assert.False(t, tableExists(t, orders, "widgets"), "the default schema is not in orders' database")
	_, err := orders.Exec(ctx, "INSERT INTO orders (customer, status) VALUES ('ada', 'paid')")
	require.NoError(t, err)

	v, err := both.Orders.Version(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, ordersTarget, v)
	v, err = both.Default.Version(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, basicTarget, v)

	code, doc := readyz(t, checker)
	require.Equal(t, http.StatusOK, code, doc)
	assert.Equal(t, "pass", doc["status"])
	res := readyzCheck(t, doc, "postgres:schemaVersion")
	assert.EqualValues(t, basicTarget, res["observedValue"])
	assert.Equal(t, "pass", res["status"])
	res = readyzCheck(t, doc, "postgres-orders:schemaVersion")
	assert.EqualValues(t, ordersTarget, res["observedValue"])
	assert.Equal(t, "pass", res["status"])
	assert.Equal(t, "version", res["observedUnit"])
}

// Each instance's mode is its own: orders off, the default up.
func TestNamedInstanceModeIsItsOwn(t *testing.T) {
	defaultURL, ordersURL := fxtest_helpers.NewDatabase(t), fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, defaultURL)
	t.Setenv("ORDERS_POSTGRES_URL", ordersURL)
	t.Setenv("ORDERS_POSTGRES_MIGRATE", "off")
	var both bothMigrators
	var checker *health.Checker
	app := newApp(t,
		sprocketspg.Module, migrate.Migrations(basicFS),
		sprocketspg.Named("orders"), migrate.Migrations(ordersFS, migrate.ForInstance("orders")),
		sprocketspg.ProvideHealthOptions(health.WithCacheWindow(0)),
		fx.Populate(&both, &checker),
	)
	require.NoError(t, app.Start(ctxT(t)))
	assert.Equal(t, []int64{1, 2}, appliedVersions(t, connect(t, defaultURL)))
	assert.False(t, tableExists(t, connect(t, ordersURL), migrate.DefaultTableName))

	code, doc := readyz(t, checker)
	require.Equal(t, http.StatusOK, code, doc)
	assert.Equal(t, "pass", readyzCheck(t, doc, "postgres:schemaVersion")["status"])
	res := readyzCheck(t, doc, "postgres-orders:schemaVersion")
	assert.Equal(t, "warn", res["status"])
	assert.Contains(t, res["output"], "ORDERS_POSTGRES_MIGRATE off")
}

// In mode only, the process ends once every instance's migrations are
// applied, not after the first instance's.
func TestOnlyModeWaitsForEveryInstance(t *testing.T) {
	defaultURL, ordersURL := fxtest_helpers.NewDatabase(t), fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, defaultURL)
	t.Setenv(migrate.EnvMode, "only")
	t.Setenv("ORDERS_POSTGRES_URL", ordersURL)
	var codes []int
	exit := migrate.WithExit(func(code int) { codes = append(codes, code) })
	served := false
	app := newApp(t,
		sprocketspg.Module, migrate.Migrations(basicFS, exit),
		sprocketspg.Named("orders"), migrate.Migrations(ordersFS, migrate.ForInstance("orders"), exit),
		servedHook(&served),
	)
	err := app.Start(ctxT(t))
	assert.ErrorIs(t, err, migrate.ErrOnly)
	assert.Equal(t, []int{0}, codes, "one exit, after both")
	assert.False(t, served)
	assert.Equal(t, []int64{1, 2}, appliedVersions(t, connect(t, defaultURL)))
	assert.Equal(t, []int64{1, 2, 3}, appliedVersions(t, connect(t, ordersURL)))
}

// fx.New fails, before any I/O, for a bad variable of a named instance,
// an instance that is not in the application, and two Migrations of one
// instance.
func TestMigrationsWiringErrors(t *testing.T) {
	t.Setenv("ORDERS_POSTGRES_URL", "postgres://u@127.0.0.1:1/orders")
	t.Setenv(sprocketspg.EnvURL, "postgres://u@127.0.0.1:1/default")

	t.Run("bad mode of a named instance", func(t *testing.T) {
		t.Setenv("ORDERS_POSTGRES_MIGRATE", "sideways")
		t.Setenv(migrate.EnvMode, "up")
		app := newAppErr(t, sprocketspg.Named("orders"), migrate.Migrations(ordersFS, migrate.ForInstance("orders")))
		err := app.Err()
		require.Error(t, err)
		assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
		assert.Contains(t, err.Error(), `invalid ORDERS_POSTGRES_MIGRATE "sideways"`)
		assert.Contains(t, err.Error(), "want up, off or only")
		var ce *sprocketspg.ConfigError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, "ORDERS_POSTGRES_MIGRATE", ce.Variable)
	})

	t.Run("bad durations and lock, all reported", func(t *testing.T) {
		t.Setenv(migrate.EnvLock, "mutex")
		t.Setenv(migrate.EnvLockTimeout, "soon")
		t.Setenv(migrate.EnvTimeout, "-3")
		err := newAppErr(t, sprocketspg.Module, migrate.Migrations(basicFS)).Err()
		require.Error(t, err)
		assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
		for _, want := range []string{`invalid POSTGRES_MIGRATION_LOCK "mutex"`, `invalid POSTGRES_MIGRATION_LOCK_TIMEOUT "soon"`,
			`invalid POSTGRES_MIGRATION_TIMEOUT`} {
			assert.Contains(t, err.Error(), want)
		}
	})

	t.Run("instance not in the application", func(t *testing.T) {
		err := newAppErr(t, sprocketspg.Module, migrate.Migrations(ordersFS, migrate.ForInstance("nope"))).Err()
		require.Error(t, err)
		assert.Contains(t, err.Error(), `add sprocketspg.Named("nope")`)
	})

	t.Run("default instance not in the application", func(t *testing.T) {
		err := newAppErr(t, sprocketspg.Named("orders"), migrate.Migrations(basicFS)).Err()
		require.Error(t, err)
		assert.Contains(t, err.Error(), "add sprocketspg.Module")
	})

	t.Run("two Migrations for one instance", func(t *testing.T) {
		err := newAppErr(t, sprocketspg.Named("orders"),
			migrate.Migrations(ordersFS, migrate.ForInstance("orders")),
			migrate.Migrations(ordersFS, migrate.ForInstance("orders"))).Err()
		require.Error(t, err)
		assert.Contains(t, err.Error(), `cannot provide *migrate.Migrator[name="orders"]`)
		assert.Contains(t, err.Error(), "already provided")
		err = newAppErr(t, sprocketspg.Module, migrate.Migrations(basicFS), migrate.Migrations(ordersFS)).Err()
		require.Error(t, err)
		assert.Contains(t, err.Error(), "cannot provide *migrate.Migrator ")
		assert.Contains(t, err.Error(), "already provided")
	})

	t.Run("no migrations in the fs.FS", func(t *testing.T) {
		err := newAppErr(t, sprocketspg.Module, migrate.Migrations(emptyFS())).Err()
		require.Error(t, err)
		assert.Contains(t, err.Error(), "default database instance")
	})

	t.Run("the same folder for two instances is fine", func(t *testing.T) {
		app := newAppErr(t, sprocketspg.Module, migrate.Migrations(ordersFS),
			sprocketspg.Named("orders"), migrate.Migrations(ordersFS, migrate.ForInstance("orders")))
		require.NoError(t, app.Err())
	})
}
