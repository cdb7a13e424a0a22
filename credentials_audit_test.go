package sprocketspg_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/discovery"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/internal/dnstest"
)

// These tests close the gaps an audit found in the tests of credentials
// that change and of the pool settings (issue 13). Every server that a
// credential is tried on here checks passwords (scram-sha-256), so that a
// credential the pool ignored would fail.

// startWatchedApp starts an fx app of opts with logger as its *zap.Logger and as
// fx's event logger, and stops it when the test ends. It returns the
// error of fx.New or of start, for tests that expect one (fxtest fails the
// test on them).
func startWatchedApp(t *testing.T, logger *zap.Logger, opts ...fx.Option) error {
	t.Helper()
	app := fx.New(append([]fx.Option{
		fx.Supply(logger),
		fx.WithLogger(func() fxevent.Logger { return &fxevent.ZapLogger{Logger: logger} }),
	}, opts...)...)
	if err := app.Err(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := app.Start(ctx); err != nil {
		return err
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		assert.NoError(t, app.Stop(ctx))
	})
	return nil
}

// connUser returns the user and the backend of one connection.
func connUser(t *testing.T, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (user string, pid int32) {
	t.Helper()
	require.NoError(t, q.QueryRow(ctxT(t), "SELECT current_user::text, pg_backend_pid()").Scan(&user, &pid))
	return user, pid
}

// userBackends returns the backends of user on admin's server.
func userBackends(t *testing.T, admin *pgx.Conn, user string) map[int32]bool {
	t.Helper()
	rows, err := admin.Query(ctxT(t), "SELECT pid FROM pg_stat_activity WHERE usename = $1", user)
	require.NoError(t, err)
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	require.NoError(t, err)
	out := map[int32]bool{}
	for _, pid := range pids {
		out[pid] = true
	}
	return out
}

// alterPassword sets role's password; the value is a literal (ALTER ROLE
// takes no parameters) of the hex-and-dash secrets of these tests.
func alterPassword(ctx context.Context, admin *pgx.Conn, role, password string) error {
	_, err := admin.Exec(ctx, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" PASSWORD '"+password+"'")
	return err
}

// providerCall is what a credentials provider saw of one call.
type providerCall struct {
	token       string
	hasDeadline bool
	left        time.Duration // from the call to its context's deadline
}

// G1: against a server that checks passwords, every new connection logs in
// with exactly what the provider returned for it, user and password.
func TestWithCredentialsEachConnectionLogsInWithItsOwnToken(t *testing.T) {
	initial := newSecret(t, "initial")
	srv, appURL := passwordServer(t, initial)
	watch := newSecretLog(t, initial)
	// The URL's user has no pg_hba.conf entry: only the provider's user
	// gets in, and only with the password the server was just given.
	strangerURL := withURLParts(t, appURL, "stranger", "", databaseName(t, appURL))
	issuer := adminConn(t, srv.AdminURL())
	admin := adminConn(t, srv.AdminURL())
	const timeout = 4 * time.Second

	var mu sync.Mutex
	var calls []providerCall
	provider := func(ctx context.Context) (string, string, error) {
		began := time.Now()
		deadline, ok := ctx.Deadline()
		mu.Lock()
		defer mu.Unlock()
		token := newSecret(t, fmt.Sprintf("token%d", len(calls)+1))
		watch.add(token)
		// The server learns the token before the pool does, and forgets
		// the one before: a login with anything else fails.
		if err := alterPassword(ctx, issuer, "app", token); err != nil {
			return "", "", err
		}
		calls = append(calls, providerCall{token: token, hasDeadline: ok, left: deadline.Sub(began)})
		return "app", token, nil
	}
	snapshot := func() []providerCall {
		mu.Lock()
		defer mu.Unlock()
		return append([]providerCall(nil), calls...)
	}

	pool := newPoolAt(t, strangerURL, func(c *sprocketspg.Config) {
		c.MinPoolSize, c.MaxPoolSize = 1, 3
		c.ConnectionTimeout = timeout
	}, sprocketspg.WithLogger(watch.logger), sprocketspg.WithCredentials(provider))
	require.Len(t, snapshot(), 1, "one call for the one connection start opens")

	// Connections opened one after another, each while the others are
	// held: each one needs a call of its own, and its token.
	var held []*pgxpool.Conn
	defer func() {
		for _, c := range held {
			c.Release()
		}
	}()
	pids := map[int32]bool{}
	for i := range 3 {
		c, err := pool.Acquire(ctxT(t))
		require.NoError(t, err)
		held = append(held, c)
		user, pid := connUser(t, c)
		assert.Equal(t, "app", user, "connection %d logs in as the provider's user, not the URL's", i+1)
		pids[pid] = true
	}
	assert.Len(t, pids, 3)
	got := snapshot()
	require.Len(t, got, 3, "start's connection is reused; the two more opened call the provider once each")
	assert.Equal(t, pids, userBackends(t, admin, "app"), "all three sessions are the provider's user's")
	for _, c := range held {
		c.Release()
	}
	held = nil

	// Connections opened after a reset get fresh tokens too.
	pool.Reset()
	res, err := pool.Execute(ctxT(t), "SELECT current_user AS u")
	require.NoError(t, err)
	assert.Equal(t, "app", res.Row["u"])
	got = snapshot()
	require.Len(t, got, 4)

	tokens := map[string]bool{}
	for i, c := range got {
		tokens[c.token] = true
		require.True(t, c.hasDeadline, "call %d is bounded", i+1)
		assert.InDelta(t, timeout.Seconds(), c.left.Seconds(), 0.5,
			"call %d's context ends ConnectionTimeout after the call (%s left)", i+1, c.left)
		assert.LessOrEqual(t, c.left, timeout, "call %d", i+1)
	}
	assert.Len(t, tokens, 4, "a fresh token for each connection")

	// A provider whose password the server does not know fails start at
	// once, the server's refusal naming the user.
	wrong := newSecret(t, "wrong")
	watch.add(wrong)
	cfg := testConfig(strangerURL)
	cfg.ConnectionTimeout = 10 * time.Second
	began := time.Now()
	_, err = sprocketspg.New(ctxT(t), cfg, sprocketspg.WithLogger(watch.logger),
		sprocketspg.WithCredentials(func(context.Context) (string, string, error) { return "app", wrong, nil }))
	require.Error(t, err)
	t.Logf("the error: %v", err)
	assert.Less(t, time.Since(began), time.Second, "a rejection is not retried")
	assert.ErrorIs(t, err, sprocketspg.ErrConnectionRejected)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "28P01", pgErr.Code)
	assert.Contains(t, err.Error(), `password authentication failed for user "app"`)
	watch.noSecretIn(err)
	assert.Positive(t, watch.entries(), "the pool logs to the watched logger")
}

// G5: a provider's error fails the attempt, at start and later, with the
// provider's text and error, but never the token it returned alongside.
func TestWithCredentialsErrorShowsItsTextNotTheToken(t *testing.T) {
	good := newSecret(t, "good")
	_, appURL := passwordServer(t, good)
	token := newSecret(t, "returned-with-the-error")
	watch := newSecretLog(t, good, token)
	errTokenService := errors.New("token service answered 503")

	t.Run("at start", func(t *testing.T) {
		cfg := testConfig(appURL)
		cfg.ConnectionTimeout = 10 * time.Second
		began := time.Now()
		_, err := sprocketspg.New(ctxT(t), cfg, sprocketspg.WithLogger(watch.logger),
			sprocketspg.WithCredentials(func(context.Context) (string, string, error) {
				return "app", token, fmt.Errorf("refresh the token of app: %w", errTokenService)
			}))
		require.Error(t, err)
		t.Logf("the error: %v", err)
		assert.Less(t, time.Since(began), time.Second, "not retried as an unreachable server")
		assert.ErrorIs(t, err, sprocketspg.ErrCredentials)
		assert.ErrorIs(t, err, errTokenService, "the provider's error is kept")
		assert.NotErrorIs(t, err, sprocketspg.ErrConnectTimeout)
		assert.Contains(t, err.Error(), "refresh the token of app: token service answered 503")
		watch.noSecretIn(err)
	})

	t.Run("a later connection", func(t *testing.T) {
		var failing atomic.Bool
		pool := newPoolAt(t, appURL, func(c *sprocketspg.Config) { c.MinPoolSize, c.MaxPoolSize = 1, 2 },
			sprocketspg.WithLogger(watch.logger),
			sprocketspg.WithCredentials(func(context.Context) (string, string, error) {
				if failing.Load() {
					return "app", token, errTokenService
				}
				return "app", good, nil
			}))
		held, err := pool.Acquire(ctxT(t))
		require.NoError(t, err)
		failing.Store(true)
		// The one connection is held: Execute needs a new one.
		_, err = pool.Execute(ctxT(t), "SELECT 1")
		require.Error(t, err)
		t.Logf("the error: %v", err)
		assert.ErrorIs(t, err, sprocketspg.ErrCredentials)
		assert.ErrorIs(t, err, errTokenService)
		assert.Contains(t, err.Error(), "token service answered 503")
		watch.noSecretIn(err)
		err = pool.Transaction(ctxT(t), func(*sprocketspg.Tx) error { return nil })
		require.ErrorIs(t, err, errTokenService)
		watch.noSecretIn(err)

		// The failure is the attempt's, not the pool's.
		failing.Store(false)
		_, err = pool.Execute(ctxT(t), "SELECT 1")
		require.NoError(t, err)
		held.Release()
	})
}

// G2: postgresql+srv:// and WithCredentials together, through fx: the
// hosts come from the SRV answer and the login from the provider.
func TestWithCredentialsAndSRVBothApply(t *testing.T) {
	password := newSecret(t, "srv-token")
	_, appURL := passwordServer(t, password)
	srvURL, port := srvTestURL(t, withURLParts(t, appURL, "stranger", "", databaseName(t, appURL)))
	dns := dnstest.Start(t)
	dns.SetSRV(srvTestName, 60, dnstest.SRV{Target: "127.0.0.1", Port: port})
	watch := newSecretLog(t, password)

	var calls atomic.Int32
	lookupsAtFirstCall := atomic.Int32{}
	lookupsAtFirstCall.Store(-1)
	provider := func(context.Context) (string, string, error) {
		if calls.Add(1) == 1 {
			lookupsAtFirstCall.Store(int32(dns.Queries(srvTestName)))
		}
		return "app", password, nil
	}
	var pool *sprocketspg.Pool
	fxtest_helpers.NewAppWithDatabase(t, srvURL, srvTestResolver(dns),
		fx.Decorate(func(*zap.Logger) *zap.Logger { return watch.logger }),
		sprocketspg.ProvideOptions(sprocketspg.WithCredentials(provider)),
		fx.Populate(&pool))

	assert.Positive(t, lookupsAtFirstCall.Load(), "the SRV name was resolved before the provider was asked")
	res, err := pool.Execute(ctxT(t), "SELECT current_user AS u, inet_server_port() AS port")
	require.NoError(t, err)
	assert.Equal(t, "app", res.Row["u"], "the provider's user, not the URL's")
	assert.EqualValues(t, port, res.Row["port"], "the server of the SRV answer")

	before := calls.Load()
	assert.Equal(t, int(port), srvTestServerPort(t, pool), "a new connection, after Reset")
	assert.Equal(t, before+1, calls.Load(), "the new connection asked the provider")
	assert.Positive(t, watch.entries(), "the pool logs to the watched logger")
}

// G2: postgresql+srv:// and POSTGRES_PASSWORD_FILE together: the hosts come
// from the SRV answer, the password from the file, read again for a new
// connection after rotation.
func TestPasswordFileAndSRVBothApply(t *testing.T) {
	first, second := newSecret(t, "srv-first"), newSecret(t, "srv-second")
	srv, appURL := passwordServer(t, first)
	srvURL, port := srvTestURL(t, appURL)
	dns := dnstest.Start(t)
	dns.SetSRV(srvTestName, 60, dnstest.SRV{Target: "127.0.0.1", Port: port})
	watch := newSecretLog(t, first, second)
	file := filepath.Join(t.TempDir(), "password")
	require.NoError(t, os.WriteFile(file, []byte(first+"\n"), 0o600))

	pool := newPoolAt(t, srvURL, func(c *sprocketspg.Config) {
		c.PasswordFile = file
		c.MinPoolSize, c.MaxPoolSize = 1, 2
	}, sprocketspg.WithLogger(watch.logger), sprocketspg.WithResolver(
		discovery.NewDNSResolver(discovery.WithServer(dns.Addr()), discovery.WithTimeout(500*time.Millisecond))))
	held, err := pool.Acquire(ctxT(t))
	require.NoError(t, err)
	defer held.Release()
	user, _ := connUser(t, held)
	assert.Equal(t, "app", user)
	var heldPort int
	require.NoError(t, held.QueryRow(ctxT(t), "SELECT inet_server_port()").Scan(&heldPort))
	assert.Equal(t, int(port), heldPort)

	require.NoError(t, alterPassword(ctxT(t), adminConn(t, srv.AdminURL()), "app", second))
	require.NoError(t, os.WriteFile(file, []byte(second+"\n"), 0o600))
	fresh, err := pool.Acquire(ctxT(t))
	require.NoError(t, err, "a new connection reads the rotated file, through the SRV answer")
	defer fresh.Release()
	var freshPort int
	require.NoError(t, fresh.QueryRow(ctxT(t), "SELECT inet_server_port()").Scan(&freshPort))
	assert.Equal(t, int(port), freshPort)
	assert.NotEqual(t, held.Conn().PgConn().PID(), fresh.Conn().PgConn().PID())
	assert.Positive(t, dns.Queries(srvTestName))

	// An SRV URL with a password of its own and a file: refused, naming
	// both, without the password.
	cfg := testConfig(withURLParts(t, srvURL, "app", first, databaseName(t, appURL)))
	cfg.PasswordFile = file
	_, err = sprocketspg.New(ctxT(t), cfg, sprocketspg.WithLogger(watch.logger))
	require.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	assert.Contains(t, err.Error(), sprocketspg.EnvPasswordFile)
	assert.Contains(t, err.Error(), sprocketspg.EnvURL)
	watch.noSecretIn(err)
}

// G3: the orders instance's password file, from ORDERS_POSTGRES_*, rotates
// without a restart as its short ConnectionTTL replaces connections.
func TestNamedPasswordFileRotatesWithoutRestart(t *testing.T) {
	first, second := newSecret(t, "orders-first"), newSecret(t, "orders-second")
	srv, appURL := passwordServer(t, first)
	watch := newSecretLog(t, first, second)
	file := filepath.Join(t.TempDir(), "password")
	require.NoError(t, os.WriteFile(file, []byte(first+"\n"), 0o600))
	t.Setenv("ORDERS_POSTGRES_URL", appURL)
	t.Setenv("ORDERS_POSTGRES_PASSWORD_FILE", file)
	t.Setenv("ORDERS_POSTGRES_MIN_POOL_SIZE", "2")
	t.Setenv("ORDERS_POSTGRES_MAX_POOL_SIZE", "2")
	t.Setenv("ORDERS_POSTGRES_CONNECTION_TTL", "2")
	t.Setenv("ORDERS_POSTGRES_HEALTH_CHECK_PERIOD", "0.1")
	// The default instance's variable is not the orders instance's.
	t.Setenv(sprocketspg.EnvPasswordFile, filepath.Join(t.TempDir(), "not-this-one"))

	var pools ordersPools
	require.NoError(t, startWatchedApp(t, watch.logger, sprocketspg.Named("orders"), fx.Populate(&pools)))
	pool := pools.Orders
	assert.Equal(t, file, pool.Config().PasswordFile)
	assert.Equal(t, 2*time.Second, pool.Config().ConnectionTTL)
	admin := adminConn(t, srv.AdminURL())
	res, err := pool.Execute(ctxT(t), "SELECT current_user AS u")
	require.NoError(t, err)
	assert.Equal(t, "app", res.Row["u"])

	// The secret rotates: the server first, then the file.
	require.NoError(t, alterPassword(ctxT(t), admin, "app", second))
	require.NoError(t, os.WriteFile(file, []byte(second+"\n"), 0o600))
	_, err = pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err, "connections made before the rotation keep working")

	// Every session now is one made before the rotation finished, or one
	// made after it with the new password; all are replaced by new ones,
	// which can only have logged in with the file's new content.
	before := userBackends(t, admin, "app")
	require.NotEmpty(t, before)
	require.Eventually(t, func() bool {
		now := userBackends(t, admin, "app")
		for pid := range now {
			if before[pid] {
				return false
			}
		}
		return len(now) == 2
	}, 20*time.Second, 50*time.Millisecond, "connections are replaced, logging in with the new password")
	res, err = pool.Execute(ctxT(t), "SELECT current_user AS u")
	require.NoError(t, err)
	assert.Equal(t, "app", res.Row["u"])
	assert.Same(t, pool, pools.Orders, "no restart")
	assert.Positive(t, watch.entries())
}

// G3: ORDERS_POSTGRES_SEARCH_PATH applies to the orders instance.
func TestNamedSearchPathApplies(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(
		`CREATE SCHEMA app; CREATE TABLE app.things (n int); INSERT INTO app.things VALUES (7);`))
	t.Setenv("ORDERS_POSTGRES_URL", url)
	t.Setenv("ORDERS_POSTGRES_SEARCH_PATH", "app, public")
	t.Setenv(sprocketspg.EnvSearchPath, "nowhere")
	var pools ordersPools
	require.NoError(t, startWatchedApp(t, zaptest.NewLogger(t), sprocketspg.Named("orders"), fx.Populate(&pools)))
	assert.Equal(t, "app, public", pools.Orders.Config().SearchPath)
	res, err := pools.Orders.Execute(ctxT(t), "SELECT n FROM things")
	require.NoError(t, err, "things is found in app")
	assert.EqualValues(t, 7, res.Row["n"])
	res, err = pools.Orders.Execute(ctxT(t), "SELECT current_setting('search_path') AS p")
	require.NoError(t, err)
	assert.Equal(t, "app, public", res.Row["p"])
}

// G3: ORDERS_POSTGRES_ACQUIRE_TIMEOUT on a pool of one held by another
// caller fails Execute in about that long, as ErrPoolExhausted and 503.
func TestNamedAcquireTimeoutFailsFast(t *testing.T) {
	t.Setenv("ORDERS_POSTGRES_URL", fxtest_helpers.NewDatabase(t))
	t.Setenv("ORDERS_POSTGRES_ACQUIRE_TIMEOUT", "0.1")
	t.Setenv("ORDERS_POSTGRES_MAX_POOL_SIZE", "1")
	t.Setenv("ORDERS_POSTGRES_MIN_POOL_SIZE", "1")
	t.Setenv(sprocketspg.EnvAcquireTimeout, "30")
	var pools ordersPools
	require.NoError(t, startWatchedApp(t, zaptest.NewLogger(t), sprocketspg.Named("orders"), fx.Populate(&pools)))
	pool := pools.Orders
	require.Equal(t, 100*time.Millisecond, pool.Config().AcquireTimeout)

	held, err := pool.Acquire(ctxT(t))
	require.NoError(t, err)
	// A context shorter than the test's, so that a missing timeout fails
	// soon, but far longer than the acquire timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	began := time.Now()
	_, err = pool.Execute(ctx, "SELECT 1")
	elapsed := time.Since(began)
	held.Release()
	require.Error(t, err)
	t.Logf("after %s: %v", elapsed.Round(time.Millisecond), err)
	assert.ErrorIs(t, err, sprocketspg.ErrPoolExhausted)
	assert.Greater(t, elapsed, 50*time.Millisecond)
	assert.Less(t, elapsed, time.Second)
	assert.Contains(t, err.Error(), `instance "orders"`)
	assert.Contains(t, err.Error(), "all 1 connections in use")
	p, ok := sprocketspg.ClassifyError(err)
	require.True(t, ok)
	assert.Equal(t, http.StatusServiceUnavailable, p.Status)

	_, err = pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err, "a free connection is taken at once")
}

// G3: ORDERS_POSTGRES_MAX_CONN_IDLE_TIME, _MIN_IDLE_CONNS and
// _HEALTH_CHECK_PERIOD reach the orders pool, and only it.
func TestNamedIdleSettingsReachThePool(t *testing.T) {
	backends := sessionCounter(t)
	ordersURL := fxtest_helpers.NewDatabase(t)
	database := databaseName(t, ordersURL)
	t.Setenv(sprocketspg.EnvURL, fxtest_helpers.NewDatabase(t))
	t.Setenv("ORDERS_POSTGRES_URL", ordersURL)
	t.Setenv("ORDERS_POSTGRES_MIN_POOL_SIZE", "0")
	t.Setenv("ORDERS_POSTGRES_MAX_CONN_IDLE_TIME", "0.3")
	t.Setenv("ORDERS_POSTGRES_MIN_IDLE_CONNS", "2")
	t.Setenv("ORDERS_POSTGRES_HEALTH_CHECK_PERIOD", "100ms")
	var pools twoPools
	require.NoError(t, startWatchedApp(t, zaptest.NewLogger(t), sprocketspg.Module, sprocketspg.Named("orders"), fx.Populate(&pools)))

	cfg := pools.Orders.Config()
	assert.Equal(t, 300*time.Millisecond, cfg.MaxConnIdleTime)
	assert.Equal(t, 2, cfg.MinIdleConns)
	assert.Equal(t, 100*time.Millisecond, cfg.HealthCheckPeriod)
	pc := pools.Orders.Pool.Config()
	assert.Equal(t, 300*time.Millisecond, pc.MaxConnIdleTime)
	assert.EqualValues(t, 2, pc.MinIdleConns)
	assert.Equal(t, 100*time.Millisecond, pc.HealthCheckPeriod)
	// The default instance keeps pgx's defaults.
	dc := pools.Default.Pool.Config()
	assert.Equal(t, 30*time.Minute, dc.MaxConnIdleTime)
	assert.EqualValues(t, 0, dc.MinIdleConns)
	assert.Equal(t, time.Minute, dc.HealthCheckPeriod)

	require.Eventually(t, func() bool { return backends(database) == 2 }, 10*time.Second, 20*time.Millisecond,
		"MinIdleConns connections are kept ready")
	conns := make([]*pgxpool.Conn, 4)
	for i := range conns {
		c, err := pools.Orders.Acquire(ctxT(t))
		require.NoError(t, err)
		conns[i] = c
	}
	for _, c := range conns {
		c.Release()
	}
	require.GreaterOrEqual(t, backends(database), 4)
	require.Eventually(t, func() bool { return backends(database) == 2 }, 10*time.Second, 20*time.Millisecond,
		"idle connections beyond MinIdleConns are closed after MaxConnIdleTime")
}

// unprefixedVariable matches a variable of the default instance that is
// not part of a prefixed one.
var unprefixedVariable = regexp.MustCompile(`(^|[^A-Z_])POSTGRES_(URL|PASSWORD_FILE)`)

// G3: a password in ORDERS_POSTGRES_URL and ORDERS_POSTGRES_PASSWORD_FILE
// together are refused, naming both prefixed variables.
func TestNamedPasswordInURLAndFileNamesBothVariables(t *testing.T) {
	password := newSecret(t, "in-the-url")
	watch := newSecretLog(t, password)
	t.Setenv("ORDERS_POSTGRES_URL", "postgres://app:"+password+"@127.0.0.1:1/orders?sslmode=disable")
	t.Setenv("ORDERS_POSTGRES_PASSWORD_FILE", "/run/secrets/orders-db")
	began := time.Now()
	err := startWatchedApp(t, watch.logger, sprocketspg.Named("orders"), fx.Populate(&ordersPools{}))
	require.Error(t, err)
	t.Logf("the error: %v", err)
	assert.Less(t, time.Since(began), time.Second, "refused before any connection is tried")
	assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	var ce *sprocketspg.ConfigError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "ORDERS_POSTGRES_PASSWORD_FILE", ce.Variable)
	assert.Contains(t, err.Error(), `invalid ORDERS_POSTGRES_PASSWORD_FILE "/run/secrets/orders-db"`)
	assert.Contains(t, err.Error(), "ORDERS_POSTGRES_URL holds a password")
	assert.NotRegexp(t, unprefixedVariable, err.Error(), "only the instance's variables are named")
	watch.noSecretIn(err)
}

// G3: WithInstanceCredentials, given once for every instance, gives the
// orders instance its own provider while the default instance, for which
// it returns nil, logs in with its POSTGRES_PASSWORD_FILE.
func TestWithInstanceCredentialsPerInstance(t *testing.T) {
	defaultPassword, ordersPassword := newSecret(t, "default-file"), newSecret(t, "orders-token")
	srv, appURL := passwordServer(t, defaultPassword, "host all orders_app 127.0.0.1/32 scram-sha-256")
	watch := newSecretLog(t, defaultPassword, ordersPassword)
	admin := adminConn(t, srv.AdminURL())
	_, err := admin.Exec(ctxT(t), "CREATE ROLE orders_app LOGIN PASSWORD '"+ordersPassword+"'")
	require.NoError(t, err)
	ordersDB := srv.NewDatabase(t)
	file := filepath.Join(t.TempDir(), "password")
	require.NoError(t, os.WriteFile(file, []byte(defaultPassword+"\n"), 0o600))
	t.Setenv(sprocketspg.EnvURL, appURL)
	t.Setenv(sprocketspg.EnvPasswordFile, file)
	t.Setenv("ORDERS_POSTGRES_URL", withURLParts(t, ordersDB, "stranger", "", databaseName(t, ordersDB)))
	t.Setenv("ORDERS_POSTGRES_PASSWORD_FILE", "")

	var mu sync.Mutex
	asked := map[string]int{}
	var ordersCalls atomic.Int32
	perInstance := sprocketspg.WithInstanceCredentials(func(instance string) sprocketspg.CredentialsFunc {
		mu.Lock()
		asked[instance]++
		mu.Unlock()
		if instance != "orders" {
			return nil
		}
		return func(ctx context.Context) (string, string, error) {
			ordersCalls.Add(1)
			return "orders_app", ordersPassword, nil
		}
	})

	var pools twoPools
	require.NoError(t, startWatchedApp(t, watch.logger, sprocketspg.Module, sprocketspg.Named("orders"),
		sprocketspg.ProvideOptions(perInstance), fx.Populate(&pools)))
	mu.Lock()
	assert.Equal(t, map[string]int{"": 1, "orders": 1}, asked, "asked once for each instance, by its name")
	mu.Unlock()

	user, _ := connUser(t, pools.Default)
	assert.Equal(t, "app", user, "the default instance logs in with its password file")
	assert.Equal(t, databaseName(t, appURL), currentDatabase(t, pools.Default))
	user, _ = connUser(t, pools.Orders)
	assert.Equal(t, "orders_app", user, "the orders instance logs in with its provider's credentials")
	assert.Equal(t, databaseName(t, ordersDB), currentDatabase(t, pools.Orders))
	require.Positive(t, ordersCalls.Load())

	// New connections of each instance: the provider serves orders alone.
	before := ordersCalls.Load()
	pools.Default.Reset()
	user, _ = connUser(t, pools.Default)
	assert.Equal(t, "app", user)
	assert.Equal(t, before, ordersCalls.Load(), "the default instance never asks the orders provider")
	pools.Orders.Reset()
	user, _ = connUser(t, pools.Orders)
	assert.Equal(t, "orders_app", user)
	assert.Equal(t, before+1, ordersCalls.Load())

	// The same provider given with WithCredentials applies to every
	// instance, and so conflicts with the default instance's file.
	shared := sprocketspg.WithCredentials(func(context.Context) (string, string, error) {
		return "orders_app", ordersPassword, nil
	})
	err = startWatchedApp(t, watch.logger, sprocketspg.Module, sprocketspg.Named("orders"), sprocketspg.ProvideOptions(shared))
	require.Error(t, err)
	assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	assert.Contains(t, err.Error(), "invalid POSTGRES_PASSWORD_FILE")
	assert.Contains(t, err.Error(), "WithCredentials")
	watch.noSecretIn(err)
}

// G6: POSTGRES_ACQUIRE_TIMEOUT bounds the wait for a connection of the
// read pool too.
func TestAcquireTimeoutOnTheReadPool(t *testing.T) {
	primaryURL, replicaURL := fxtest_helpers.NewDatabase(t), fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvReadURL, replicaURL)
	t.Setenv(sprocketspg.EnvAcquireTimeout, "0.1")
	t.Setenv(sprocketspg.EnvMaxPoolSize, "1")
	t.Setenv(sprocketspg.EnvMinPoolSize, "1")
	var pool *sprocketspg.Pool
	fxtest_helpers.NewAppWithDatabase(t, primaryURL, fx.Populate(&pool))
	require.Equal(t, 100*time.Millisecond, pool.Config().AcquireTimeout)
	require.Eventually(t, func() bool { return pool.Reader() != pool }, 10*time.Second, 10*time.Millisecond,
		"the read pool is handed out once it answers")
	reader := pool.Reader()
	replicaDB := databaseOf(t, replicaURL)
	require.Equal(t, replicaDB, currentDatabase(t, reader))

	held, err := reader.Acquire(ctxT(t))
	require.NoError(t, err)
	defer held.Release()
	r := pool.Reader()
	require.Same(t, reader, r, "the read pool is still handed out")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	began := time.Now()
	_, err = r.Execute(ctx, "SELECT current_database()")
	elapsed := time.Since(began)
	require.Error(t, err)
	t.Logf("after %s: %v", elapsed.Round(time.Millisecond), err)
	assert.ErrorIs(t, err, sprocketspg.ErrPoolExhausted)
	assert.Greater(t, elapsed, 50*time.Millisecond)
	assert.Less(t, elapsed, time.Second)
	assert.Contains(t, err.Error(), "all 1 connections in use")
	p, ok := sprocketspg.ClassifyError(err)
	require.True(t, ok)
	assert.Equal(t, http.StatusServiceUnavailable, p.Status)

	// The primary's own connection is free: only the read pool is starved.
	began = time.Now()
	assert.Equal(t, databaseOf(t, primaryURL), currentDatabase(t, pool))
	assert.Less(t, time.Since(began), time.Second)
	held.Release()
	assert.Equal(t, replicaDB, currentDatabase(t, reader), "the read pool serves again once its connection is free")
}

// G7: when the provider's user is not the URL's and the server rejects
// it, start's error names the provider's user.
func TestRejectedLoginNamesTheProvidersUser(t *testing.T) {
	good := newSecret(t, "good")
	_, appURL := passwordServer(t, good, "host all ghost 127.0.0.1/32 trust")
	database := databaseName(t, appURL)
	strangerURL := withURLParts(t, appURL, "stranger", "", database)
	wrong := newSecret(t, "wrong")
	watch := newSecretLog(t, good, wrong)
	srvURL, port := srvTestURL(t, strangerURL)
	dns := dnstest.Start(t)
	dns.SetSRV(srvTestName, 60, dnstest.SRV{Target: "127.0.0.1", Port: port})
	resolver := sprocketspg.WithResolver(
		discovery.NewDNSResolver(discovery.WithServer(dns.Addr()), discovery.WithTimeout(500*time.Millisecond)))

	tests := []struct {
		name           string
		url            string
		user, password string // what the provider returns
		opts           []sprocketspg.Option
		code, named    string // the SQLSTATE and the user the error must name
		where          string // how the error names the target
	}{
		{name: "wrong password", url: strangerURL, user: "app", password: wrong,
			code: "28P01", named: "app", where: fmt.Sprintf(`127.0.0.1:%d (database %q, user "app")`, port, database)},
		{name: "role does not exist", url: strangerURL, user: "ghost", password: wrong,
			code: "28000", named: "ghost", where: fmt.Sprintf(`(database %q, user "ghost")`, database)},
		{name: "named instance", url: strangerURL, user: "app", password: wrong, opts: []sprocketspg.Option{sprocketspg.WithName("orders")},
			code: "28P01", named: "app", where: fmt.Sprintf(`(instance "orders", database %q, user "app")`, database)},
		{name: "SRV", url: srvURL, user: "app", password: wrong, opts: []sprocketspg.Option{resolver},
			code: "28P01", named: "app", where: fmt.Sprintf(`SRV %s (database %q, user "app")`, srvTestName, database)},
		{name: "empty user keeps the URL's", url: withURLParts(t, appURL, "app", "", database), user: "", password: wrong,
			code: "28P01", named: "app", where: fmt.Sprintf(`(database %q, user "app")`, database)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(tt.url)
			cfg.ConnectionTimeout = 10 * time.Second
			opts := append([]sprocketspg.Option{sprocketspg.WithLogger(watch.logger),
				sprocketspg.WithCredentials(func(context.Context) (string, string, error) { return tt.user, tt.password, nil }),
			}, tt.opts...)
			began := time.Now()
			_, err := sprocketspg.New(ctxT(t), cfg, opts...)
			require.Error(t, err)
			t.Logf("the error: %v", err)
			assert.Less(t, time.Since(began), time.Second, "a rejection is not retried")
			assert.ErrorIs(t, err, sprocketspg.ErrConnectionRejected)
			assert.NotErrorIs(t, err, sprocketspg.ErrConnectTimeout)
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			assert.Equal(t, tt.code, pgErr.Code)
			assert.Contains(t, err.Error(), "connect to postgres at ")
			assert.Contains(t, err.Error(), tt.where)
			assert.NotContains(t, err.Error(), `user "stranger"`, "the URL's user was not the one refused")
			watch.noSecretIn(err)
		})
	}
}
