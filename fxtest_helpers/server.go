package fxtest_helpers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sprockets/sprocketspg/internal/pgserver"
	"github.com/sprockets/sprocketspg/internal/redact"
	"github.com/sprockets/sprocketspg/throwaway"
)

// startTimeout bounds the start of the shared server, which may include
// pulling a Docker image.
const startTimeout = 3 * time.Minute

// maxIdleAdmin is how many admin connections are kept for reuse; each
// NewDatabase needs one only for a moment.
const maxIdleAdmin = 4

// errShutdown is what tests get after Shutdown.
var errShutdown = errors.New("fxtest_helpers: server was shut down")

// shared is the server of this test binary. It is the package's only
// mutable global: one server per binary is the point.
var shared = newSharedServer(startShared)

// startShared provides the server of this test binary: the existing one
// named by SPROCKETSPG_TEST_POSTGRES_URL, else a throwaway server of the
// public package, from local binaries or Docker.
func startShared(ctx context.Context, logf func(string, ...any)) (server, error) {
	if os.Getenv(pgserver.EnvURL) != "" {
		srv, err := pgserver.Start(ctx, pgserver.WithLogf(logf))
		if err != nil {
			return nil, err
		}
		return srv, nil
	}
	srv, err := throwaway.Start(ctx, throwaway.WithLogf(logf))
	if errors.Is(err, throwaway.ErrNoBackend) {
		return nil, fmt.Errorf("no PostgreSQL server available for tests: set %s to the URL of a server "+
			"where databases may be created (e.g. postgres://postgres@localhost:5432/postgres?sslmode=disable), "+
			"or let the helpers start one: %w", pgserver.EnvURL, err)
	}
	if err != nil {
		return nil, err
	}
	return srv, nil
}

// startOwn starts a server of the caller's own from local binaries or
// Docker, whatever SPROCKETSPG_TEST_POSTGRES_URL says.
func startOwn(ctx context.Context, logf func(string, ...any)) (*throwaway.Server, error) {
	return throwaway.Start(ctx, throwaway.WithLogf(logf))
}

// server is what the helpers need of a server: a *throwaway.Server, or a
// *pgserver.Server for an existing server, a standby or its primary.
type server interface {
	URL() string
	Backend() string
	Stop(ctx context.Context) error
	Start(ctx context.Context) error
	Close() error
}

// sharedServer starts a server on first use and holds what NewDatabase
// needs to use it.
type sharedServer struct {
	startFn func(ctx context.Context, logf func(string, ...any)) (server, error)

	once sync.Once
	mu   sync.Mutex // guards srv and err after once
	srv  server
	err  error
	// versionNum is server_version_num, read at start.
	versionNum int

	idle      chan *pgx.Conn
	templates sync.Map // template name -> *template
	counter   atomic.Int64
}

// newSharedServer returns a sharedServer that start starts on first use.
// It takes a start function of any server type, so that one returning a
// nil *pgserver.Server with its error is not mistaken for a server.
func newSharedServer[S server](start func(context.Context, func(string, ...any)) (S, error)) *sharedServer {
	startFn := func(ctx context.Context, logf func(string, ...any)) (server, error) {
		srv, err := start(ctx, logf)
		if err != nil {
			return nil, err
		}
		return srv, nil
	}
	return &sharedServer{startFn: startFn, idle: make(chan *pgx.Conn, maxIdleAdmin)}
}

// get returns the started server, starting it on first use. A failed start
// fails this and every later caller with the same error.
func (s *sharedServer) get(tb testing.TB) server {
	tb.Helper()
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		srv, err := s.startFn(ctx, tb.Logf)
		if err == nil {
			s.versionNum, err = readVersionNum(ctx, srv.URL())
			if err != nil {
				_ = srv.Close()
			}
		}
		s.mu.Lock()
		s.srv, s.err = srv, err
		s.mu.Unlock()
	})
	s.mu.Lock()
	srv, err := s.srv, s.err
	s.mu.Unlock()
	if err != nil {
		tb.Fatalf("fxtest_helpers: start PostgreSQL: %v", err)
	}
	return srv
}

func readVersionNum(ctx context.Context, url string) (int, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, redact.Error(fmt.Errorf("connect to %s: %w", redact.ConnString(url), err), redact.Password(url))
	}
	defer conn.Close(ctx)
	var v int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&v); err != nil {
		return 0, fmt.Errorf("read server_version_num: %w", err)
	}
	return v, nil
}

// adminConn returns a working connection to the server's admin database,
// reused when one is idle. Give it back with release.
func (s *sharedServer) adminConn(ctx context.Context, srv server) (*pgx.Conn, error) {
	for {
		select {
		case c := <-s.idle:
			// A server restart or a terminated session leaves idle
			// connections dead; a ping is cheaper than a failed CREATE.
			if c.Ping(ctx) == nil {
				return c, nil
			}
			_ = c.Close(ctx)
			continue
		default:
		}
		c, err := pgx.Connect(ctx, srv.URL())
		if err != nil {
			return nil, redact.Error(fmt.Errorf("connect to %s: %w", redact.ConnString(srv.URL()), err), redact.Password(srv.URL()))
		}
		return c, nil
	}
}

// release keeps c for reuse unless enough are idle or c saw an error.
func (s *sharedServer) release(c *pgx.Conn, err error) {
	if err == nil && !c.IsClosed() {
		select {
		case s.idle <- c:
			return
		default:
		}
	}
	_ = c.Close(context.Background())
}

func (s *sharedServer) closeIdle() {
	for {
		select {
		case c := <-s.idle:
			_ = c.Close(context.Background())
		default:
			return
		}
	}
}

// shutdown stops the server and removes its files; later callers of get
// fail.
func (s *sharedServer) shutdown() error {
	s.once.Do(func() {}) // a server never started must not start later
	s.closeIdle()
	s.mu.Lock()
	defer s.mu.Unlock()
	srv := s.srv
	s.srv, s.err = nil, errShutdown
	if srv == nil {
		return nil
	}
	if err := srv.Close(); err != nil {
		return fmt.Errorf("fxtest_helpers: close server: %w", err)
	}
	return nil
}

// Shutdown stops the server of this test binary, if one was started, and
// removes its files. Call it from TestMain after m.Run; afterwards tests
// that need the server fail. It returns the error of closing the server.
func Shutdown() error { return shared.shutdown() }

// TestServer controls the server of this test binary, for tests of
// outages. Its methods are safe for concurrent use, but a test that stops
// the server must not run in parallel with other tests that use it.
type TestServer struct {
	s   *sharedServer
	srv server
}

// Server returns the server of this test binary, starting it if no test
// has yet. It fails tb if the server cannot be started.
func Server(tb testing.TB) *TestServer {
	tb.Helper()
	return &TestServer{s: shared, srv: shared.get(tb)}
}

// AdminURL returns a connection URL of a superuser to the server's
// postgres database (for an existing server, the value of
// SPROCKETSPG_TEST_POSTGRES_URL). It stays the same across Stop and Start.
func (t *TestServer) AdminURL() string { return t.srv.URL() }

// Backend returns how the server is provided: "url" for an existing server
// named by SPROCKETSPG_TEST_POSTGRES_URL, "local" for local binaries or
// "docker".
func (t *TestServer) Backend() string { return t.srv.Backend() }

// Stop shuts the server down, keeping its data, so that a test can watch
// clients cope with an outage. Open connections are terminated. If ctx
// ends first the server is killed and ctx's error returned. An existing
// server given by SPROCKETSPG_TEST_POSTGRES_URL cannot be stopped: Stop
// returns an error, which such a test may use to skip itself.
func (t *TestServer) Stop(ctx context.Context) error {
	t.s.closeIdle()
	return t.srv.Stop(ctx)
}

// Start starts the server again after Stop, on the same address with the
// same data, and waits until it accepts connections or ctx ends. Starting a
// running server does nothing. It returns an error for a server given by
// SPROCKETSPG_TEST_POSTGRES_URL or when the server does not come up.
func (t *TestServer) Start(ctx context.Context) error {
	t.s.closeIdle()
	return t.srv.Start(ctx)
}

// StartServer starts another PostgreSQL server, independent of the one
// NewDatabase uses, for tests that need two servers at two addresses: a
// DNS record moving from one to the other, a failover. It always starts a
// server of its own from local binaries or Docker, even when
// SPROCKETSPG_TEST_POSTGRES_URL names an existing one. The server is
// closed and its files removed when tb ends. StartServer fails tb if the
// server cannot be started.
func StartServer(tb testing.TB) *TestServer {
	tb.Helper()
	s := newSharedServer(startOwn)
	srv := s.get(tb)
	tb.Cleanup(func() {
		if err := s.shutdown(); err != nil {
			tb.Errorf("fxtest_helpers: %v", err)
		}
	})
	return &TestServer{s: s, srv: srv}
}

// NewDatabase creates a database for tb alone on this server and returns
// its URL, as the package-level NewDatabase does on the test binary's
// server.
func (t *TestServer) NewDatabase(tb testing.TB, opts ...DatabaseOption) string {
	tb.Helper()
	return t.s.newDatabase(tb, opts...)
}
