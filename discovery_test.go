package sprocketspg_test

import (
	"context"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/discovery"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/internal/dnstest"
)

const srvTestName = "_db._postgresql.example.com"

// srvTestURL turns a postgres:// database URL into a postgresql+srv:// URL
// for db.example.com with the same user, password, database and parameters,
// and returns the port the database listens on.
func srvTestURL(t *testing.T, dbURL string) (string, uint16) {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	port, err := strconv.ParseUint(u.Port(), 10, 16)
	require.NoError(t, err)
	u.Scheme = "postgresql+srv"
	u.Host = "db.example.com"
	return u.String(), uint16(port)
}

// srvTestResolver replaces Module's resolver with one that asks dns.
func srvTestResolver(dns *dnstest.Server) fx.Option {
	return fx.Decorate(func(discovery.Resolver) discovery.Resolver {
		return discovery.NewDNSResolver(
			discovery.WithServer(dns.Addr()),
			discovery.WithTimeout(500*time.Millisecond),
		)
	})
}

// srvTestApp starts Module on srvURL, resolving through dns.
func srvTestApp(t *testing.T, srvURL string, dns *dnstest.Server) *sprocketspg.Pool {
	t.Helper()
	var pool *sprocketspg.Pool
	fxtest_helpers.NewAppWithDatabase(t, srvURL, srvTestResolver(dns), fx.Populate(&pool))
	return pool
}

// srvTestServerPort returns the port of the server a fresh connection of
// pool reaches: Reset drops the pool's connections first.
func srvTestServerPort(t *testing.T, pool *sprocketspg.Pool) int {
	t.Helper()
	port, err := srvTestTryServerPort(pool)
	require.NoError(t, err)
	return port
}

// srvTestTryServerPort is srvTestServerPort for use off the test's
// goroutine, as in assert.Eventually.
func srvTestTryServerPort(pool *sprocketspg.Pool) (int, error) {
	pool.Reset()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var port int
	err := pool.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port)
	return port, err
}

// srvTestClosedPort returns a loopback port nothing listens on.
func srvTestClosedPort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	return uint16(port)
}

func TestSRVModuleQueries(t *testing.T) {
	srvURL, port := srvTestURL(t, fxtest_helpers.NewDatabase(t))
	dns := dnstest.Start(t)
	dns.SetSRV(srvTestName, 60, dnstest.SRV{Target: "127.0.0.1", Port: port})

	pool := srvTestApp(t, srvURL, dns)

	res, err := pool.Execute(ctxT(t), "SELECT 1 AS one")
	require.NoError(t, err)
	assert.EqualValues(t, 1, res.RowCount)
	assert.Equal(t, int(port), srvTestServerPort(t, pool))
	assert.Equal(t, 1, dns.Queries(srvTestName), "the answer is cached for its TTL")
}

// TestSRVWithoutFx resolves through WithResolver, the way a program that
// does not use fx gives New its resolver.
func TestSRVWithoutFx(t *testing.T) {
	srvURL, port := srvTestURL(t, fxtest_helpers.NewDatabase(t))
	dns := dnstest.Start(t)
	dns.SetSRV(srvTestName, 60, dnstest.SRV{Target: "127.0.0.1", Port: port})

	pool := newPoolAt(t, srvURL, nil, sprocketspg.WithResolver(
		discovery.NewDNSResolver(discovery.WithServer(dns.Addr()), discovery.WithTimeout(500*time.Millisecond))))
	assert.Equal(t, int(port), srvTestServerPort(t, pool))
	assert.Positive(t, dns.Queries(srvTestName))
}

func TestSRVModuleFollowsDNSChange(t *testing.T) {
	dbURL := fxtest_helpers.NewDatabase(t)
	srvURL, portA := srvTestURL(t, dbURL)

	// The second server gets a database of the same name, so that one
	// SRV URL fits both.
	second := fxtest_helpers.StartServer(t)
	adminURL, err := url.Parse(second.AdminURL())
	require.NoError(t, err)
	parsedDB, err := url.Parse(dbURL)
	require.NoError(t, err)
	if adminURL.User.String() != parsedDB.User.String() {
		t.Skip("the two test servers have different credentials")
	}
	dbName := strings.TrimPrefix(parsedDB.Path, "/")
	_, err = adminConn(t, second.AdminURL()).Exec(ctxT(t), "CREATE DATABASE "+pgx.Identifier{dbName}.Sanitize())
	require.NoError(t, err)
	portB, err := strconv.ParseUint(adminURL.Port(), 10, 16)
	require.NoError(t, err)
	require.NotEqual(t, uint64(portA), portB)

	dns := dnstest.Start(t)
	dns.SetSRV(srvTestName, 1, dnstest.SRV{Target: "127.0.0.1", Port: portA})
	pool := srvTestApp(t, srvURL, dns)
	assert.Equal(t, int(portA), srvTestServerPort(t, pool))

	dns.SetSRV(srvTestName, 1, dnstest.SRV{Target: "127.0.0.1", Port: uint16(portB)})
	assert.Eventually(t, func() bool {
		port, err := srvTestTryServerPort(pool)
		return err == nil && port == int(portB)
	}, 10*time.Second, 200*time.Millisecond, "new connections go to the new server after the TTL")
}

func TestSRVModuleSkipsClosedPort(t *testing.T) {
	srvURL, port := srvTestURL(t, fxtest_helpers.NewDatabase(t))
	closed := srvTestClosedPort(t)
	dns := dnstest.Start(t)
	dns.SetSRV(srvTestName, 60,
		dnstest.SRV{Target: "127.0.0.1", Port: closed, Priority: 1},
		dnstest.SRV{Target: "127.0.0.1", Port: port, Priority: 2},
	)

	pool := srvTestApp(t, srvURL, dns)
	assert.Equal(t, int(port), srvTestServerPort(t, pool))
}

func TestSRVModuleKeepsAnswerWhenDNSStops(t *testing.T) {
	srvURL, port := srvTestURL(t, fxtest_helpers.NewDatabase(t))
	dns := dnstest.Start(t)
	dns.SetSRV(srvTestName, 1, dnstest.SRV{Target: "127.0.0.1", Port: port})

	pool := srvTestApp(t, srvURL, dns)
	assert.Equal(t, int(port), srvTestServerPort(t, pool))

	dns.Stop()
	// Past the TTL the answer is due for a refresh, which fails.
	time.Sleep(1500 * time.Millisecond)
	for range 3 {
		assert.Equal(t, int(port), srvTestServerPort(t, pool))
	}
	res, err := pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err)
	assert.EqualValues(t, 1, res.RowCount)
}
