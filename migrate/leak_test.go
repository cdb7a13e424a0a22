package migrate_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/goleak"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/migrate"
)

// An app that migrates, with either lock, then stops leaves no goroutine
// behind: not the migrations' database/sql handle, nor the table lock's
// heartbeat.
func TestNoGoroutineLeftAfterStop(t *testing.T) {
	for _, lock := range []migrate.Lock{migrate.LockSession, migrate.LockTable} {
		t.Run(string(lock), func(t *testing.T) {
			// The database first: the server NewDatabase may start runs on
			// after the test, with its goroutine.
			url := fxtest_helpers.NewDatabase(t)
			t.Setenv(sprocketspg.EnvURL, url)
			t.Setenv(migrate.EnvLock, string(lock))
			ignore := goleak.IgnoreCurrent()

			var m *migrate.Migrator
			app := fx.New(fx.NopLogger, sprocketspg.Module, migrate.Migrations(basicFS), fx.Populate(&m))
			require.NoError(t, app.Err())
			ctx := ctxT(t)
			require.NoError(t, app.Start(ctx))
			require.Len(t, m.Applied(), 2)
			v, err := m.Version(ctx)
			require.NoError(t, err)
			require.EqualValues(t, basicTarget, v)
			require.NoError(t, app.Stop(context.Background()))

			goleak.VerifyNone(t, ignore)
			require.Equal(t, []int64{1, 2}, appliedVersions(t, connect(t, url)))
		})
	}
}

// A failed start leaves none either.
func TestNoGoroutineLeftAfterFailedStart(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, url)
	ignore := goleak.IgnoreCurrent()

	app := fx.New(fx.NopLogger, sprocketspg.Module, migrate.Migrations(brokenFS))
	require.NoError(t, app.Err())
	require.Error(t, app.Start(ctxT(t)))

	goleak.VerifyNone(t, ignore)
	require.Equal(t, []int64{1}, appliedVersions(t, connect(t, url)))
}
