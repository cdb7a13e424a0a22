package pgserver

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startStandbyT starts a standby of primary, closed when the test ends.
func startStandbyT(t *testing.T, primary *Server) *Server {
	t.Helper()
	began := time.Now()
	s, err := StartStandby(testCtx(t), primary, WithLogf(t.Logf))
	require.NoError(t, err)
	t.Logf("standby started in %s", time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

// waitReplayed waits until the standby has replayed everything the
// primary has written so far.
// The position is the WAL insert location, not pg_current_wal_lsn: the
// test servers commit asynchronously, so a commit can still sit in the WAL
// buffers, past the write location, when the statement returns.
func waitReplayed(t *testing.T, primary, standby *pgx.Conn) {
	t.Helper()
	ctx := testCtx(t)
	var lsn string
	require.NoError(t, primary.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn))
	deadline := time.Now().Add(10 * time.Second)
	for {
		var done bool
		require.NoError(t, standby.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&done))
		if done {
			return
		}
		require.True(t, time.Now().Before(deadline), "standby has not replayed up to %s within 10s", lsn)
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStandbyReplicatesAndPromotes(t *testing.T) {
	primary := startLocalT(t)
	standby := startStandbyT(t, primary)
	ctx := testCtx(t)
	assert.Equal(t, BackendLocal, standby.Backend())
	assert.NotEqual(t, primary.URL(), standby.URL())

	pc := connect(t, primary.URL())
	_, err := pc.Exec(ctx, "CREATE TABLE kv (k text PRIMARY KEY); INSERT INTO kv VALUES ('before')")
	require.NoError(t, err)

	sc := connect(t, standby.URL())
	var inRecovery bool
	require.NoError(t, sc.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery))
	assert.True(t, inRecovery, "a standby is in recovery")
	waitReplayed(t, pc, sc)
	var k string
	require.NoError(t, sc.QueryRow(ctx, "SELECT k FROM kv").Scan(&k))
	assert.Equal(t, "before", k)
	_, err = sc.Exec(ctx, "INSERT INTO kv VALUES ('refused')")
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "25006", pgErr.Code, "read_only_sql_transaction")

	// A restarted standby is still a standby.
	require.NoError(t, standby.Stop(ctx))
	require.NoError(t, standby.Start(ctx))
	sc = connect(t, standby.URL())
	require.NoError(t, sc.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery))
	assert.True(t, inRecovery, "standby after a restart")

	require.NoError(t, primary.Stop(ctx))
	began := time.Now()
	require.NoError(t, standby.Promote(ctx))
	t.Logf("promoted in %s", time.Since(began).Round(time.Millisecond))
	_, err = connect(t, standby.URL()).Exec(ctx, "INSERT INTO kv VALUES ('after')")
	require.NoError(t, err, "a promoted standby takes writes")

	err = standby.Promote(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not a standby")
	assert.Error(t, primary.Promote(ctx), "a stopped server cannot be promoted")
}

func TestStandbyClosedAndUnsupported(t *testing.T) {
	ctx := testCtx(t)
	_, err := StartStandby(ctx, &Server{kind: BackendURL, b: &urlServer{u: "postgres://x"}})
	assert.ErrorIs(t, err, ErrNotControlled)
	assert.ErrorIs(t, (&Server{kind: BackendURL, b: &urlServer{}}).Promote(ctx), ErrNotControlled)

	docker := &Server{kind: BackendDocker, b: &dockerServer{}}
	_, err = StartStandby(ctx, docker)
	assert.ErrorIs(t, err, ErrNotSupported)
	assert.ErrorIs(t, docker.Promote(ctx), ErrNotSupported)

	closed := &Server{kind: BackendLocal, b: &localServer{}, closed: true}
	_, err = StartStandby(ctx, closed)
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, closed.Promote(ctx), ErrClosed)
}

func TestStandbyCloseRemovesEverything(t *testing.T) {
	primary := startLocalT(t)
	s, err := StartStandby(testCtx(t), primary)
	require.NoError(t, err)
	l := s.b.(*localServer)
	pid := l.proc.cmd.Process.Pid
	require.NoError(t, s.Close())
	assert.NoDirExists(t, l.dir)
	assert.False(t, processAlive(pid), "standby still runs after Close")
}
