package pgserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
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

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startLocalT starts a local server, skipping the discovery of Start so
// that SPROCKETSPG_TEST_POSTGRES_URL cannot divert it.
func startLocalT(t *testing.T, opts ...Option) *Server {
	t.Helper()
	dir, err := findBinDir()
	require.NoError(t, err, "these tests need local PostgreSQL server binaries")
	l, err := startLocal(testCtx(t), newConfig(opts), dir)
	require.NoError(t, err)
	s := &Server{kind: BackendLocal, b: l}
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testCtx(t), url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func TestLocalStopStart(t *testing.T) {
	s := startLocalT(t)
	ctx := testCtx(t)
	url := s.URL()
	assert.Equal(t, BackendLocal, s.Backend())
	assert.Regexp(t, `^postgres://postgres@127\.0\.0\.1:\d+/postgres\?sslmode=disable$`, url)

	conn := connect(t, url)
	_, err := conn.Exec(ctx, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('survives')")
	require.NoError(t, err)
	var user string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_user").Scan(&user))
	assert.Equal(t, "postgres", user)

	require.NoError(t, s.Stop(ctx))
	require.NoError(t, s.Stop(ctx), "stopping a stopped server")
	_, err = pgx.Connect(ctx, url)
	require.Error(t, err, "server answers after Stop")

	require.NoError(t, s.Start(ctx))
	require.NoError(t, s.Start(ctx), "starting a running server")
	assert.Equal(t, url, s.URL(), "same port after restart")
	var v string
	require.NoError(t, connect(t, url).QueryRow(ctx, "SELECT v FROM kept").Scan(&v))
	assert.Equal(t, "survives", v)
}

func TestLocalCloseRemovesEverything(t *testing.T) {
	s := startLocalT(t)
	l := s.b.(*localServer)
	pid := l.proc.cmd.Process.Pid
	require.DirExists(t, l.dataDir)

	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "second Close")
	assert.NoDirExists(t, l.dir)
	assert.False(t, processAlive(pid), "postgres still runs after Close")
	assert.ErrorIs(t, s.Start(testCtx(t)), ErrClosed)
	assert.ErrorIs(t, s.Stop(testCtx(t)), ErrClosed)
}

func TestLocalRunsAsServerUser(t *testing.T) {
	s := startLocalT(t)
	l := s.b.(*localServer)
	fi, err := os.Stat(l.dataDir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	st := fi.Sys().(*syscall.Stat_t)
	assert.Equal(t, l.user.uid(), int(st.Uid), "data directory owner")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", l.proc.cmd.Process.Pid))
	require.NoError(t, err)
	assert.Regexp(t, fmt.Sprintf(`(?m)^Uid:\s+%d\s`, l.user.uid()), string(status))
	if os.Geteuid() == 0 {
		assert.NotEqual(t, 0, l.user.uid(), "server must not run as root")
	}
	if _, err := os.Stat("/dev/shm"); err == nil {
		assert.True(t, strings.HasPrefix(l.dir, "/dev/shm/"), "run directory %s not on tmpfs", l.dir)
	}
	assert.Contains(t, filepath.Base(l.dir), runDirPrefix+strconv.Itoa(os.Getpid())+"-")
}

func TestLocalStartFailureQuotesLog(t *testing.T) {
	s := startLocalT(t)
	ctx := testCtx(t)
	require.NoError(t, s.Stop(ctx))

	// Someone takes the port while the server is down.
	addr := strings.TrimPrefix(strings.Split(s.URL(), "/")[2], "postgres@")
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	err = s.Start(ctx)
	require.Error(t, err)
	assert.ErrorIs(t, err, errPortInUse)
	assert.Contains(t, err.Error(), "could not bind")
	assert.Contains(t, err.Error(), "server log:")
	require.NoError(t, ln.Close())

	require.NoError(t, s.Start(ctx), "start after the port is free again")
}

func TestLocalCache(t *testing.T) {
	cache := t.TempDir()
	startLocalT(t, func(c *config) { c.cacheDir = cache })
	entries, err := os.ReadDir(cache)
	require.NoError(t, err)
	require.Len(t, entries, 1, "one cached cluster, no leftovers")
	assert.True(t, strings.HasPrefix(entries[0].Name(), "cluster-"))
	assert.FileExists(t, filepath.Join(cache, entries[0].Name(), "PG_VERSION"))

	// The second server is copied from the cache and works.
	s := startLocalT(t, func(c *config) { c.cacheDir = cache })
	var one int
	require.NoError(t, connect(t, s.URL()).QueryRow(testCtx(t), "SELECT 1").Scan(&one))
	assert.Equal(t, 1, one)
}

func TestLocalDiesWithParent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, EnvURL+"=") {
			env = append(env, kv)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(env, childEnvVar+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("read from child: %v", err)
	}
	var pid int
	var dir string
	_, err = fmt.Sscanf(line, "%d %s", &pid, &dir)
	require.NoError(t, err, "child said %q", line)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	require.True(t, processAlive(pid), "postgres %d not running", pid)

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()

	assert.Eventually(t, func() bool { return !processAlive(pid) }, 5*time.Second, 10*time.Millisecond,
		"postgres %d outlived its SIGKILLed parent", pid)
}

func TestRemoveStale(t *testing.T) {
	base := t.TempDir()
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	deadPID := dead.Process.Pid

	names := map[string]bool{ // name -> kept
		runDirPrefix + strconv.Itoa(deadPID) + "-123":       false,
		runDirPrefix + strconv.Itoa(os.Getpid()) + "-456":   true,
		runDirPrefix + strconv.Itoa(os.Getppid()) + "-789":  true,
		runDirPrefix + "notapid-1":                          true,
		"unrelated-" + strconv.Itoa(deadPID) + "-1":         true,
		runDirPrefix + strconv.Itoa(deadPID) + "-file.conf": false,
	}
	for name := range names {
		require.NoError(t, os.MkdirAll(filepath.Join(base, name, "data"), 0o700))
	}
	removeStale(base, runDirPrefix, t.Logf)
	for name, kept := range names {
		_, err := os.Stat(filepath.Join(base, name))
		assert.Equal(t, kept, err == nil, name)
	}
}

func TestProcessAliveZombie(t *testing.T) {
	cmd := exec.Command("true")
	require.NoError(t, cmd.Start())
	pid := cmd.Process.Pid
	// Until it is waited for, the exited child is a zombie.
	assert.Eventually(t, func() bool { return !processAlive(pid) }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, cmd.Wait())
	assert.True(t, processAlive(os.Getpid()))
}

func TestURLBackend(t *testing.T) {
	local := startLocalT(t)
	ctx := testCtx(t)
	t.Setenv(EnvURL, local.URL())

	s, err := Start(ctx)
	require.NoError(t, err)
	assert.Equal(t, BackendURL, s.Backend())
	assert.Equal(t, local.URL(), s.URL())
	assert.ErrorIs(t, s.Stop(ctx), ErrNotControlled)
	assert.ErrorIs(t, s.Start(ctx), ErrNotControlled)
	require.NoError(t, s.Close())
	var one int
	require.NoError(t, connect(t, local.URL()).QueryRow(ctx, "SELECT 1").Scan(&one), "Close of a url backend leaves the server alone")
}

func TestURLBackendUnreachableHidesPassword(t *testing.T) {
	port, err := freePort()
	require.NoError(t, err)
	t.Setenv(EnvURL, fmt.Sprintf("postgres://u:sekrit@127.0.0.1:%d/db?sslmode=disable", port))
	_, err = Start(testCtx(t))
	require.Error(t, err)
	assert.Contains(t, err.Error(), EnvURL)
	assert.NotContains(t, err.Error(), "sekrit")
}

func TestStartLogs(t *testing.T) {
	var lines []string
	s, err := Start(testCtx(t), WithLogf(func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }))
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()
	require.NotEmpty(t, lines)
	assert.Contains(t, lines[len(lines)-1], "using "+s.Backend()+" backend at ")
}

func TestCopyTreeKeepsModes(t *testing.T) {
	src := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(src, "sub"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(src, "sub", "f"), []byte("x"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(src, "g"), []byte("yy"), 0o640))
	require.NoError(t, os.Symlink("sub/f", filepath.Join(src, "link")))
	dst := filepath.Join(t.TempDir(), "copy")
	require.NoError(t, copyTree(src, dst, runUser{}))

	for name, mode := range map[string]os.FileMode{"sub": 0o700, "sub/f": 0o600, "g": 0o640} {
		fi, err := os.Stat(filepath.Join(dst, name))
		require.NoError(t, err)
		assert.Equal(t, mode, fi.Mode().Perm(), name)
	}
	b, err := os.ReadFile(filepath.Join(dst, "link"))
	require.NoError(t, err)
	assert.Equal(t, "x", string(b))
	err = copyTree(src, dst, runUser{})
	assert.True(t, errors.Is(err, os.ErrExist), "copy onto an existing directory: %v", err)
}

func TestStoreClusterConcurrently(t *testing.T) {
	src := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(src, "PG_VERSION"), []byte("15\n"), 0o600))
	require.NoError(t, os.Mkdir(filepath.Join(src, "base"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(src, "base", "1"), make([]byte, 64<<10), 0o600))
	root := filepath.Join(t.TempDir(), "cache")

	errs := make(chan error, 8)
	for range cap(errs) {
		go func() { errs <- storeCluster(src, root, "cluster-x") }()
	}
	for range cap(errs) {
		assert.NoError(t, <-errs)
	}
	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	require.Len(t, entries, 1, "leftover build directories")
	assert.Equal(t, "cluster-x", entries[0].Name())
	assert.FileExists(t, filepath.Join(root, "cluster-x", "base", "1"))
}

func TestMakeRunDirSkipsUnreachableBase(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the server runs as the current user, who reaches any directory it made")
	}
	u := serverUser()
	private := t.TempDir() // 0700, owned by root
	require.NoError(t, os.Chmod(private, 0o700))
	reachable, err := os.MkdirTemp("", "pgserver-test-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(reachable) })
	require.NoError(t, os.Chmod(reachable, 0o755))

	if err := traversable(reachable, u); err != nil {
		t.Skipf("no directory reachable by nobody for the test: %v", err)
	}
	dir, err := makeRunDir([]string{private, reachable}, u, t.Logf)
	require.NoError(t, err)
	assert.Equal(t, reachable, filepath.Dir(dir))
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, u.uid(), int(fi.Sys().(*syscall.Stat_t).Uid))

	_, err = makeRunDir([]string{private}, u, t.Logf)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not searchable by nobody")
}
