package fxtest_helpers

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStartReplicaSet(t *testing.T) {
	primary, standby := StartReplicaSet(t)
	ctx := ctxT(t)
	assert.NotEqual(t, primary.Address(), standby.Address())
	assert.True(t, strings.HasPrefix(primary.Address(), "127.0.0.1:"), primary.Address())
	assert.NotEqual(t, Server(t).AdminURL(), primary.AdminURL(), "independent of the shared server")

	// A database made on the primary reaches the standby.
	// Made by hand rather than by NewDatabase, whose cleanup would find
	// the primary stopped.
	_, err := connect(t, primary.AdminURL()).Exec(ctx, "CREATE DATABASE replicated")
	require.NoError(t, err)
	dbURL, err := databaseURL(primary.AdminURL(), "replicated")
	require.NoError(t, err)
	_, err = connect(t, dbURL).Exec(ctx, "CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
	require.NoError(t, err)
	standbyDB, err := databaseURL(standby.AdminURL(), dbNameOf(t, dbURL))
	require.NoError(t, err)
	var v int
	require.Eventually(t, func() bool {
		conn, err := tryConnect(t, standbyDB)
		if err != nil {
			return false
		}
		defer conn.Close(ctx)
		return conn.QueryRow(ctx, "SELECT v FROM t").Scan(&v) == nil
	}, 10*time.Second, 10*time.Millisecond, "the database and its row reach the standby")
	assert.Equal(t, 7, v)

	require.NoError(t, primary.Stop(ctx))
	require.NoError(t, standby.Promote(ctx))
	_, err = connect(t, standbyDB).Exec(ctx, "INSERT INTO t VALUES (8)")
	require.NoError(t, err, "the promoted standby takes writes")
	assert.Error(t, standby.Promote(ctx), "promoting a primary")
}

func TestStartReplicaSetCleansUp(t *testing.T) {
	var urls []string
	t.Run("set", func(t *testing.T) {
		primary, standby := StartReplicaSet(t)
		urls = []string{primary.AdminURL(), standby.AdminURL()}
	})
	// Both servers are gone once the subtest has ended.
	for _, u := range urls {
		conn, err := tryConnect(t, u)
		if err == nil {
			_ = conn.Close(context.Background())
		}
		assert.Error(t, err, "%s still answers", u)
	}
}

// tryConnect connects to u, returning the error instead of failing t.
func tryConnect(t testing.TB, u string) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctxT(t), 2*time.Second)
	defer cancel()
	return pgx.Connect(ctx, u)
}
