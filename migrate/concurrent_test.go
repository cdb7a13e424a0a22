package migrate_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/migrate"
)

// Four processes that start together on one database apply each migration
// once: one holds goose's lock while the others wait for it, then find
// nothing to do.
func TestConcurrentStartsApplyEachMigrationOnce(t *testing.T) {
	for _, lock := range []migrate.Lock{migrate.LockSession, migrate.LockTable} {
		t.Run(string(lock), func(t *testing.T) {
			t.Setenv(migrate.EnvLock, string(lock))
			testConcurrentStarts(t)
		})
	}
}

func testConcurrentStarts(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, url)

	const apps = 4
	migrators := make([]*migrate.Migrator, apps)
	all := make([]*fx.App, apps)
	for i := range all {
		all[i] = newApp(t, sprocketspg.Module, migrate.Migrations(concurrentFS), fx.Populate(&migrators[i]))
	}

	ctx := ctxT(t)
	errs := make([]error, apps)
	took := make([]time.Duration, apps)
	var wg sync.WaitGroup
	begin := make(chan struct{})
	for i, app := range all {
		wg.Go(func() {
			<-begin
			began := time.Now()
			errs[i] = app.Start(ctx)
			took[i] = time.Since(began)
		})
	}
	close(begin)
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "app %d", i)
	}
	t.Logf("start times: %v", took)

	conn := connect(t, url)
	var n, distinct int
	require.NoError(t, conn.QueryRow(ctx,
		"SELECT count(*), count(DISTINCT version_id) FROM goose_db_version WHERE version_id > 0").Scan(&n, &distinct))
	assert.Equal(t, 3, n, "one row per migration")
	assert.Equal(t, 3, distinct, "no version twice")
	assert.Equal(t, []int64{1, 2, 3}, appliedVersions(t, conn))

	// One app applied all three; the others waited and found none pending.
	var appliers, applied int
	for _, m := range migrators {
		if a := m.Applied(); len(a) > 0 {
			appliers++
			applied += len(a)
			assert.Equal(t, []string{"00001_gadgets.sql", "00002_gadget_size.sql", "00003_gadget_name_unique.sql"},
				[]string{a[0].File, a[1].File, a[2].File})
		}
		v, err := m.Version(ctx)
		require.NoError(t, err)
		assert.EqualValues(t, 3, v)
	}
	assert.Equal(t, 1, appliers, "exactly one process migrated")
	assert.Equal(t, 3, applied)
	// The others waited for the lock: at least the first migration's sleep.
	slowest := time.Duration(0)
	for _, d := range took {
		slowest = max(slowest, d)
	}
	assert.GreaterOrEqual(t, slowest, 300*time.Millisecond, "some start waited for the migrating one")

	// The schema is there, with the last migration's unique index.
	_, err := conn.Exec(ctx, "INSERT INTO gadgets (name, size) VALUES ('sprocket', 3)")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "INSERT INTO gadgets (name, size) VALUES ('sprocket', 4)")
	require.Error(t, err, "gadgets_name is unique")

	for _, app := range all {
		require.NoError(t, app.Stop(context.Background()))
	}
}
