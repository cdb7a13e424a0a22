package pgserver

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startPgBouncerT starts PgBouncer in front of s, closed when the test
// ends.
func startPgBouncerT(t *testing.T, s *Server, settings map[string]string) *PgBouncer {
	t.Helper()
	b, err := StartPgBouncer(testCtx(t), s.URL(), settings, WithLogf(t.Logf))
	require.NoError(t, err, "these tests need PgBouncer: apt-get install pgbouncer")
	t.Cleanup(func() { assert.NoError(t, b.Close()) })
	return b
}

func TestPgBouncerForwards(t *testing.T) {
	s := startLocalT(t)
	b := startPgBouncerT(t, s, nil)
	ctx := testCtx(t)
	assert.Regexp(t, `^postgres://postgres@127\.0\.0\.1:\d+/app\?sslmode=disable$`, b.URL("app"))

	_, err := connect(t, s.URL()).Exec(ctx, "CREATE DATABASE app")
	require.NoError(t, err)
	conn := connect(t, b.URL("app"))
	var db string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_database()", pgx.QueryExecModeSimpleProtocol).Scan(&db))
	assert.Equal(t, "app", db)

	// The admin console shows transaction pooling.
	admin := connect(t, b.URL("pgbouncer"))
	rows, err := admin.PgConn().Exec(ctx, "SHOW CONFIG").ReadAll()
	require.NoError(t, err)
	settings := map[string]string{}
	for _, r := range rows[0].Rows {
		settings[string(r[0])] = string(r[1])
	}
	assert.Equal(t, "transaction", settings["pool_mode"])
	assert.Equal(t, "2", settings["default_pool_size"])
}

func TestPgBouncerStartupParameters(t *testing.T) {
	s := startLocalT(t)
	ctx := testCtx(t)
	withTimeout := func(url string) *pgx.ConnConfig {
		cc, err := pgx.ParseConfig(url)
		require.NoError(t, err)
		cc.RuntimeParams["statement_timeout"] = "1234"
		return cc
	}

	t.Run("refused unless ignored", func(t *testing.T) {
		b := startPgBouncerT(t, s, map[string]string{"ignore_startup_parameters": ""})
		_, err := pgx.ConnectConfig(ctx, withTimeout(b.URL("postgres")))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "unsupported startup parameter: statement_timeout")
	})

	t.Run("ignored, so not in force", func(t *testing.T) {
		b := startPgBouncerT(t, s, nil)
		conn, err := pgx.ConnectConfig(ctx, withTimeout(b.URL("postgres")))
		require.NoError(t, err)
		defer conn.Close(context.Background())
		var v string
		require.NoError(t, conn.QueryRow(ctx, "SHOW statement_timeout", pgx.QueryExecModeSimpleProtocol).Scan(&v))
		assert.Equal(t, "0", v, "PgBouncer drops an ignored parameter instead of setting it")
	})
}

func TestPgBouncerCloseRemovesEverything(t *testing.T) {
	s := startLocalT(t)
	b, err := StartPgBouncer(testCtx(t), s.URL(), nil)
	require.NoError(t, err, "this test needs PgBouncer: apt-get install pgbouncer")
	pid := b.proc.cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	u := serverUser()
	assert.Regexp(t, fmt.Sprintf(`(?m)^Uid:\s+%d\s`, u.uid()), string(status), "pgbouncer runs as the server user")
	assert.Contains(t, b.dir, runDirPrefix)

	require.NoError(t, b.Close())
	require.NoError(t, b.Close(), "second Close")
	assert.NoDirExists(t, b.dir)
	assert.False(t, processAlive(pid), "pgbouncer still runs after Close")
}

func TestPgBouncerMissing(t *testing.T) {
	t.Setenv(EnvPgBouncer, "/nonexistent/pgbouncer")
	_, err := StartPgBouncer(testCtx(t), "postgres://postgres@127.0.0.1:1/postgres", nil)
	require.ErrorIs(t, err, ErrNoPgBouncer)
	assert.Contains(t, err.Error(), "apt-get install pgbouncer")
}

func TestPgBouncerINI(t *testing.T) {
	target, err := parseTarget("postgres://app:s'ecret@db.example:6000/postgres?sslmode=require")
	require.NoError(t, err)
	ini := pgBouncerINI(target, 7000, "/run/userlist.txt", map[string]string{"pool_mode": "session", "default_pool_size": ""})
	assert.Contains(t, ini, `* = host=db.example port=6000 user=app password='s\'ecret'`)
	assert.Contains(t, ini, "listen_port = 7000\n")
	assert.Contains(t, ini, "pool_mode = session\n")
	assert.NotContains(t, ini, "default_pool_size")
	assert.Contains(t, ini, "server_tls_sslmode = require\n")
	assert.Contains(t, ini, "unix_socket_dir = \n")
	assert.Equal(t, `"app" ""`+"\n", target.authLine())

	_, err = parseTarget("postgres://u:secret@a:1,b:2/x")
	require.Error(t, err, "several hosts")
	assert.NotContains(t, err.Error(), "secret")
	_, err = parseTarget("host=x")
	assert.Error(t, err, "not a URL")
}
