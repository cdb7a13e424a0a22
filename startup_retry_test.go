package sprocketspg_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/internal/dnstest"
)

// retryLogMessage is what start logs, at debug level, before each retry.
const retryLogMessage = "postgres not reachable yet, retrying"

// retryTimeout is the ConnectionTimeout of the tests of failures that
// start keeps retrying.
const retryTimeout = 1500 * time.Millisecond

// retryStart runs sprocketspg.New on url with ConnectionTimeout timeout
// and an observed debug logger, and returns the pool (nil on error, else
// closed when the test ends), the error, how long New took and the logs.
func retryStart(t *testing.T, url string, timeout time.Duration, opts ...sprocketspg.Option) (*sprocketspg.Pool, error, time.Duration, *observer.ObservedLogs) {
	t.Helper()
	cfg := testConfig(url)
	cfg.ConnectionTimeout = timeout
	core, logs := observer.New(zapcore.DebugLevel)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	began := time.Now()
	pool, err := sprocketspg.New(ctx, cfg, append([]sprocketspg.Option{sprocketspg.WithLogger(zap.New(core))}, opts...)...)
	elapsed := time.Since(began)
	if pool != nil {
		t.Cleanup(pool.Close)
	}
	t.Logf("New returned after %s: %v (%d retries logged)", elapsed.Round(time.Millisecond), err,
		logs.FilterMessage(retryLogMessage).Len())
	return pool, err, elapsed, logs
}

// assertRetriedUntilTimeout checks a start that kept retrying a server
// that never answered until the connection timeout ended it.
func assertRetriedUntilTimeout(t *testing.T, err error, elapsed time.Duration, logs *observer.ObservedLogs) {
	t.Helper()
	require.Error(t, err)
	assert.GreaterOrEqual(t, elapsed, retryTimeout-100*time.Millisecond,
		"start keeps trying for the whole ConnectionTimeout")
	assert.Less(t, elapsed, retryTimeout+1500*time.Millisecond, "and not much longer")
	assert.Greater(t, logs.FilterMessage(retryLogMessage).Len(), 1, "more than one attempt is retried")
	assert.ErrorIs(t, err, sprocketspg.ErrConnectTimeout)
	assert.NotErrorIs(t, err, sprocketspg.ErrConnectionRejected)
	assert.True(t, sprocketspg.IsConnectionError(err), "IsConnectionError(%v)", err)
	assert.NotContains(t, err.Error(), "secret")
}

func TestStartRetriesDNSFailure(t *testing.T) {
	const host = "sprocketspg-no-such-host.invalid"
	// The test needs a resolver that answers NXDOMAIN quickly, whatever
	// the machine's: one that times out would make a single attempt last
	// the whole timeout. A DNS server on loopback, asked by Go's own
	// resolver, answers NXDOMAIN for every name it does not hold.
	dns := dnstest.Start(t)
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dns.Addr())
	}}
	_, lookupErr := resolver.LookupHost(context.Background(), host)
	require.Error(t, lookupErr, "the test's DNS server does not know the host")

	_, err, elapsed, logs := retryStart(t, "postgres://app:secret@"+host+":5432/app?sslmode=disable", retryTimeout,
		sprocketspg.WithPoolConfig(func(pc *pgxpool.Config) { pc.ConnConfig.LookupFunc = resolver.LookupHost }))
	assert.Positive(t, dns.Queries(host), "the lookups went to the test's DNS server")
	assertRetriedUntilTimeout(t, err, elapsed, logs)
	var dnsErr *net.DNSError
	require.ErrorAs(t, err, &dnsErr, "the last attempt's DNS error is kept")
	assert.True(t, dnsErr.IsNotFound, "%v", dnsErr)
	assert.Contains(t, err.Error(), host)
	for _, e := range logs.FilterMessage(retryLogMessage).All() {
		assert.Contains(t, e.ContextMap()["error"], "no such host", "each retried attempt failed on DNS")
	}
}

// connSet is a test proxy's listener and the connections it accepted or
// dialled, closed together.
type connSet struct {
	l      net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	conns  []net.Conn
}

func (s *connSet) addr() string { return s.l.Addr().String() }

// add keeps c to close with the set, or closes it when the set is closed.
func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = c.Close()
		return false
	}
	s.conns = append(s.conns, c)
	return true
}

// close closes the listener and every connection, and waits for the
// proxy's goroutines.
func (s *connSet) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	_ = s.l.Close()
	for _, c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// flakyListener accepts TCP connections on 127.0.0.1 and ends each at
// once, with a reset (reset) or a plain close, until healAt; connections
// accepted after healAt (when set) are forwarded to target.
type flakyListener struct {
	connSet
	reset    bool
	target   string
	healAt   time.Time
	accepted atomic.Int32
	dropped  atomic.Int32
}

func newFlakyListener(t *testing.T, reset bool, target string, healAfter time.Duration) *flakyListener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := &flakyListener{connSet: connSet{l: l}, reset: reset, target: target}
	if target != "" {
		f.healAt = time.Now().Add(healAfter)
	}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *flakyListener) serve() {
	defer f.wg.Done()
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		f.accepted.Add(1)
		if f.healAt.IsZero() || time.Now().Before(f.healAt) {
			f.dropped.Add(1)
			if f.reset {
				_ = c.(*net.TCPConn).SetLinger(0) // close sends RST
			}
			_ = c.Close()
			continue
		}
		server, err := net.Dial("tcp", f.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !f.add(c) || !f.add(server) {
			_ = server.Close()
			return
		}
		f.wg.Add(2)
		go f.pipe(server, c)
		go f.pipe(c, server)
	}
}

func (f *flakyListener) pipe(dst, src net.Conn) {
	defer f.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
}

func TestStartRetriesConnectionsTheServerDrops(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reset bool
	}{{"reset", true}, {"closed", false}} {
		t.Run(tc.name, func(t *testing.T) {
			l := newFlakyListener(t, tc.reset, "", 0)
			_, err, elapsed, logs := retryStart(t, "postgres://app:secret@"+l.addr()+"/app?sslmode=disable", retryTimeout)
			assertRetriedUntilTimeout(t, err, elapsed, logs)
			assert.Greater(t, l.accepted.Load(), int32(1), "the server was tried more than once")
			assert.Contains(t, err.Error(), l.addr())
		})
	}
}

func TestStartRetriesUntilDroppingStops(t *testing.T) {
	dbURL := fxtest_helpers.NewDatabase(t)
	l := newFlakyListener(t, true, hostPortOf(t, dbURL), 500*time.Millisecond)
	pool, err, elapsed, logs := retryStart(t, withHost(t, dbURL, l.addr()), 20*time.Second)
	require.NoError(t, err, "the server answers once it stops resetting connections")
	assert.GreaterOrEqual(t, elapsed, 450*time.Millisecond, "start waited for the server")
	assert.Less(t, elapsed, 10*time.Second)
	assert.Positive(t, l.dropped.Load(), "connections were reset")
	assert.GreaterOrEqual(t, logs.FilterMessage(retryLogMessage).Len(), 1, "the reset attempts were retried")
	assert.True(t, pool.IsConnected())
	_, err = pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err)
}

// notAcceptingServer is a real PostgreSQL that answers every connection
// with 57P03 (cannot_connect_now): a standby started with hot_standby off,
// which stays in recovery and takes no connections until it is promoted.
type notAcceptingServer struct {
	url     string // superuser, database postgres
	dataDir string
	binDir  string
	cred    *syscall.Credential
	log     string
	cmd     *exec.Cmd
	done    chan struct{}
}

// startNotAcceptingServer turns a server of the test's own into a standby
// with hot_standby=off, run by the test itself from the same binaries and
// data directory, and returns once it answers 57P03.
func startNotAcceptingServer(t *testing.T) *notAcceptingServer {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("finds the server's binaries through /proc")
	}
	srv := fxtest_helpers.StartServer(t)
	if srv.Backend() != "local" {
		t.Skipf("needs a server from local binaries, not %s", srv.Backend())
	}
	ctx := ctxT(t)
	admin := adminConn(t, srv.AdminURL())
	var dataDir string
	var backendPID int
	require.NoError(t, admin.QueryRow(ctx, "SELECT current_setting('data_directory'), pg_backend_pid()").Scan(&dataDir, &backendPID))
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", backendPID))
	require.NoError(t, err, "find the server's binary")
	require.NoError(t, admin.Close(ctx))
	require.NoError(t, srv.Stop(ctx))

	s := &notAcceptingServer{dataDir: dataDir, binDir: filepath.Dir(exe), done: make(chan struct{})}
	fi, err := os.Stat(dataDir)
	require.NoError(t, err)
	st := fi.Sys().(*syscall.Stat_t)
	if os.Geteuid() == 0 && st.Uid != 0 {
		s.cred = &syscall.Credential{Uid: st.Uid, Gid: st.Gid, Groups: []uint32{}}
	}
	signal := filepath.Join(dataDir, "standby.signal")
	require.NoError(t, os.WriteFile(signal, nil, 0o600))
	if s.cred != nil {
		require.NoError(t, os.Chown(signal, int(st.Uid), int(st.Gid)))
	}

	port := retryFreePort(t)
	s.url = withHost(t, srv.AdminURL(), "127.0.0.1:"+port)
	s.log = filepath.Join(t.TempDir(), "postgres.log")
	logFile, err := os.Create(s.log)
	require.NoError(t, err)
	s.cmd = exec.Command(filepath.Join(s.binDir, "postgres"), "-D", dataDir, "-p", port,
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
		"-c", "hot_standby=off",
		"-c", "fsync=off", "-c", "dynamic_shared_memory_type=mmap", "-c", "shared_buffers=32MB")
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	s.cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	setPdeathsig(s.cmd.SysProcAttr)
	require.NoError(t, s.cmd.Start())
	_ = logFile.Close()
	go func() {
		_ = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		_ = s.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(s.log)
			t.Logf("the standby's log:\n%s", b)
		}
	})

	// It is up once it answers at all, and it must answer 57P03.
	deadline := time.Now().Add(30 * time.Second)
	for {
		actx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgconn.Connect(actx, s.url)
		cancel()
		if err == nil {
			_ = conn.Close(context.Background())
			t.Fatal("the standby accepts connections: hot_standby=off did not take")
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			require.Equal(t, "57P03", pgErr.Code, "%v", err)
			return s
		}
		select {
		case <-s.done:
			b, _ := os.ReadFile(s.log)
			t.Fatalf("the standby exited: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby does not answer: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// promote ends the standby's recovery, after which it accepts connections.
func (s *notAcceptingServer) promote() error {
	cmd := exec.Command(filepath.Join(s.binDir, "pg_ctl"), "promote", "-D", s.dataDir, "-w", "-t", "60")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl promote: %w: %s", err, out)
	}
	return nil
}

// setPdeathsig has the kernel kill the child when the test process dies,
// where the platform offers that (Linux), so that no server is orphaned.
func setPdeathsig(attr *syscall.SysProcAttr) {
	if f := reflect.ValueOf(attr).Elem().FieldByName("Pdeathsig"); f.IsValid() && f.CanSet() {
		f.SetInt(int64(syscall.SIGKILL))
	}
}

// retryFreePort returns a loopback TCP port that was free a moment ago.
func retryFreePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	require.NoError(t, ln.Close())
	return port
}

// cannotConnectNow reports whether a logged retry was for a 57P03.
func cannotConnectNow(e observer.LoggedEntry) bool {
	msg, _ := e.ContextMap()["error"].(string)
	return strings.Contains(msg, "57P03")
}

func TestStartRetriesServerNotYetAcceptingConnections(t *testing.T) {
	s := startNotAcceptingServer(t)
	_, err, elapsed, logs := retryStart(t, s.url, retryTimeout)
	assertRetriedUntilTimeout(t, err, elapsed, logs)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr, "the server's answer is kept")
	assert.Equal(t, "57P03", pgErr.Code)
	assert.Contains(t, err.Error(), "SQLSTATE 57P03")
	for _, e := range logs.FilterMessage(retryLogMessage).All() {
		assert.True(t, cannotConnectNow(e), "each retried attempt got 57P03: %v", e.ContextMap())
	}
}

func TestStartSucceedsWhenServerBeginsAcceptingConnections(t *testing.T) {
	s := startNotAcceptingServer(t)
	promoted := make(chan error, 1)
	go func() {
		time.Sleep(500 * time.Millisecond)
		promoted <- s.promote()
	}()
	pool, err, elapsed, logs := retryStart(t, s.url, 30*time.Second)
	require.NoError(t, <-promoted)
	require.NoError(t, err, "start succeeds once the server takes connections")
	assert.GreaterOrEqual(t, elapsed, 450*time.Millisecond, "start waited for the promotion")
	retries := logs.FilterMessage(retryLogMessage).All()
	require.NotEmpty(t, retries, "the first attempts were retried")
	assert.True(t, cannotConnectNow(retries[0]), "they got 57P03: %v", retries[0].ContextMap())
	res, err := pool.Execute(ctxT(t), "SELECT pg_is_in_recovery() AS standby")
	require.NoError(t, err)
	assert.Equal(t, false, res.Row["standby"])
}
