package fxtest_helpers

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStartPgBouncer(t *testing.T) {
	srv := Server(t)
	dbURL := srv.NewDatabase(t, WithSchema("CREATE TABLE pgb (v int); INSERT INTO pgb VALUES (42);"))
	name := dbNameOf(t, dbURL)
	ctx := ctxT(t)

	var bouncerURL string
	t.Run("forwards to the database", func(t *testing.T) {
		u := StartPgBouncer(t, srv, name)
		assert.Regexp(t, `^postgres://postgres@127\.0\.0\.1:\d+/`+name+`\?sslmode=disable$`, u)
		conn := connect(t, u)
		var v int
		require.NoError(t, conn.QueryRow(ctx, "SELECT v FROM pgb", pgx.QueryExecModeSimpleProtocol).Scan(&v))
		assert.Equal(t, 42, v)
		bouncerURL = u
		require.NoError(t, conn.Close(ctx))
	})
	t.Run("stopped when the test ends", func(t *testing.T) {
		conn, err := tryConnect(t, bouncerURL)
		if err == nil {
			_ = conn.Close(context.Background())
		}
		assert.Error(t, err)
	})
	t.Run("settings", func(t *testing.T) {
		u := StartPgBouncer(t, srv, "pgbouncer", WithPgBouncerSetting("default_pool_size", "3"), WithPgBouncerSetting("pool_mode", "session"))
		rows, err := connect(t, u).PgConn().Exec(ctx, "SHOW CONFIG").ReadAll()
		require.NoError(t, err)
		got := map[string]string{}
		for _, r := range rows[0].Rows {
			got[string(r[0])] = string(r[1])
		}
		assert.Equal(t, "3", got["default_pool_size"])
		assert.Equal(t, "session", got["pool_mode"])
		assert.Equal(t, "extra_float_digits,statement_timeout", got["ignore_startup_parameters"])
	})
}
