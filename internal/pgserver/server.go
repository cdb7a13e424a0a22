package pgserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sprockets/sprocketspg/internal/redact"
)

// EnvURL is the environment variable that names an existing server to use
// instead of starting one. Its value is a connection URL for a superuser (or
// a role allowed to create databases).
const EnvURL = "SPROCKETSPG_TEST_POSTGRES_URL"

// EnvBinDir is the environment variable that names a directory holding the
// PostgreSQL server binaries initdb and postgres.
const EnvBinDir = "PG_BIN"

// Backend names, as returned by Server.Backend.
const (
	// BackendURL is an existing server named by SPROCKETSPG_TEST_POSTGRES_URL.
	BackendURL = "url"
	// BackendLocal is a server run from local binaries as a child process.
	BackendLocal = "local"
	// BackendDocker is a server run in a Docker container.
	BackendDocker = "docker"
)

// ErrNotControlled is returned by Server.Stop and Server.Start for a server
// that pgserver did not start and so cannot stop or start.
var ErrNotControlled = errors.New("server from " + EnvURL + " cannot be stopped or started by pgserver")

// ErrClosed is returned by Server.Start and Server.Stop after Server.Close.
var ErrClosed = errors.New("server is closed")

// ErrNoBackend is matched (errors.Is) by the error of Start when there is
// no way to provide a server: no existing server is named, no local server
// binaries are found and no Docker engine answers. The error says how to
// provide one, and why each way failed.
var ErrNoBackend = errors.New("no PostgreSQL server available")

// dockerPingTimeout bounds how long a missing or hung Docker engine can
// delay the choice of backend.
const dockerPingTimeout = 2 * time.Second

// Option changes how Start starts a server.
type Option func(*config)

type config struct {
	logf        func(format string, args ...any)
	dockerImage string

	// noCache makes the local backend run initdb even when a cached cluster
	// exists; benchmarks use it to time the cold path.
	noCache bool
	// cacheDir overrides where initialised clusters are cached.
	cacheDir string
	// baseDirs overrides where run directories are created.
	baseDirs []string
	// ignoreEnvURL makes Start start a server of its own even when
	// SPROCKETSPG_TEST_POSTGRES_URL names one.
	ignoreEnvURL bool
	// tls turns TLS on in a local server (WithTLS); nil leaves it off.
	tls *serverTLS
}

// WithLogf sets a function that receives one line for each step worth
// knowing about: which backend was chosen and why, where the server
// listens, and non-fatal problems such as a cache that could not be
// written. By default nothing is logged.
func WithLogf(logf func(format string, args ...any)) Option {
	return func(c *config) { c.logf = logf }
}

// WithDockerImage sets the image, as repository:tag, that the Docker backend
// runs. The default is postgres:17-alpine.
func WithDockerImage(image string) Option {
	return func(c *config) { c.dockerImage = image }
}

// WithOwnServer makes Start start a server of its own, from local binaries
// or Docker, even when SPROCKETSPG_TEST_POSTGRES_URL names an existing one:
// for tests that need a second server at an address of its own, or one
// they can stop.
func WithOwnServer() Option {
	return func(c *config) { c.ignoreEnvURL = true }
}

func newConfig(opts []Option) *config {
	c := &config{
		logf:        func(string, ...any) {},
		dockerImage: "postgres:17-alpine",
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// backend is what each way of providing a server implements.
type backend interface {
	url() string
	stop(ctx context.Context) error
	start(ctx context.Context) error
	close() error
}

// Server is a running PostgreSQL server. Its methods are safe for
// concurrent use.
type Server struct {
	kind string

	mu     sync.Mutex
	b      backend
	closed bool
}

// URL returns a connection URL for the superuser to the postgres database,
// such as postgres://postgres@127.0.0.1:5433/postgres?sslmode=disable. For
// BackendURL it is the value of SPROCKETSPG_TEST_POSTGRES_URL. It stays the
// same across Stop and Start.
func (s *Server) URL() string { return s.b.url() }

// Backend returns how the server is provided: BackendURL, BackendLocal or
// BackendDocker.
func (s *Server) Backend() string { return s.kind }

// Stop shuts the server down and keeps its data, so that Start can bring it
// back, as a test of an outage wants. Open connections are terminated.
// Stopping a stopped server does nothing. If ctx ends before the server has
// shut down cleanly it is killed and ctx's error is returned. Stop returns
// ErrNotControlled for BackendURL and ErrClosed after Close.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return s.b.stop(ctx)
}

// Start starts a stopped server again on the same port with the same data
// and waits until it accepts connections or ctx ends. Starting a running
// server does nothing. Start returns ErrNotControlled for BackendURL and
// ErrClosed after Close; otherwise an error says why the server did not
// come up and includes the end of its log.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return s.b.start(ctx)
}

// Close stops the server and deletes everything it stored. For BackendURL
// it does nothing. Closing a closed server does nothing.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.b.close()
}

// Start provides a PostgreSQL server using the first backend that works
// (see the package documentation) and returns it once it accepts
// connections. The caller must Close it.
//
// With no backend available the error says how to provide one: set
// SPROCKETSPG_TEST_POSTGRES_URL, install the PostgreSQL server binaries, or
// run a Docker engine.
func Start(ctx context.Context, opts ...Option) (*Server, error) {
	cfg := newConfig(opts)
	envURL := os.Getenv(EnvURL)
	if cfg.ignoreEnvURL {
		envURL = ""
	}
	ch, err := choose(ctx, envURL, !cfg.ignoreEnvURL, findBinDir, pingDocker)
	if err != nil {
		return nil, err
	}
	for _, r := range ch.skipped {
		cfg.logf("pgserver: %s", r)
	}
	if cfg.tls != nil && ch.kind != BackendLocal {
		how := fmt.Sprintf("install PostgreSQL's server binaries (e.g. apt-get install postgresql) "+
			"or set %s to the directory holding initdb and postgres", EnvBinDir)
		if ch.kind == BackendURL {
			how = "pass WithOwnServer, since the server of " + EnvURL + " is used as it is"
		}
		return nil, fmt.Errorf("start a PostgreSQL server with TLS: only a server started from local "+
			"binaries can be given certificates, and the %s backend was chosen: %s", ch.kind, how)
	}
	var b backend
	switch ch.kind {
	case BackendURL:
		b, err = startURL(ctx, ch.url)
	case BackendLocal:
		b, err = startLocal(ctx, cfg, ch.binDir)
	case BackendDocker:
		b, err = startDocker(ctx, cfg)
	}
	if err != nil {
		return nil, err
	}
	cfg.logf("pgserver: using %s backend at %s", ch.kind, redact.ConnString(b.url()))
	return &Server{kind: ch.kind, b: b}, nil
}

// choice is the backend picked by choose and what it needs.
type choice struct {
	kind   string
	url    string
	binDir string
	// skipped says why each earlier backend was not used.
	skipped []string
}

// choose picks a backend from what the probes report, in the order of the
// package documentation. It is kept free of I/O of its own so that the
// order can be tested without PostgreSQL or Docker.
//
// suggestEnvURL says whether the error for no backend at all suggests
// SPROCKETSPG_TEST_POSTGRES_URL, which only a caller that reads it can use.
func choose(ctx context.Context, envURL string, suggestEnvURL bool, findBin func() (string, error), dockerUp func(context.Context) error) (choice, error) {
	if envURL != "" {
		return choice{kind: BackendURL, url: envURL}, nil
	}
	var skipped []string
	dir, binErr := findBin()
	if binErr == nil {
		return choice{kind: BackendLocal, binDir: dir}, nil
	}
	skipped = append(skipped, fmt.Sprintf("no local server binaries: %v", binErr))

	pctx, cancel := context.WithTimeout(ctx, dockerPingTimeout)
	dockerErr := dockerUp(pctx)
	cancel()
	if dockerErr == nil {
		return choice{kind: BackendDocker, skipped: skipped}, nil
	}
	existing := ""
	if suggestEnvURL {
		existing = fmt.Sprintf("set %s to the URL of a server where databases may be created "+
			"(e.g. postgres://postgres@localhost:5432/postgres?sslmode=disable), or ", EnvURL)
	}
	return choice{}, fmt.Errorf("%w: %s"+
		"install PostgreSQL's server binaries (Debian/Ubuntu: apt-get install postgresql; "+
		"Fedora: dnf install postgresql-server; macOS: brew install postgresql), "+
		"or set %s to the directory holding initdb and postgres, "+
		"or start a Docker engine; local binaries: %w; docker: %w",
		ErrNoBackend, existing, EnvBinDir, binErr, dockerErr)
}

// findBinDir looks for the directory holding initdb and postgres.
func findBinDir() (string, error) {
	return findBinDirIn(os.Getenv(EnvBinDir), pgConfigBinDir, "/usr/lib/postgresql")
}

func findBinDirIn(envDir string, pgConfig func() (string, error), libRoot string) (string, error) {
	if envDir != "" {
		if err := hasServerBinaries(envDir); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBinDir, envDir, err)
		}
		return envDir, nil
	}
	var reasons []string
	if dir, err := pgConfig(); err != nil {
		reasons = append(reasons, err.Error())
	} else if err := hasServerBinaries(dir); err != nil {
		reasons = append(reasons, fmt.Sprintf("pg_config --bindir %s: %v", dir, err))
	} else {
		return dir, nil
	}
	dirs, _ := filepath.Glob(filepath.Join(libRoot, "*", "bin"))
	sortByVersionDesc(dirs)
	for _, dir := range dirs {
		if hasServerBinaries(dir) == nil {
			return dir, nil
		}
	}
	reasons = append(reasons, fmt.Sprintf("no %s/*/bin with initdb and postgres", libRoot))
	return "", errors.New(strings.Join(reasons, "; "))
}

func pgConfigBinDir() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "pg_config", "--bindir").Output()
	if err != nil {
		return "", fmt.Errorf("run pg_config --bindir: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func hasServerBinaries(dir string) error {
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return fmt.Errorf("find %s: %w", name, err)
		}
		if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("find %s: %s is not executable", name, filepath.Join(dir, name))
		}
	}
	return nil
}

// sortByVersionDesc sorts .../<version>/bin paths newest first, comparing
// versions numerically so that 10 sorts after 9.6.
func sortByVersionDesc(dirs []string) {
	version := func(p string) []int {
		var v []int
		for _, f := range strings.Split(filepath.Base(filepath.Dir(p)), ".") {
			n, err := strconv.Atoi(f)
			if err != nil {
				n = -1
			}
			v = append(v, n)
		}
		return v
	}
	sort.SliceStable(dirs, func(i, j int) bool {
		a, b := version(dirs[i]), version(dirs[j])
		for k := 0; k < len(a) && k < len(b); k++ {
			if a[k] != b[k] {
				return a[k] > b[k]
			}
		}
		return len(a) > len(b)
	})
}

// urlServer is a server pgserver does not manage.
type urlServer struct{ u string }

func startURL(ctx context.Context, u string) (*urlServer, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, u)
	if err != nil {
		return nil, redact.Error(fmt.Errorf("connect to %s=%s: %w", EnvURL, redact.ConnString(u), err), redact.Password(u))
	}
	_ = conn.Close(ctx)
	return &urlServer{u: u}, nil
}

func (s *urlServer) url() string                 { return s.u }
func (s *urlServer) stop(context.Context) error  { return ErrNotControlled }
func (s *urlServer) start(context.Context) error { return ErrNotControlled }
func (s *urlServer) close() error                { return nil }

// waitReady connects to u until a connection succeeds, ctx ends or exited
// reports that the server process is gone.
func waitReady(ctx context.Context, u string, exited <-chan struct{}) error {
	// An attempt can hang on a port held by someone else, so the server's
	// exit must end it too.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go func() {
		select {
		case <-exited:
			wcancel()
		case <-wctx.Done():
		}
	}()
	delay := 2 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(wctx, 2*time.Second)
		conn, err := pgx.Connect(actx, u)
		cancel()
		if err == nil {
			_ = conn.Close(ctx)
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for server at %s: %w (last error: %v)", u, ctx.Err(), err)
		case <-exited:
			t.Stop()
			return fmt.Errorf("wait for server at %s: server process exited", u)
		case <-t.C:
		}
		if delay < 50*time.Millisecond {
			delay *= 2
		}
	}
}
