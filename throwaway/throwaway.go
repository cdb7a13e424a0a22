// Package throwaway starts a PostgreSQL server that lives only as long as
// the process that started it, for development and tests: a service's
// `main` run on a laptop with nothing configured, a demo, dev tooling, an
// integration test. It is never meant for production: the server keeps
// nothing.
//
//	srv, err := throwaway.Start(ctx)
//	if err != nil {
//		return err // says how to get PostgreSQL's server binaries
//	}
//	defer srv.Close() // stops the server and removes every file of it
//	url := srv.URL()  // postgres://postgres@127.0.0.1:NNNN/postgres?sslmode=disable
//
// Start uses, first that works:
//
//  1. local server binaries (initdb and postgres) from $PG_BIN,
//     `pg_config --bindir` or the newest /usr/lib/postgresql/*/bin, run as a
//     child process (BackendLocal);
//  2. a container, when a Docker engine answers (BackendDocker).
//
// It always starts a server of its own. (The SPROCKETSPG_TEST_POSTGRES_URL
// variable, which points sprocketspg's test helpers at an existing server,
// is not consulted.)
//
// What to expect of the server:
//
//   - It listens on 127.0.0.1 on a free port and lets the superuser
//     postgres in without a password; URL names its postgres database.
//   - A local server keeps its data on tmpfs (/dev/shm) when it can, else
//     in the temporary directory, and runs without durability: fsync,
//     synchronous_commit and full_page_writes are off, so a crash of the
//     machine loses everything, and that is fine because Close deletes it
//     anyway.
//   - PostgreSQL refuses to run as root, so when the process is root the
//     local server runs as the user nobody.
//   - It dies with the process: on Linux the kernel kills a local server
//     when the process that started it dies, even by SIGKILL, and the next
//     Start removes the files such a server left behind (and the containers
//     of dead processes on the same host).
//   - Close stops it and removes everything it stored: its run directory
//     (data, socket, log), or its container and volumes.
//
// For an fx application, sprocketspg.ThrowawayWhenUnset(throwaway.Starter())
// next to sprocketspg.Module starts one only when POSTGRES_URL is unset, and
// says so loudly; nothing starts a server unless asked.
package throwaway

import (
	"context"
	"fmt"
	"strings"

	"github.com/sprockets/sprocketspg/internal/pgserver"
)

// Backend names, as returned by Server.Backend.
const (
	// BackendLocal is a server run from local binaries as a child process.
	BackendLocal = pgserver.BackendLocal
	// BackendDocker is a server run in a Docker container.
	BackendDocker = pgserver.BackendDocker
)

// EnvBinDir is the environment variable that names the directory holding
// the PostgreSQL server binaries initdb and postgres, for when they are
// neither found by pg_config nor under /usr/lib/postgresql.
const EnvBinDir = pgserver.EnvBinDir

// ErrNoBackend is matched (errors.Is) by the error Start returns when
// neither local PostgreSQL server binaries nor a Docker engine are
// available. The error's text says how to get either.
var ErrNoBackend = pgserver.ErrNoBackend

// ErrClosed is returned by Server.Stop and Server.Start after Server.Close.
var ErrClosed = pgserver.ErrClosed

// Option changes how Start starts a server.
type Option func(*options)

type options struct {
	logf        func(format string, args ...any)
	dockerImage string
}

// WithLogf sets a function that receives one line for each step worth
// knowing about: which backend was chosen and why, where the server
// listens, and problems that do not stop it, such as a cache that could
// not be written. By default nothing is logged.
func WithLogf(logf func(format string, args ...any)) Option {
	return func(o *options) { o.logf = logf }
}

// WithDockerImage sets the image, as repository:tag, that the Docker
// backend runs, such as postgres:16-alpine. The default is
// postgres:17-alpine. It does not change which local binaries are used.
func WithDockerImage(image string) Option {
	return func(o *options) { o.dockerImage = image }
}

// Server is a running throwaway PostgreSQL server. Its methods are safe
// for concurrent use.
type Server struct {
	srv *pgserver.Server
}

// Start starts a PostgreSQL server of its own, from local binaries or else
// in Docker (see the package documentation), and returns it once it accepts
// connections or ctx ends. The caller must Close it.
//
// When neither backend is available the error matches ErrNoBackend and
// says how to get one; otherwise an error says which step failed, quoting
// the end of the server's log where there is one.
func Start(ctx context.Context, opts ...Option) (*Server, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	pgOpts := []pgserver.Option{pgserver.WithOwnServer()}
	if o.logf != nil {
		logf := o.logf
		pgOpts = append(pgOpts, pgserver.WithLogf(func(format string, args ...any) {
			// pgserver is an internal name; say whose line it is.
			if rest, ok := strings.CutPrefix(format, "pgserver: "); ok {
				format = "throwaway: " + rest
			}
			logf(format, args...)
		}))
	}
	if o.dockerImage != "" {
		pgOpts = append(pgOpts, pgserver.WithDockerImage(o.dockerImage))
	}
	srv, err := pgserver.Start(ctx, pgOpts...)
	if err != nil {
		return nil, fmt.Errorf("start throwaway PostgreSQL: %w", err)
	}
	return &Server{srv: srv}, nil
}

// URL returns a connection URL for the superuser to the postgres database,
// such as postgres://postgres@127.0.0.1:5433/postgres?sslmode=disable. It
// has no password and stays the same across Stop and Start.
func (s *Server) URL() string { return s.srv.URL() }

// Backend returns how the server runs: BackendLocal or BackendDocker.
func (s *Server) Backend() string { return s.srv.Backend() }

// Stop shuts the server down and keeps its data, so that Start can bring
// it back: an outage, as a test of a client's resilience wants. Open
// connections are terminated. Stopping a stopped server does nothing. If
// ctx ends before the server has shut down cleanly it is killed and an
// error matching ctx's is returned. Stop returns ErrClosed after Close.
func (s *Server) Stop(ctx context.Context) error {
	if err := s.srv.Stop(ctx); err != nil {
		return fmt.Errorf("stop throwaway PostgreSQL: %w", err)
	}
	return nil
}

// Start starts a stopped server again, on the same address with the same
// data, and waits until it accepts connections or ctx ends. Starting a
// running server does nothing. Start returns ErrClosed after Close;
// otherwise an error says why the server did not come up, with the end of
// its log.
func (s *Server) Start(ctx context.Context) error {
	if err := s.srv.Start(ctx); err != nil {
		return fmt.Errorf("restart throwaway PostgreSQL: %w", err)
	}
	return nil
}

// Close stops the server (killing it if it has not shut down within 10
// seconds) and removes everything it stored: its run directory with data,
// socket and log, or its container. Closing a closed server does nothing
// and returns nil. It returns an error when the server or its files could
// not be removed.
func (s *Server) Close() error {
	if err := s.srv.Close(); err != nil {
		return fmt.Errorf("close throwaway PostgreSQL: %w", err)
	}
	return nil
}

// Starter returns a function that starts a server with opts and returns
// its URL and a function that closes it (Server.Close), in the shape
// sprocketspg.ThrowawayWhenUnset takes:
//
//	fx.New(
//		sprocketspg.Module,
//		sprocketspg.ThrowawayWhenUnset(throwaway.Starter()), // development only
//		...
//	)
//
// The returned function fails as Start does.
func Starter(opts ...Option) func(ctx context.Context) (url string, stop func() error, err error) {
	return func(ctx context.Context) (string, func() error, error) {
		srv, err := Start(ctx, opts...)
		if err != nil {
			return "", nil, err
		}
		return srv.URL(), srv.Close, nil
	}
}
