package pgserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// initdbArgs initialise a cluster for tests: no passwords, no fsync, a fixed
// encoding and locale so that results do not depend on the machine, and
// 1 MB WAL segments so that the cluster, and copying it, stays small.
var initdbArgs = []string{
	"-A", "trust",
	"--no-sync",
	"-E", "UTF8",
	"--locale=C",
	"-U", "postgres",
	"--no-instructions",
	"--wal-segsize=1",
}

// serverSettings trade durability for speed, which a throwaway server can
// afford, and leave room for many parallel tests. Dynamic shared memory
// lives in the data directory rather than in /dev/shm, where a killed
// server would leave it behind.
var serverSettings = []string{
	"dynamic_shared_memory_type=mmap",
	"fsync=off",
	"synchronous_commit=off",
	"full_page_writes=off",
	"listen_addresses=127.0.0.1",
	"max_connections=200",
	"shared_buffers=32MB",
	"jit=off",
}

// stopTimeout bounds a clean shutdown during Close before the server is
// killed.
const stopTimeout = 10 * time.Second

// errPortInUse reports that another process took the port between
// freePort and the server binding it.
var errPortInUse = errors.New("port already in use")

// localServer is a server run from local binaries as a child process.
type localServer struct {
	binDir  string
	user    runUser
	dir     string
	dataDir string
	sockDir string
	logPath string
	port    int
	logf    func(string, ...any)
	// settings are added to serverSettings for this server alone.
	settings []string

	// proc is nil while the server is stopped.
	proc *process
}

func startLocal(ctx context.Context, cfg *config, binDir string) (_ *localServer, err error) {
	u := serverUser()
	dir, err := cfg.runDir(u)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	l := &localServer{
		binDir:  binDir,
		user:    u,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		sockDir: filepath.Join(dir, "sock"),
		logPath: filepath.Join(dir, "postgres.log"),
		logf:    cfg.logf,
	}
	if err := os.Mkdir(l.sockDir, 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := u.chown(l.sockDir); err != nil {
		return nil, err
	}
	if err := l.prepareData(ctx, cfg); err != nil {
		return nil, err
	}
	if cfg.tls != nil {
		if err := l.installTLS(cfg.tls); err != nil {
			return nil, err
		}
	}
	if err := l.launchOnFreePort(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// launchOnFreePort picks a free port and launches the server on it. The
// port is free when freePort returns but anyone may take it before the
// server binds it, so a lost race is retried with another port.
func (l *localServer) launchOnFreePort(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		l.port = port
		err = l.launch(ctx)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errPortInUse) || attempt == 3 {
			return err
		}
	}
}

func (l *localServer) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", l.port)
}

// prepareData fills the data directory with an initialised cluster, copied
// from the cache when one is there (much faster than initdb), else made by
// initdb and then stored in the cache for next time.
func (l *localServer) prepareData(ctx context.Context, cfg *config) error {
	version, err := serverVersion(ctx, l.binDir)
	if err != nil {
		return err
	}
	root := cfg.cacheDir
	if root == "" {
		root = defaultCacheRoot()
	}
	key := cacheKey(version, l.user)
	cached := filepath.Join(root, key)
	if !cfg.noCache && isCluster(cached) {
		if err := copyTree(cached, l.dataDir, l.user); err != nil {
			return fmt.Errorf("copy cached cluster %s to %s: %w", cached, l.dataDir, err)
		}
		return nil
	}
	if err := l.initdb(ctx); err != nil {
		return err
	}
	if !isCluster(cached) {
		if err := storeCluster(l.dataDir, root, key); err != nil {
			l.logf("pgserver: cache initialised cluster: %v", err)
		}
	}
	return nil
}

func (l *localServer) initdb(ctx context.Context) error {
	if err := os.Mkdir(l.dataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	if err := l.user.chown(l.dataDir); err != nil {
		return err
	}
	var out bytes.Buffer
	cmd := exec.Command(filepath.Join(l.binDir, "initdb"), append([]string{"-D", l.dataDir}, initdbArgs...)...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Env = childEnv()
	cmd.Dir = l.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: l.user.cred}
	p, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("run initdb in %s: %w", l.dataDir, err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("run initdb in %s: %w", l.dataDir, ctx.Err())
	}
	if p.err != nil {
		return fmt.Errorf("run initdb in %s: %w: %s", l.dataDir, p.err, strings.TrimSpace(out.String()))
	}
	return nil
}

// launch starts postgres on l.port and waits until it accepts connections.
func (l *localServer) launch(ctx context.Context) error {
	logFile, err := os.OpenFile(l.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	// Errors quote only what this launch logged.
	var logStart int64
	if fi, err := logFile.Stat(); err == nil {
		logStart = fi.Size()
	}
	args := []string{"-D", l.dataDir, "-k", l.sockDir, "-p", strconv.Itoa(l.port)}
	for _, s := range append(slices.Clip(serverSettings), l.settings...) {
		args = append(args, "-c", s)
	}
	cmd := exec.Command(filepath.Join(l.binDir, "postgres"), args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = childEnv()
	cmd.Dir = l.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: l.user.cred}
	p, err := startProcess(cmd)
	// The child holds its own descriptor for the log.
	_ = logFile.Close()
	if err != nil {
		return fmt.Errorf("start postgres on port %d: %w", l.port, err)
	}
	if err := waitReady(ctx, l.url(), p.done); err != nil {
		_ = cmd.Process.Kill()
		<-p.done
		tail := l.logTail(logStart)
		if strings.Contains(tail, "could not bind") || strings.Contains(tail, "could not create any TCP/IP sockets") {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		return fmt.Errorf("start postgres on port %d in %s: %w; server log:\n%s", l.port, l.dir, err, tail)
	}
	l.proc = p
	return nil
}

// logTail returns the last lines the server logged after offset from.
func (l *localServer) logTail(from int64) string {
	const max = 4096
	f, err := os.Open(l.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", l.logPath, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", l.logPath, err)
	}
	if fi.Size()-from > max {
		from = fi.Size() - max
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", l.logPath, err)
	}
	b, _ := io.ReadAll(f)
	if len(b) == 0 {
		return "(empty)"
	}
	return strings.TrimRight(string(b), "\n")
}

func (l *localServer) stop(ctx context.Context) error {
	p := l.proc
	if p == nil {
		return nil
	}
	l.proc = nil
	// SIGINT is a fast shutdown: sessions are ended and the data is kept
	// consistent, so the next start needs no recovery.
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil && !p.exited() {
		return fmt.Errorf("stop postgres on port %d: %w", l.port, err)
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("stop postgres on port %d: killed: %w", l.port, ctx.Err())
	}
}

func (l *localServer) start(ctx context.Context) error {
	if l.proc != nil {
		if !l.proc.exited() {
			return nil
		}
		l.proc = nil
	}
	return l.launch(ctx)
}

func (l *localServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	stopErr := l.stop(ctx)
	if err := os.RemoveAll(l.dir); err != nil {
		return fmt.Errorf("remove %s: %w", l.dir, err)
	}
	if errors.Is(stopErr, context.DeadlineExceeded) {
		// Killed after the timeout; the files are gone all the same.
		return nil
	}
	return stopErr
}

// childEnv is the environment of initdb and postgres: libpq and locale
// variables of the caller would change how they behave, and English
// messages are what logTail's callers look for.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PG") || strings.HasPrefix(name, "LC_") || name == "LANG" || name == "LANGUAGE" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

// freePort returns a loopback TCP port that nobody listened on a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		return 0, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
	}
	return port, nil
}

// serverVersion returns what `postgres --version` prints, which postgres
// answers even when run as root.
func serverVersion(ctx context.Context, binDir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	bin := filepath.Join(binDir, "postgres")
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("run %s --version: %w", bin, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// cacheKey names the cached cluster: a cluster only fits the server
// version that made it, and the options and user it was made with.
func cacheKey(version string, u runUser) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d:%d\x00%s", version, u.uid(), u.gid(), strings.Join(initdbArgs, " "))
	return "cluster-" + hex.EncodeToString(h.Sum(nil))[:16]
}

// defaultCacheRoot is where initialised clusters are kept between runs.
func defaultCacheRoot() string {
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "sprocketspg", "pgserver")
	}
	return filepath.Join(os.TempDir(), "sprocketspg-pgserver-cache-"+strconv.Itoa(os.Geteuid()))
}

// isCluster reports whether dir holds an initialised cluster.
func isCluster(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "PG_VERSION"))
	return err == nil
}

// buildDirPrefix starts the names of half-built cache entries, followed by
// the PID of the process building them.
const buildDirPrefix = ".build-"

// storeCluster copies the freshly initialised dataDir into the cache as
// root/key. The copy is made under a private name and renamed into place,
// so a reader never sees half a cluster and when several processes race
// the first rename wins and the others discard their copy.
func storeCluster(dataDir, root, key string) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("create cache directory %s: %w", root, err)
	}
	removeStale(root, buildDirPrefix, func(string, ...any) {})
	tmp, err := os.MkdirTemp(root, buildDirPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return fmt.Errorf("create cache entry in %s: %w", root, err)
	}
	defer os.RemoveAll(tmp)
	staged := filepath.Join(tmp, "data")
	if err := copyTree(dataDir, staged, runUser{}); err != nil {
		return fmt.Errorf("copy %s to cache: %w", dataDir, err)
	}
	if err := os.Rename(staged, filepath.Join(root, key)); err != nil && !isCluster(filepath.Join(root, key)) {
		return fmt.Errorf("rename cache entry to %s: %w", filepath.Join(root, key), err)
	}
	return nil
}
