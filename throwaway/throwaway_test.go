package throwaway_test

import (
	"context"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sprockets/sprocketspg/throwaway"
)

// TestMain fails the binary when a test leaves a goroutine behind: a
// local server is watched by one for as long as it runs, so a server that
// was not closed shows up here.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start starts a server for t and closes it when t ends. A machine without
// PostgreSQL's binaries and without Docker fails the test with Start's
// error, which says how to get either.
func start(t *testing.T, opts ...throwaway.Option) *throwaway.Server {
	t.Helper()
	srv, err := throwaway.Start(ctxT(t, 2*time.Minute), append([]throwaway.Option{throwaway.WithLogf(t.Logf)}, opts...)...)
	require.NoError(t, err, "a throwaway server needs PostgreSQL's server binaries (apt-get install postgresql) or a Docker engine")
	t.Cleanup(func() { assert.NoError(t, srv.Close()) })
	return srv
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// connect opens a connection to url and closes it when t ends.
func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := tryConnect(t, url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func tryConnect(t *testing.T, url string) (*pgx.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return pgx.Connect(ctx, url)
}

// requireDown checks that nothing accepts connections at url.
func requireDown(t *testing.T, url string) {
	t.Helper()
	conn, err := tryConnect(t, url)
	if err == nil {
		_ = conn.Close(context.Background())
	}
	require.Error(t, err, "the server still accepts connections")
}

// runDir asks a local server where its data directory is and returns the
// directory above it, where everything of that server lives.
func runDir(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var dataDir string
	require.NoError(t, conn.QueryRow(ctxT(t, 10*time.Second), "SHOW data_directory").Scan(&dataDir))
	return filepath.Dir(dataDir)
}

func TestStartServesQueries(t *testing.T) {
	t.Parallel()
	srv := start(t)
	assert.Contains(t, []string{throwaway.BackendLocal, throwaway.BackendDocker}, srv.Backend())
	assert.True(t, strings.HasPrefix(srv.URL(), "postgres://postgres@"), srv.URL())

	ctx := ctxT(t, 30*time.Second)
	conn := connect(t, srv.URL())
	_, err := conn.Exec(ctx, "CREATE TABLE visits (page text PRIMARY KEY); INSERT INTO visits VALUES ('/home')")
	require.NoError(t, err)
	var page string
	require.NoError(t, conn.QueryRow(ctx, "SELECT page FROM visits").Scan(&page))
	assert.Equal(t, "/home", page)
}

func TestStopAndStartKeepData(t *testing.T) {
	t.Parallel()
	srv := start(t)
	ctx := ctxT(t, time.Minute)
	url := srv.URL()
	conn := connect(t, url)
	_, err := conn.Exec(ctx, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
	require.NoError(t, err)

	require.NoError(t, srv.Stop(ctx))
	require.NoError(t, srv.Stop(ctx), "stopping a stopped server")
	requireDown(t, url)
	assert.Error(t, conn.Ping(ctx), "an open connection is terminated")

	require.NoError(t, srv.Start(ctx))
	require.NoError(t, srv.Start(ctx), "starting a running server")
	assert.Equal(t, url, srv.URL(), "same address after Start")
	var v int
	require.NoError(t, connect(t, url).QueryRow(ctx, "SELECT v FROM kept").Scan(&v))
	assert.Equal(t, 42, v, "same data after Start")
}

func TestCloseRemovesEverything(t *testing.T) {
	t.Parallel()
	srv, err := throwaway.Start(ctxT(t, 2*time.Minute), throwaway.WithLogf(t.Logf))
	require.NoError(t, err, "a throwaway server needs PostgreSQL's server binaries (apt-get install postgresql) or a Docker engine")
	conn, err := tryConnect(t, srv.URL())
	if err != nil {
		_ = srv.Close()
		require.NoError(t, err)
	}
	dir := ""
	if srv.Backend() == throwaway.BackendLocal {
		dir = runDir(t, conn)
		require.DirExists(t, dir)
		require.FileExists(t, filepath.Join(dir, "data", "PG_VERSION"))
	}
	_ = conn.Close(context.Background())

	require.NoError(t, srv.Close())
	requireDown(t, srv.URL())
	if dir != "" {
		assert.NoDirExists(t, dir, "Close leaves the server's files behind")
	}

	require.NoError(t, srv.Close(), "a second Close does nothing")
	ctx := ctxT(t, 10*time.Second)
	assert.ErrorIs(t, srv.Stop(ctx), throwaway.ErrClosed)
	assert.ErrorIs(t, srv.Start(ctx), throwaway.ErrClosed)
}

// TestLocalServerRunsAsNobodyUnderRoot checks where a local server keeps
// its files and whose process it is: postmaster.pid is written by the
// server itself, so its owner is the user the server runs as.
func TestLocalServerRunsAsNobodyUnderRoot(t *testing.T) {
	t.Parallel()
	srv := start(t)
	if srv.Backend() != throwaway.BackendLocal {
		t.Skip("the server runs in Docker, not as a local process")
	}
	dir := runDir(t, connect(t, srv.URL()))
	fi, err := os.Stat(filepath.Join(dir, "data", "postmaster.pid"))
	require.NoError(t, err)
	st, ok := fi.Sys().(*syscall.Stat_t)
	require.True(t, ok)
	if os.Geteuid() == 0 {
		assert.NotEqual(t, uint32(0), st.Uid, "a server started by root must not run as root")
		if nobody, err := user.Lookup("nobody"); err == nil {
			assert.Equal(t, nobody.Uid, strconv.FormatUint(uint64(st.Uid), 10), "runs as nobody")
		}
	} else {
		assert.Equal(t, uint32(os.Geteuid()), st.Uid, "runs as the current user")
	}
	if shm, err := os.Stat("/dev/shm"); err == nil && shm.IsDir() && shm.Mode().Perm() == 0o777 {
		assert.True(t, strings.HasPrefix(dir, "/dev/shm/"), "data on tmpfs: %s", dir)
	}
}

// TestStartIgnoresTestServerVariable: the variable that points
// sprocketspg's test helpers at an existing server does not make Start
// hand out that server.
func TestStartIgnoresTestServerVariable(t *testing.T) {
	const existing = "postgres://someone@127.0.0.1:1/theirs?sslmode=disable"
	t.Setenv("SPROCKETSPG_TEST_POSTGRES_URL", existing)
	srv := start(t)
	assert.NotEqual(t, existing, srv.URL())
	var one int
	require.NoError(t, connect(t, srv.URL()).QueryRow(ctxT(t, 10*time.Second), "SELECT 1").Scan(&one))
}

func TestStartWithoutBackendSaysHowToGetOne(t *testing.T) {
	t.Setenv(throwaway.EnvBinDir, t.TempDir()) // no initdb or postgres there
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(t.TempDir(), "no-docker.sock"))

	srv, err := throwaway.Start(ctxT(t, time.Minute))
	if srv != nil {
		_ = srv.Close()
	}
	require.Error(t, err)
	assert.ErrorIs(t, err, throwaway.ErrNoBackend)
	msg := err.Error()
	for _, want := range []string{"apt-get install postgresql", throwaway.EnvBinDir, "Docker", "local binaries:", "docker:"} {
		assert.Contains(t, msg, want)
	}
	assert.NotContains(t, msg, "SPROCKETSPG_TEST_POSTGRES_URL", "Start does not read that variable, so it must not suggest it")
}

func TestStarter(t *testing.T) {
	t.Parallel()
	url, stop, err := throwaway.Starter(throwaway.WithLogf(t.Logf))(ctxT(t, 2*time.Minute))
	require.NoError(t, err, "a throwaway server needs PostgreSQL's server binaries (apt-get install postgresql) or a Docker engine")
	var once sync.Once
	closeOnce := func() (err error) {
		once.Do(func() { err = stop() })
		return err
	}
	t.Cleanup(func() { assert.NoError(t, closeOnce()) })

	conn, err := tryConnect(t, url)
	require.NoError(t, err)
	dir := runDir(t, conn)
	_ = conn.Close(context.Background())

	require.NoError(t, closeOnce())
	requireDown(t, url)
	assert.NoDirExists(t, dir)
}

func TestStarterFailsAsStartDoes(t *testing.T) {
	t.Setenv(throwaway.EnvBinDir, t.TempDir())
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(t.TempDir(), "no-docker.sock"))
	url, stop, err := throwaway.Starter()(ctxT(t, time.Minute))
	assert.ErrorIs(t, err, throwaway.ErrNoBackend)
	assert.Empty(t, url)
	assert.Nil(t, stop)
}

func TestWithLogfNamesThePackage(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		lines []string
	)
	start(t, throwaway.WithLogf(func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, format)
		t.Logf(format, args...)
	}))
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, lines, "the chosen backend is logged")
	for _, l := range lines {
		assert.True(t, strings.HasPrefix(l, "throwaway: "), "%q", l)
	}
}
