package fxtest_helpers

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/internal/pgserver"
)

// leaderPort returns the port of the server that a read-write session
// through c's URL reaches, after writing v there.
func leaderPort(t *testing.T, c *PatroniCluster, v string) string {
	t.Helper()
	ctx := ctxT(t)
	conn := connect(t, c.URL("postgres", "target_session_attrs=read-write", "connect_timeout=2"))
	_, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS kv (v text); INSERT INTO kv VALUES ('"+v+"')")
	require.NoError(t, err)
	var port int
	require.NoError(t, conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port))
	require.NoError(t, conn.Close(ctx))
	return strconv.Itoa(port)
}

func TestStartPatroniCluster(t *testing.T) {
	var urls []string
	t.Run("cluster", func(t *testing.T) {
		c := StartPatroniCluster(t, 3)
		require.Equal(t, 3, c.Nodes())
		assert.Regexp(t, `^postgres://postgres@(127\.0\.0\.1:\d+,){2}127\.0\.0\.1:\d+/postgres\?sslmode=disable$`, c.URL("postgres"))
		assert.NotEqual(t, Server(t).AdminURL(), c.NodeURL(0, "postgres"), "independent of the shared server")
		for i := range c.Nodes() {
			urls = append(urls, c.NodeURL(i, "postgres"))
			assert.True(t, strings.HasPrefix(c.RESTAddress(i), "127.0.0.1:"))
		}

		leader := c.Leader(t)
		assert.True(t, strings.HasSuffix(c.Address(leader), ":"+leaderPort(t, c, "one")), "read-write goes to the leader")

		t.Run("kill and restart the leader", func(t *testing.T) {
			c.Kill(t, leader)
			next := c.WaitLeader(t, leader)
			assert.NotEqual(t, leader, next)
			assert.True(t, strings.HasSuffix(c.Address(next), ":"+leaderPort(t, c, "two")), "read-write goes to the new leader")
			c.Restart(t, leader)
			c.WaitHealthy(t)
			leader = next
		})

		t.Run("switchover", func(t *testing.T) {
			next := c.Switchover(t, -1)
			assert.NotEqual(t, leader, next)
			assert.Equal(t, next, c.Leader(t))
			c.WaitHealthy(t)
			// The old leader follows and has everything written so far.
			var n int
			require.Eventually(t, func() bool {
				conn, err := tryConnect(t, c.NodeURL(leader, "postgres"))
				if err != nil {
					return false
				}
				defer conn.Close(context.Background())
				return conn.QueryRow(ctxT(t), "SELECT count(*) FROM kv").Scan(&n) == nil && n == 2
			}, 20*time.Second, 20*time.Millisecond, "old leader has both rows")
		})
	})
	// Every node is gone once the subtest has ended.
	require.Len(t, urls, 3)
	for _, u := range urls {
		conn, err := tryConnect(t, u)
		if err == nil {
			_ = conn.Close(context.Background())
		}
		assert.Error(t, err, "%s still answers", u)
	}
}

func TestStartPatroniClusterMissing(t *testing.T) {
	for _, tc := range []struct{ env, value, want string }{
		{pgserver.EnvPatroni, "/nonexistent/patroni", "apt-get install patroni etcd-server etcd-client python3-etcd"},
		{pgserver.EnvEtcd, "/nonexistent/etcd", "etcd-server"},
		{pgserver.EnvBinDir, "/nonexistent/bin", "needs local PostgreSQL server binaries"},
	} {
		t.Run(tc.env, func(t *testing.T) {
			t.Setenv(tc.env, tc.value)
			f := newFakeTB(t, "missing")
			f.run(func(tb testing.TB) { StartPatroniCluster(tb, 1) })
			f.runCleanups()
			require.True(t, f.Failed())
			require.Len(t, f.fatals, 1)
			assert.Contains(t, f.fatals[0], tc.want)
			assert.Contains(t, f.fatals[0], "fxtest_helpers: start Patroni cluster")
		})
	}
}
