package pgserver

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// patroniChildEnv switches TestPatroniOrphanHelper on, in the child
// process of TestPatroniClusterDiesWithParent.
const patroniChildEnv = "PGSERVER_TEST_PATRONI_CHILD"

func patroniCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// startPatroniT starts a cluster, closed when the test ends.
func startPatroniT(t *testing.T, nodes int, opts ...PatroniOption) *PatroniCluster {
	t.Helper()
	began := time.Now()
	c, err := StartPatroniCluster(patroniCtx(t), nodes, append([]PatroniOption{WithPatroniLogf(t.Logf)}, opts...)...)
	require.NoError(t, err, "these tests need Patroni and etcd: "+patroniInstall)
	t.Logf("MEASURE start of a %d-node cluster: %s", nodes, time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	t.Cleanup(func() {
		// The logs go with the cluster's files.
		if t.Failed() {
			t.Logf("cluster logs:\n%s", c.Logs())
		}
	})
	return c
}

// patroniConnect connects to u; connect_timeout keeps a frozen node in a
// multi-host URL from holding the attempt up.
func patroniConnect(t *testing.T, u string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	require.NoError(t, err, "connect to %s", u)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func inRecovery(t *testing.T, u string) bool {
	t.Helper()
	var r bool
	require.NoError(t, patroniConnect(t, u).QueryRow(patroniCtx(t), "SELECT pg_is_in_recovery()").Scan(&r))
	return r
}

// writeRow inserts v through the multi-host URL, into whichever node takes
// writes, and returns the port of the server that took it.
func writeRow(t *testing.T, c *PatroniCluster, v string) int {
	t.Helper()
	conn := patroniConnect(t, c.URL("postgres", "target_session_attrs=read-write", "connect_timeout=2"))
	ctx := patroniCtx(t)
	_, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS kv (v text PRIMARY KEY)")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "INSERT INTO kv VALUES ($1)", v)
	require.NoError(t, err)
	var port int
	require.NoError(t, conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port))
	require.NoError(t, conn.Close(ctx))
	return port
}

// waitRow waits until node i has the row v.
func waitRow(t *testing.T, c *PatroniCluster, i int, v string) {
	t.Helper()
	ctx := patroniCtx(t)
	assert.Eventually(t, func() bool {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, c.NodeURL(i, "postgres"))
		if err != nil {
			return false
		}
		defer conn.Close(context.Background())
		var n int
		return conn.QueryRow(cctx, "SELECT count(*) FROM kv WHERE v = $1", v).Scan(&n) == nil && n == 1
	}, 20*time.Second, 20*time.Millisecond, "row %q does not reach node %d", v, i)
}

func portOf(t *testing.T, c *PatroniCluster, i int) int {
	t.Helper()
	_, p, ok := strings.Cut(c.Address(i), ":")
	require.True(t, ok)
	port, err := strconv.Atoi(p)
	require.NoError(t, err)
	return port
}

// clusterProcs returns the processes that name the cluster.
func clusterProcs(t *testing.T, tag string) []procInfo {
	t.Helper()
	procs, err := readProcs()
	require.NoError(t, err)
	var mine []procInfo
	for _, p := range procs {
		if p.state != 'Z' && mentions(p.cmdline, tag) {
			mine = append(mine, p)
		}
	}
	return mine
}

// nodePIDs returns the processes of node i now.
func nodePIDs(t *testing.T, c *PatroniCluster, i int) []int {
	t.Helper()
	procs, err := readProcs()
	require.NoError(t, err)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodeProcs(c.nodes[i], procs)
}

// sysvSegments returns the IDs of the System V shared memory segments.
func sysvSegments(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/sysvipc/shm")
	require.NoError(t, err)
	var ids []string
	for _, line := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 1 {
			ids = append(ids, f[1])
		}
	}
	return ids
}

func TestPatroniCluster(t *testing.T) {
	c := startPatroniT(t, 3)

	t.Run("one leader and two streaming replicas", func(t *testing.T) {
		ctx := patroniCtx(t)
		assert.Equal(t, 3, c.Nodes())
		assert.Regexp(t, `^postgres://postgres@127\.0\.0\.1:\d+,127\.0\.0\.1:\d+,127\.0\.0\.1:\d+/app\?sslmode=disable&target_session_attrs=read-write$`,
			c.URL("app", "target_session_attrs=read-write"))
		leader, err := c.Leader(ctx)
		require.NoError(t, err)
		for i := range c.Nodes() {
			assert.Equal(t, i != leader, inRecovery(t, c.NodeURL(i, "postgres")), "node %d in recovery", i)
			assert.NotEqual(t, c.RESTAddress(i), c.Address(i))
		}
		rows, err := patroniConnect(t, c.NodeURL(leader, "postgres")).Query(ctx,
			"SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1")
		require.NoError(t, err)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		var want []string
		for i := range c.Nodes() {
			if i != leader {
				want = append(want, c.Name(i))
			}
		}
		assert.Equal(t, want, names, "replicas streaming from the leader")
		// Every process runs as the server user, never as root.
		for _, p := range clusterProcs(t, c.scope) {
			status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
			if err != nil {
				continue
			}
			assert.Regexp(t, fmt.Sprintf(`(?m)^Uid:\s+%d\s`, c.user.uid()), string(status), p.cmdline)
		}
	})

	t.Run("write through the multi-host URL reaches the replicas", func(t *testing.T) {
		ctx := patroniCtx(t)
		leader, err := c.Leader(ctx)
		require.NoError(t, err)
		assert.Equal(t, portOf(t, c, leader), writeRow(t, c, "first"), "read-write session on the leader")
		for i := range c.Nodes() {
			waitRow(t, c, i, "first")
		}
	})

	t.Run("kill the leader, then restart it", func(t *testing.T) {
		ctx := patroniCtx(t)
		old, err := c.Leader(ctx)
		require.NoError(t, err)
		pids := nodePIDs(t, c, old)
		require.Greater(t, len(pids), 3, "patroni, the postmaster and its children")
		began := time.Now()
		require.NoError(t, c.Kill(ctx, old))
		for _, pid := range pids {
			assert.False(t, processAlive(pid), "process %d of the killed node still runs", pid)
		}
		leader, err := c.WaitLeader(ctx, old)
		require.NoError(t, err)
		took := time.Since(began)
		t.Logf("MEASURE Kill(leader) to new leader: %s (node %d to node %d)", took.Round(time.Millisecond), old, leader)
		assert.Less(t, took, 15*time.Second)
		_, err = c.Leader(ctx)
		require.NoError(t, err)
		assert.Equal(t, portOf(t, c, leader), writeRow(t, c, "after kill"))

		began = time.Now()
		require.NoError(t, c.Restart(ctx, old))
		t.Logf("MEASURE Restart of the killed node until it streams: %s", time.Since(began).Round(time.Millisecond))
		assert.True(t, inRecovery(t, c.NodeURL(old, "postgres")), "the old leader is a replica")
		waitRow(t, c, old, "after kill")
		require.NoError(t, c.WaitHealthy(ctx))
		assert.Error(t, c.Restart(ctx, old), "restart a running node")
	})

	t.Run("freeze the leader, then thaw it", func(t *testing.T) {
		ctx := patroniCtx(t)
		old, err := c.Leader(ctx)
		require.NoError(t, err)
		require.NoError(t, c.Freeze(ctx, old))
		frozen := nodePIDs(t, c, old)
		assert.True(t, allStopped(frozen), "every process of the frozen node is stopped")
		began := time.Now()
		leader, err := c.WaitLeader(ctx, old)
		require.NoError(t, err)
		took := time.Since(began)
		t.Logf("MEASURE Freeze(leader) to new leader: %s (node %d to node %d)", took.Round(time.Millisecond), old, leader)
		assert.Less(t, took, 15*time.Second)
		assert.Equal(t, portOf(t, c, leader), writeRow(t, c, "while frozen"))

		require.NoError(t, c.Thaw(ctx, old))
		require.NoError(t, c.Thaw(ctx, old), "thaw a thawed node")
		began = time.Now()
		require.NoError(t, c.WaitHealthy(ctx))
		t.Logf("MEASURE Thaw of the old leader until the cluster is healthy: %s", time.Since(began).Round(time.Millisecond))
		now, err := c.Leader(ctx)
		require.NoError(t, err)
		assert.Equal(t, leader, now, "the thawed old leader must not take the lock back")
		assert.True(t, inRecovery(t, c.NodeURL(old, "postgres")), "the thawed old leader is a replica")
		waitRow(t, c, old, "while frozen")
	})

	t.Run("switchover to a named candidate", func(t *testing.T) {
		ctx := patroniCtx(t)
		old, err := c.Leader(ctx)
		require.NoError(t, err)
		candidate := (old + 1) % c.Nodes()
		began := time.Now()
		leader, err := c.Switchover(ctx, candidate)
		require.NoError(t, err)
		t.Logf("MEASURE Switchover until the candidate leads: %s", time.Since(began).Round(time.Millisecond))
		assert.Equal(t, candidate, leader)
		now, err := c.Leader(ctx)
		require.NoError(t, err)
		assert.Equal(t, candidate, now)
		require.NoError(t, c.WaitHealthy(ctx))
		assert.True(t, inRecovery(t, c.NodeURL(old, "postgres")), "the old leader follows")
		assert.Equal(t, portOf(t, c, candidate), writeRow(t, c, "after switchover"))

		_, err = c.Switchover(ctx, candidate)
		assert.ErrorContains(t, err, "leader already")
	})

	t.Run("close leaves no process and no file", func(t *testing.T) {
		ctx := patroniCtx(t)
		require.NotEmpty(t, clusterProcs(t, c.scope))
		// A frozen node must not keep Close from stopping it, and a
		// killed one must not leave its shared memory segment behind.
		require.NoError(t, c.Kill(ctx, 1))
		shm := sharedMemoryID(c.nodes[1].dataDir)
		require.NotEmpty(t, shm, "the killed postmaster's segment")
		require.Contains(t, sysvSegments(t), shm)
		require.NoError(t, c.Freeze(ctx, 0))
		began := time.Now()
		require.NoError(t, c.Close())
		t.Logf("MEASURE Close: %s", time.Since(began).Round(time.Millisecond))
		require.NoError(t, c.Close(), "second Close")
		assert.Empty(t, clusterProcs(t, c.scope))
		assert.NoDirExists(t, c.dir)
		assert.NotContains(t, sysvSegments(t), shm, "shared memory of the killed postmaster")
		assert.ErrorIs(t, c.Kill(ctx, 0), ErrClosed)
		_, err := c.Leader(ctx)
		assert.ErrorIs(t, err, ErrClosed)
	})
}

func TestPatroniSynchronousMode(t *testing.T) {
	c := startPatroniT(t, 2, WithSynchronousMode(), WithPatroniParameter("max_connections", "50"))
	ctx := patroniCtx(t)
	leader, err := c.Leader(ctx)
	require.NoError(t, err)
	conn := patroniConnect(t, c.NodeURL(leader, "postgres"))
	var names, maxConn string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_setting('synchronous_standby_names'), current_setting('max_connections')").Scan(&names, &maxConn))
	assert.Contains(t, names, c.Name(1-leader))
	assert.Equal(t, "50", maxConn)
	var state string
	require.NoError(t, conn.QueryRow(ctx, "SELECT sync_state FROM pg_stat_replication").Scan(&state))
	assert.Equal(t, "sync", state)
}

func TestPatroniClusterDiesWithParent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPatroniOrphanHelper$", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), patroniChildEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var dir, tag string
	var postmaster int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "CLUSTER %s %s %d", &dir, &tag, &postmaster); err == nil {
			break
		}
	}
	if dir == "" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child did not report its cluster: %v", sc.Err())
	}
	t.Cleanup(func() { _ = killMentioning(tag); _ = os.RemoveAll(dir) })
	require.True(t, processAlive(postmaster), "postmaster %d not running", postmaster)
	require.NotEmpty(t, clusterProcs(t, tag))

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	began := time.Now()
	assert.Eventually(t, func() bool { return len(clusterProcs(t, tag)) == 0 }, 10*time.Second, 20*time.Millisecond,
		"processes of the cluster outlived their SIGKILLed owner")
	assert.False(t, processAlive(postmaster), "postmaster %d outlived its SIGKILLed owner", postmaster)
	assert.Eventually(t, func() bool { _, err := os.Stat(dir); return errors.Is(err, os.ErrNotExist) },
		10*time.Second, 20*time.Millisecond, "run directory %s outlived its owner", dir)
	t.Logf("MEASURE reaper cleaned up %s after SIGKILL of its owner", time.Since(began).Round(time.Millisecond))
}

// TestPatroniOrphanHelper is the child of TestPatroniClusterDiesWithParent:
// it starts a cluster, reports it on stdout and waits to be killed.
func TestPatroniOrphanHelper(t *testing.T) {
	if os.Getenv(patroniChildEnv) != "1" {
		t.Skip("runs only as the child of TestPatroniClusterDiesWithParent")
	}
	c, err := StartPatroniCluster(patroniCtx(t), 2)
	require.NoError(t, err)
	fmt.Printf("CLUSTER %s %s %d\n", c.dir, c.scope, postmasterPID(c.nodes[0].dataDir))
	select {}
}

func TestPatroniMissing(t *testing.T) {
	ctx := patroniCtx(t)
	t.Run("patroni", func(t *testing.T) {
		t.Setenv(EnvPatroni, "/nonexistent/patroni")
		_, err := StartPatroniCluster(ctx, 1)
		require.ErrorIs(t, err, ErrNoPatroni)
		assert.Contains(t, err.Error(), "apt-get install patroni")
	})
	t.Run("etcd", func(t *testing.T) {
		t.Setenv(EnvEtcd, "/nonexistent/etcd")
		_, err := StartPatroniCluster(ctx, 1)
		require.ErrorIs(t, err, ErrNoPatroni)
		assert.Contains(t, err.Error(), "etcd-server")
	})
	t.Run("python3-etcd", func(t *testing.T) {
		// A Python that finds a module etcd which fails to import, as if
		// python3-etcd were not installed.
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "etcd.py"), []byte("raise ImportError(\"No module named 'etcd'\")\n"), 0o644))
		python := filepath.Join(dir, "python")
		require.NoError(t, os.WriteFile(python, []byte("#!/bin/sh\nPYTHONPATH="+dir+" exec /usr/bin/python3 \"$@\"\n"), 0o755))
		fake := filepath.Join(dir, "patroni")
		require.NoError(t, os.WriteFile(fake, []byte("#!"+python+"\n"), 0o755))
		t.Setenv(EnvPatroni, fake)
		_, err := StartPatroniCluster(ctx, 1)
		require.ErrorIs(t, err, ErrNoPatroni)
		assert.Contains(t, err.Error(), "No module named 'etcd'")
		assert.Contains(t, err.Error(), "python3-etcd")
	})
	t.Run("no nodes", func(t *testing.T) {
		_, err := StartPatroniCluster(ctx, 0)
		assert.Error(t, err)
	})
}

func TestPatroniConfiguration(t *testing.T) {
	c := &PatroniCluster{dir: "/run/x", scope: "sprocketspg-pg-1-2", binDir: "/pg/bin", etcdPort: 2379}
	n := &patroniNode{name: "node1", dir: "/run/x/node1", dataDir: "/run/x/node1/data", pgPort: 5433, restPort: 8008}
	cfg := &patroniConfig{dcs: map[string]any{"ttl": 9}, parameters: map[string]string{"work_mem": "8MB"}, synchronous: true}
	var got struct {
		Scope   string
		Name    string
		Restapi struct{ Listen string }
		Etcd    *struct{ Host string }
		Etcd3   *struct{ Hosts []string }
		Boot    struct {
			DCS struct {
				TTL                  int  `json:"ttl"`
				LoopWait             int  `json:"loop_wait"`
				RetryTimeout         int  `json:"retry_timeout"`
				SynchronousMode      bool `json:"synchronous_mode"`
				MaximumLagOnFailover int  `json:"maximum_lag_on_failover"`
				PostgreSQL           struct {
					UsePgRewind bool           `json:"use_pg_rewind"`
					UseSlots    bool           `json:"use_slots"`
					Parameters  map[string]any `json:"parameters"`
				} `json:"postgresql"`
			} `json:"dcs"`
		} `json:"bootstrap"`
		PostgreSQL struct {
			Listen     string
			DataDir    string   `json:"data_dir"`
			PgHba      []string `json:"pg_hba"`
			Parameters map[string]any
		} `json:"postgresql"`
	}
	for _, v2 := range []bool{true, false} {
		b, err := json.Marshal(c.patroniYAML(n, cfg, v2))
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(b, &got))
		assert.Equal(t, "sprocketspg-pg-1-2", got.Scope)
		assert.Equal(t, "node1", got.Name)
		assert.Equal(t, "127.0.0.1:8008", got.Restapi.Listen)
		assert.Equal(t, "127.0.0.1:5433", got.PostgreSQL.Listen)
		assert.Equal(t, "/run/x/node1/data", got.PostgreSQL.DataDir)
		if v2 {
			require.NotNil(t, got.Etcd)
			assert.Equal(t, "127.0.0.1:2379", got.Etcd.Host)
		} else {
			require.NotNil(t, got.Etcd3)
			assert.Equal(t, []string{"127.0.0.1:2379"}, got.Etcd3.Hosts)
		}
		got.Etcd, got.Etcd3 = nil, nil
		dcs := got.Boot.DCS
		assert.Equal(t, 9, dcs.TTL, "WithPatroniDCS replaces the default")
		assert.Equal(t, 1, dcs.LoopWait)
		assert.LessOrEqual(t, dcs.LoopWait+2*dcs.RetryTimeout, dcs.TTL)
		assert.True(t, dcs.SynchronousMode)
		assert.True(t, dcs.PostgreSQL.UsePgRewind)
		assert.True(t, dcs.PostgreSQL.UseSlots)
		assert.Equal(t, "on", dcs.PostgreSQL.Parameters["wal_log_hints"])
		assert.Equal(t, "8MB", dcs.PostgreSQL.Parameters["work_mem"])
		assert.Contains(t, got.PostgreSQL.PgHba, "host replication all 127.0.0.1/32 trust")
		assert.Equal(t, "/run/x/node1", got.PostgreSQL.Parameters["unix_socket_directories"])
	}
	// The defaults keep Patroni's rule.
	assert.LessOrEqual(t, patroniLoopWait+2*patroniRetryTimeout, patroniTTL)
}

func TestPatroniEtcdAPIChoice(t *testing.T) {
	assert.True(t, useEtcdV2("3.0.2", "3.4.23"), "Debian 12: the etcd3 code of Patroni 3.0.2 lets a thawed leader take the lock back")
	assert.False(t, useEtcdV2("3.0.3", "3.4.23"))
	assert.False(t, useEtcdV2("4.0.4", "3.5.16"))
	assert.False(t, useEtcdV2("3.0.2", "3.6.0"), "etcd 3.6 has no v2 API")
	assert.True(t, useEtcdV2("2.1.6", "3.5.0"))
	assert.False(t, versionLess("garbage", []int{3}))
	assert.True(t, versionLess("3.0.2rc1", []int{3, 0, 3}))
}

func TestMentions(t *testing.T) {
	tag := "sprocketspg-pg-12-34"
	assert.True(t, mentions("postgres -D /dev/shm/sprocketspg-pg-12-34/node0/data", tag))
	assert.True(t, mentions("postgres: sprocketspg-pg-12-34: checkpointer", tag))
	assert.True(t, mentions("x sprocketspg-pg-12-34", tag))
	assert.False(t, mentions("postgres -D /dev/shm/sprocketspg-pg-12-345/node0/data", tag))
	assert.True(t, mentions("a sprocketspg-pg-12-345 b sprocketspg-pg-12-34/", tag))
	assert.False(t, mentions("postgres: checkpointer", tag))
}

func TestPatroniReadShebang(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string][2]string{
		"#!/usr/bin/python3\nimport x\n":      {"/usr/bin/python3", ""},
		"#! /usr/bin/env python3 -u\n":        {"/usr/bin/env", "python3 -u"},
		"#!/usr/bin/python3 -I":               {"/usr/bin/python3", "-I"},
		"\x7fELF\x02\x01\x01\x00\x00\x00\x00": {"", ""},
	} {
		p := filepath.Join(dir, "s")
		require.NoError(t, os.WriteFile(p, []byte(content), 0o755))
		interp, arg, ok := readShebang(p)
		assert.Equal(t, want[0] != "", ok, content)
		assert.Equal(t, want, [2]string{interp, arg}, content)
	}
}

func TestRemoveStaleKillsProcessesOfPatroni(t *testing.T) {
	base := t.TempDir()
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	stale := filepath.Join(base, runDirPrefix+strconv.Itoa(dead.Process.Pid)+"-123")
	require.NoError(t, os.MkdirAll(filepath.Join(stale, "node0"), 0o700))
	// A daemon left behind names the stale directory, as a postmaster
	// does in -D.
	sleeper := exec.Command("sleep", "60")
	sleeper.Args[0] = filepath.Join(stale, "node0", "sleeper")
	require.NoError(t, sleeper.Start())
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()

	removeStale(base, runDirPrefix, t.Logf)
	select {
	case err := <-exited:
		assert.Error(t, err, "killed")
	case <-time.After(5 * time.Second):
		_ = sleeper.Process.Kill()
		<-exited
		t.Fatal("removeStale left the process of a stale directory running")
	}
	assert.NoDirExists(t, stale)
}
