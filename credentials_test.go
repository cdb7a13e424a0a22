package sprocketspg_test

import (
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
)

const (
	firstPassword  = "first-Secret-91"
	secondPassword = "second-Secret-37"
)

func TestPasswordFileRotatesWithoutRestart(t *testing.T) {
	srv, appURL := passwordServer(t, firstPassword)
	file := filepath.Join(t.TempDir(), "password")
	require.NoError(t, os.WriteFile(file, []byte(firstPassword+"\n"), 0o600))
	watch := newSecretLog(t, firstPassword, secondPassword)
	pool := newPoolAt(t, appURL, func(c *sprocketspg.Config) {
		c.PasswordFile = file
		c.MinPoolSize, c.MaxPoolSize = 2, 2
		c.ConnectionTTL = time.Second
		c.HealthCheckPeriod = 100 * time.Millisecond
	}, sprocketspg.WithLogger(watch.logger))

	pids := func() map[int32]bool {
		out := map[int32]bool{}
		rows, err := adminConn(t, srv.AdminURL()).Query(ctxT(t),
			"SELECT pid FROM pg_stat_activity WHERE usename = 'app'")
		require.NoError(t, err)
		for rows.Next() {
			var pid int32
			require.NoError(t, rows.Scan(&pid))
			out[pid] = true
		}
		require.NoError(t, rows.Err())
		return out
	}
	before := pids()
	require.Len(t, before, 2)

	// The secret rotates: the server first, then the file.
	_, err := adminConn(t, srv.AdminURL()).Exec(ctxT(t), "ALTER ROLE app PASSWORD '"+secondPassword+"'")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(file, []byte(secondPassword+"\n"), 0o600))
	_, err = pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err, "connections made with the old password keep working")

	require.Eventually(t, func() bool {
		now := pids()
		for pid := range now {
			if before[pid] {
				return false
			}
		}
		return len(now) >= 1
	}, 10*time.Second, 50*time.Millisecond, "connections are replaced, logging in with the new password")
	res, err := pool.Execute(ctxT(t), "SELECT current_user AS u")
	require.NoError(t, err)
	assert.Equal(t, "app", res.Row["u"])
	// Every entry is checked for both passwords when the test ends.
	assert.Positive(t, watch.entries(), "the pool logs to the watched logger")
}

func TestPasswordFileErrors(t *testing.T) {
	_, appURL := passwordServer(t, firstPassword)
	t.Run("missing file", func(t *testing.T) {
		watch := newSecretLog(t, firstPassword)
		missing := filepath.Join(t.TempDir(), "nope")
		cfg := testConfig(appURL)
		cfg.PasswordFile = missing
		began := time.Now()
		_, err := sprocketspg.New(ctxT(t), cfg, sprocketspg.WithLogger(watch.logger))
		require.Error(t, err)
		watch.noSecretIn(err)
		assert.Less(t, time.Since(began), time.Second, "not retried as an unreachable server")
		assert.ErrorIs(t, err, sprocketspg.ErrCredentials)
		assert.Contains(t, err.Error(), missing)
		assert.Contains(t, err.Error(), sprocketspg.EnvPasswordFile)
	})
	t.Run("wrong password in the file", func(t *testing.T) {
		watch := newSecretLog(t, firstPassword, "not-the-Secret-55")
		file := filepath.Join(t.TempDir(), "password")
		require.NoError(t, os.WriteFile(file, []byte("not-the-Secret-55"), 0o600))
		cfg := testConfig(appURL)
		cfg.PasswordFile = file
		_, err := sprocketspg.New(ctxT(t), cfg, sprocketspg.WithLogger(watch.logger))
		require.Error(t, err)
		watch.noSecretIn(err)
		assert.ErrorIs(t, err, sprocketspg.ErrConnectionRejected)
		assert.Contains(t, err.Error(), `user "app"`)
		assert.NotContains(t, err.Error(), "not-the-Secret-55")
	})
	t.Run("a password in the URL too", func(t *testing.T) {
		watch := newSecretLog(t, firstPassword)
		u, err := url.Parse(appURL)
		require.NoError(t, err)
		u.User = url.UserPassword("app", firstPassword)
		cfg := testConfig(u.String())
		cfg.PasswordFile = "/run/secrets/db"
		_, err = sprocketspg.New(ctxT(t), cfg, sprocketspg.WithLogger(watch.logger))
		require.Error(t, err)
		watch.noSecretIn(err)
		assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
		assert.Contains(t, err.Error(), sprocketspg.EnvPasswordFile)
		assert.Contains(t, err.Error(), sprocketspg.EnvURL)
		assert.NotContains(t, err.Error(), firstPassword)
	})
	t.Run("named instance", func(t *testing.T) {
		watch := newSecretLog(t, firstPassword)
		file := filepath.Join(t.TempDir(), "password")
		require.NoError(t, os.WriteFile(file, []byte(firstPassword), 0o600))
		t.Setenv("ORDERS_POSTGRES_URL", appURL)
		t.Setenv("ORDERS_POSTGRES_PASSWORD_FILE", file)
		var pool ordersPools
		require.NoError(t, startWatchedApp(t, watch.logger, sprocketspg.Named("orders"), fx.Populate(&pool)))
		res, err := pool.Orders.Execute(ctxT(t), "SELECT current_user AS u")
		require.NoError(t, err)
		assert.Equal(t, "app", res.Row["u"])

		t.Setenv("ORDERS_POSTGRES_PASSWORD_FILE", filepath.Join(t.TempDir(), "nope"))
		err = startWatchedApp(t, watch.logger, sprocketspg.Named("orders"))
		require.Error(t, err)
		watch.noSecretIn(err)
		assert.Contains(t, err.Error(), "ORDERS_POSTGRES_PASSWORD_FILE")
		assert.Contains(t, err.Error(), `instance "orders"`)
	})
}
