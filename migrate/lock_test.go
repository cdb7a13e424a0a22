package migrate_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pressly/goose/v3/lock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/migrate"
)

// holdSessionLock takes goose's session advisory lock on a connection of
// the test's own to url, as another process migrating would.
func holdSessionLock(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	holder := connect(t, url)
	var ok bool
	require.NoError(t, holder.QueryRow(ctxT(t), "SELECT pg_try_advisory_lock($1)", lock.DefaultLockID).Scan(&ok))
	require.True(t, ok)
	return holder
}

// waitForLockAttempt waits until a session other than holder's has asked
// for goose's advisory lock in the database of holder.
func waitForLockAttempt(t *testing.T, holder *pgx.Conn) {
	t.Helper()
	require.Eventually(t, func() bool {
		var n int
		err := holder.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%pg_try_advisory_lock%'`).Scan(&n)
		return err == nil && n > 0
	}, 10*time.Second, 20*time.Millisecond, "nobody tried to take the lock")
}

// A process that finds the lock held for longer than the lock timeout
// fails start, saying so; one that finds it released in time migrates.
func TestLockHeldByAnotherProcess(t *testing.T) {
	t.Run("times out", func(t *testing.T) {
		url := fxtest_helpers.NewDatabase(t)
		t.Setenv(sprocketspg.EnvURL, url)
		t.Setenv(migrate.EnvLockTimeout, "2s")
		holdSessionLock(t, url)
		served := false
		app := newApp(t, sprocketspg.Module, migrate.Migrations(basicFS), servedHook(&served))

		began := time.Now()
		err := app.Start(ctxT(t))
		took := time.Since(began)
		require.Error(t, err)
		t.Logf("failed after %s: %v", took.Round(time.Millisecond), err)
		assert.ErrorIs(t, err, migrate.ErrLockTimeout)
		assert.NotErrorIs(t, err, migrate.ErrTimeout)
		assert.Less(t, took, 15*time.Second)
		assert.GreaterOrEqual(t, took, time.Second, "it waited for the lock")
		assert.Contains(t, err.Error(), "lock")
		assert.Contains(t, err.Error(), "advisory")
		assert.Contains(t, err.Error(), "POSTGRES_MIGRATION_LOCK_TIMEOUT")
		assert.False(t, served)
		assert.False(t, tableExists(t, connect(t, url), "widgets"))
	})

	t.Run("released while waiting", func(t *testing.T) {
		url := fxtest_helpers.NewDatabase(t)
		t.Setenv(sprocketspg.EnvURL, url)
		t.Setenv(migrate.EnvLockTimeout, "30")
		holder := holdSessionLock(t, url)
		var m *migrate.Migrator
		app := newApp(t, sprocketspg.Module, migrate.Migrations(basicFS), fx.Populate(&m))

		var wg sync.WaitGroup
		var startErr error
		wg.Go(func() { startErr = app.Start(ctxT(t)) })
		waitForLockAttempt(t, holder)
		var released bool
		require.NoError(t, holder.QueryRow(ctxT(t), "SELECT pg_advisory_unlock($1)", lock.DefaultLockID).Scan(&released))
		require.True(t, released)
		wg.Wait()
		require.NoError(t, startErr)
		assert.Equal(t, []int64{1, 2}, appliedVersions(t, holder))
		assert.Len(t, m.Applied(), 2)
	})

	t.Run("named instance names its variable", func(t *testing.T) {
		url := fxtest_helpers.NewDatabase(t)
		t.Setenv("ORDERS_POSTGRES_URL", url)
		t.Setenv("ORDERS_POSTGRES_MIGRATION_LOCK_TIMEOUT", "1")
		holdSessionLock(t, url)
		app := newApp(t, sprocketspg.Named("orders"), migrate.Migrations(ordersFS, migrate.ForInstance("orders")))
		err := app.Start(ctxT(t))
		require.Error(t, err)
		assert.ErrorIs(t, err, migrate.ErrLockTimeout)
		assert.Contains(t, err.Error(), "(ORDERS_POSTGRES_MIGRATION_LOCK_TIMEOUT)")
		assert.Contains(t, err.Error(), `instance "orders"`)
	})

	t.Run("table lock times out", func(t *testing.T) {
		url := fxtest_helpers.NewDatabase(t)
		t.Setenv(sprocketspg.EnvURL, url)
		t.Setenv(migrate.EnvLock, "table")
		t.Setenv(migrate.EnvLockTimeout, "2")
		holder := connect(t, url)
		// goose's lock table, with its row held by another process whose
		// lease runs for an hour.
		_, err := holder.Exec(ctxT(t), `CREATE TABLE goose_lock (
			lock_id bigint NOT NULL PRIMARY KEY, locked boolean NOT NULL DEFAULT false,
			locked_at timestamptz NULL, locked_by text NULL,
			lease_expires_at timestamptz NULL, updated_at timestamptz NULL)`)
		require.NoError(t, err)
		_, err = holder.Exec(ctxT(t), `INSERT INTO goose_lock VALUES ($1, true, now(), 'another-process', now() + interval '1 hour', now())`,
			lock.DefaultLockID)
		require.NoError(t, err)
		app := newApp(t, sprocketspg.Module, migrate.Migrations(basicFS))

		began := time.Now()
		err = app.Start(ctxT(t))
		took := time.Since(began)
		require.Error(t, err)
		t.Logf("failed after %s: %v", took.Round(time.Millisecond), err)
		assert.ErrorIs(t, err, migrate.ErrLockTimeout)
		assert.Less(t, took, 15*time.Second)
		assert.Contains(t, err.Error(), "table lock")
		assert.Contains(t, err.Error(), "POSTGRES_MIGRATION_LOCK_TIMEOUT")
		assert.False(t, tableExists(t, holder, "widgets"))
	})
}

// POSTGRES_MIGRATION_TIMEOUT bounds the migrations as a whole: a migration
// still running then is cancelled and rolled back, and start fails with
// ErrTimeout.
func TestTimeoutCancelsRunningMigration(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, url)
	t.Setenv(migrate.EnvTimeout, "1s")
	app := newApp(t, sprocketspg.Module, migrate.Migrations(sleepyFS))

	began := time.Now()
	err := app.Start(ctxT(t))
	took := time.Since(began)
	require.Error(t, err)
	t.Logf("failed after %s: %v", took.Round(time.Millisecond), err)
	assert.True(t, errors.Is(err, migrate.ErrTimeout), "%v", err)
	assert.NotErrorIs(t, err, context.DeadlineExceeded, "the start context did not end")
	assert.Less(t, took, 15*time.Second, "well before the migration's 30 s sleep")
	assert.Contains(t, err.Error(), "POSTGRES_MIGRATION_TIMEOUT")
	var me *migrate.MigrationError
	require.ErrorAs(t, err, &me)
	assert.Equal(t, "00002_sleepy.sql", me.File)

	conn := connect(t, url)
	assert.Equal(t, []int64{1}, appliedVersions(t, conn), "the sleeping migration is not recorded")
	assert.False(t, tableExists(t, conn, "sleepy"), "and was rolled back")
	// The server stopped the statement too: nothing sleeps on.
	assert.Eventually(t, func() bool {
		var n int
		err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%pg_sleep(30)%'`).Scan(&n)
		return err == nil && n == 0
	}, 10*time.Second, 20*time.Millisecond, "the migration's statement still runs on the server")
	// And goose's lock is free for the next process.
	assert.Eventually(t, func() bool {
		var ok bool
		err := conn.QueryRow(context.Background(), "SELECT pg_try_advisory_lock($1)", lock.DefaultLockID).Scan(&ok)
		if err == nil && ok {
			_, err = conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", lock.DefaultLockID)
		}
		return err == nil && ok
	}, 10*time.Second, 20*time.Millisecond, "goose's lock is still held")
}

// The timeout includes the wait for the lock.
func TestTimeoutIncludesLockWait(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, url)
	t.Setenv(migrate.EnvTimeout, "1.5")
	holdSessionLock(t, url)
	app := newApp(t, sprocketspg.Module, migrate.Migrations(basicFS))

	began := time.Now()
	err := app.Start(ctxT(t))
	took := time.Since(began)
	require.Error(t, err)
	t.Logf("failed after %s: %v", took.Round(time.Millisecond), err)
	assert.ErrorIs(t, err, migrate.ErrTimeout)
	assert.NotErrorIs(t, err, migrate.ErrLockTimeout, "the lock timeout (5 min by default) did not pass")
	assert.Less(t, took, 15*time.Second)
	assert.Contains(t, err.Error(), "POSTGRES_MIGRATION_TIMEOUT")
}

// A start context that ends before the migrations do fails start with its
// error, and says to raise fx.StartTimeout. (fx's Start returns at once
// with the context's bare error and logs the rest, so this runs without
// fx.)
func TestStartContextDeadlineEndsMigrations(t *testing.T) {
	t.Parallel()
	url := fxtest_helpers.NewDatabase(t)
	holdSessionLock(t, url)
	m, err := migrate.New(basicFS)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	began := time.Now()
	pool, err := sprocketspg.New(ctx, poolConfig(t, url), sprocketspg.WithExtension(m.Extension()))
	if err == nil {
		pool.Close()
	}
	require.Error(t, err)
	t.Logf("failed after %s: %v", time.Since(began).Round(time.Millisecond), err)
	assert.Less(t, time.Since(began), 15*time.Second)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, migrate.ErrTimeout)
	assert.NotErrorIs(t, err, migrate.ErrLockTimeout)
	assert.Contains(t, err.Error(), "fx.StartTimeout")
	assert.Contains(t, err.Error(), "POSTGRES_MIGRATION_TIMEOUT")
}

// The instance's statement timeout is for its queries, not for
// migrations, which Config.Timeout bounds instead.
func TestInstanceStatementTimeoutDoesNotBoundMigrations(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, url)
	t.Setenv(sprocketspg.EnvQueryTimeout, "0.1") // concurrent's first migration sleeps 0.3 s
	var pool *sprocketspg.Pool
	app := newApp(t, sprocketspg.Module, migrate.Migrations(concurrentFS), fx.Populate(&pool))
	require.NoError(t, app.Start(ctxT(t)))
	assert.Equal(t, []int64{1, 2, 3}, appliedVersions(t, connect(t, url)))
	// While the pool's own queries have the timeout.
	_, err := pool.Execute(ctxT(t), "SELECT pg_sleep(1)")
	require.Error(t, err)
}
