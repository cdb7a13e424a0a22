package discovery_test

import (
	"context"
	"net"
	"net/url"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/discovery"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/internal/dnstest"
)

func TestMain(m *testing.M) { os.Exit(fxtest_helpers.RunTests(m)) }

const pgSRVName = "_db._postgresql.example.com"

// srvURL turns a postgres:// database URL into a postgresql+srv:// URL for
// db.example.com with the same user, password, database and parameters, and
// returns the port the database listens on.
func srvURL(t *testing.T, dbURL string) (string, uint16) {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	port, err := strconv.ParseUint(u.Port(), 10, 16)
	require.NoError(t, err)
	u.Scheme = "postgresql+srv"
	u.Host = "db.example.com"
	return u.String(), uint16(port)
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	return uint16(port)
}

func queryOne(t *testing.T, connString string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	require.NoError(t, err)
	defer func() { _ = conn.Close(context.Background()) }()
	var port int
	require.NoError(t, conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port))
	return port
}

func TestResolveConnectsToPostgres(t *testing.T) {
	dbURL := fxtest_helpers.NewDatabase(t)
	srv, port := srvURL(t, dbURL)

	dns := dnstest.Start(t)
	dns.SetSRV(pgSRVName, 60, dnstest.SRV{Target: "127.0.0.1", Port: port})
	r := discovery.NewDNSResolver(discovery.WithServer(dns.Addr()))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	connString, ans, err := discovery.Resolve(ctx, r, srv)
	require.NoError(t, err)
	assert.Len(t, ans.Records, 1)
	assert.Equal(t, int(port), queryOne(t, connString))
}

func TestResolveSkipsClosedPort(t *testing.T) {
	dbURL := fxtest_helpers.NewDatabase(t)
	srv, port := srvURL(t, dbURL)

	dns := dnstest.Start(t)
	dns.SetSRV(pgSRVName, 60,
		dnstest.SRV{Target: "127.0.0.1", Port: port, Priority: 2},
		dnstest.SRV{Target: "127.0.0.1", Port: closedPort(t), Priority: 1},
	)
	r := discovery.NewDNSResolver(discovery.WithServer(dns.Addr()))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	connString, _, err := discovery.Resolve(ctx, r, srv)
	require.NoError(t, err)
	assert.Equal(t, int(port), queryOne(t, connString))
}

func TestSourceConnectsToPostgres(t *testing.T) {
	dbURL := fxtest_helpers.NewDatabase(t)
	srv, port := srvURL(t, dbURL)

	dns := dnstest.Start(t)
	dns.SetSRV(pgSRVName, 60, dnstest.SRV{Target: "127.0.0.1", Port: port})
	src, err := discovery.NewSource(srv, discovery.NewDNSResolver(discovery.WithServer(dns.Addr())))
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	connString, err := src.ConnString(ctx)
	require.NoError(t, err)
	assert.Equal(t, int(port), queryOne(t, connString))

	// The answer is cached: DNS may go away.
	dns.Stop()
	again, err := src.ConnString(ctx)
	require.NoError(t, err)
	assert.Equal(t, connString, again)
}
