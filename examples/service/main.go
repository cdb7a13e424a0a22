// Command service is an HTTP service built on sprocketspg and Uber fx. It
// answers the endpoints of the Python sprockets-postgres test application
// (/callproc, /count, /execute, /multi-row, /no-row, /row-count-no-rows,
// /transaction, /timeout-error, /unhandled-exception) plus /status,
// /livez, /readyz and /metrics, so that each feature of the library can be
// tried with curl.
//
// Run it from the repository root:
//
//	go run ./examples/service
//
// With POSTGRES_URL unset it starts a throwaway local PostgreSQL first and
// removes it again on exit, so it works on a machine with nothing
// configured but PostgreSQL's server binaries installed (or Docker). With
// POSTGRES_URL set it uses that server; the other POSTGRES_* variables of
// the configuration table apply as usual. The tables it needs are created
// by its migrations (migrations/*.sql, applied with goose at start; see
// POSTGRES_MIGRATE and the other variables of package migrate).
//
// It listens on 127.0.0.1 only, since it has no authentication, on the port
// given by -port or $PORT; the default 0 picks a free one. The address is
// logged as "listening on http://127.0.0.1:NNNN".
//
// SIGINT or SIGTERM stops it: readiness fails first (after -shutdown-delay
// or $SHUTDOWN_DELAY, in-flight requests are drained), then the pool
// closes, then the throwaway server, if any, is removed; all of it within
// 15 seconds. It exits 0 after a clean stop.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/fx"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/internal/redact"
	"github.com/sprockets/sprocketspg/throwaway"
)

// stopTimeout bounds the whole of stopping: the shutdown delay, draining
// HTTP requests and closing the pool.
const stopTimeout = 15 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Getenv)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "service:", err)
		os.Exit(1)
	}
}

// settings are the service's own settings, from flags and the environment.
type settings struct {
	port          int
	shutdownDelay time.Duration
}

// parseSettings reads the flags in args, which default to $PORT and
// $SHUTDOWN_DELAY.
func parseSettings(args []string, getenv func(string) string) (settings, error) {
	var s settings
	port, delay := 0, time.Duration(0)
	if v := getenv("PORT"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p < 0 || p > 65535 {
			return s, fmt.Errorf("PORT=%q: want a port number, 0 for any free port", v)
		}
		port = p
	}
	if v := getenv(sprocketspg.EnvShutdownDelay); v != "" {
		// Seconds or a Go duration, as sprocketspg.Module reads it.
		d, err := time.ParseDuration(v)
		if secs, ferr := strconv.ParseFloat(v, 64); ferr == nil && !math.IsNaN(secs) && !math.IsInf(secs, 0) {
			d, err = time.Duration(secs*float64(time.Second)), nil
		}
		if err != nil || d < 0 {
			return s, fmt.Errorf("SHUTDOWN_DELAY=%q: want seconds (5) or a duration such as 5s", v)
		}
		delay = d
	}
	fs := flag.NewFlagSet("service", flag.ContinueOnError)
	fs.IntVar(&s.port, "port", port, "TCP port to listen on, on 127.0.0.1; 0 picks a free one (env PORT)")
	fs.DurationVar(&s.shutdownDelay, "shutdown-delay", delay,
		"how long readiness fails before the listener closes on stop, so that load balancers move away first (env SHUTDOWN_DELAY)")
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	if s.shutdownDelay >= stopTimeout {
		return s, fmt.Errorf("shutdown delay %s must be shorter than the stop timeout %s", s.shutdownDelay, stopTimeout)
	}
	return s, nil
}

// newLogger logs human-readable lines to w, which is where a newcomer
// running the service looks.
func newLogger(w io.Writer) *zap.Logger {
	enc := zap.NewDevelopmentEncoderConfig()
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(zapcore.AddSync(w)), zap.InfoLevel)
	return zap.New(core)
}

// run runs the service until ctx ends, then stops it. It reads POSTGRES_URL,
// PORT, SHUTDOWN_DELAY and SERVICE through getenv; the other POSTGRES_*
// settings are read from the process environment by sprocketspg.Module. It
// returns nil after a clean stop, also when ctx ends during start-up.
func run(ctx context.Context, args []string, stdout io.Writer, getenv func(string) string) (err error) {
	s, err := parseSettings(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	logger := newLogger(stdout)
	defer func() { _ = logger.Sync() }()

	url := getenv(sprocketspg.EnvURL)
	if url == "" {
		server, err := startThrowaway(ctx, logger)
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted while starting: nothing to stop
			}
			return fmt.Errorf("%s is unset and no throwaway PostgreSQL could be started: %w", sprocketspg.EnvURL, err)
		}
		// Deferred so that it runs after fx has stopped: the pool must
		// close before its server goes away.
		defer func() {
			if cerr := server.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("remove throwaway postgres: %w", cerr))
				return
			}
			logger.Info("throwaway PostgreSQL stopped and its files removed")
		}()
		url = server.URL()
	}

	app := fx.New(appOptions(logger, url, s, getenv("SERVICE")))
	if err := app.Err(); err != nil {
		return err
	}
	startCtx, cancel := context.WithTimeout(ctx, app.StartTimeout())
	defer cancel()
	if err := app.Start(startCtx); err != nil {
		if ctx.Err() != nil {
			return nil // interrupted while starting; Start has undone what it did
		}
		return err
	}

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("stopping", zap.NamedError("cause", context.Cause(ctx)))
	case sig := <-app.Wait():
		// fx relays SIGINT and SIGTERM here too, whichever of the two
		// sees them first; and a part of the application may ask to
		// stop, as the HTTP server does when it fails.
		logger.Info("stopping", zap.Stringer("cause", sig))
		if sig.ExitCode != 0 {
			runErr = fmt.Errorf("stopped with exit code %d", sig.ExitCode)
		}
	}
	stopCtx, cancelStop := context.WithTimeout(context.Background(), stopTimeout)
	defer cancelStop()
	if err := app.Stop(stopCtx); err != nil {
		return errors.Join(runErr, err)
	}
	logger.Info("stopped")
	return runErr
}

// startThrowaway starts a PostgreSQL server of the service's own and logs
// where it is, without a password (it has none, but a URL is never logged
// unredacted). The server is always the service's own, never one named
// for sprocketspg's tests: the service creates tables, and Close removes
// them with the server.
func startThrowaway(ctx context.Context, logger *zap.Logger) (*throwaway.Server, error) {
	logger.Info(sprocketspg.EnvURL + " is unset: starting a throwaway PostgreSQL for this run")
	server, err := throwaway.Start(ctx, throwaway.WithLogf(func(format string, args ...any) {
		logger.Debug(fmt.Sprintf(format, args...))
	}))
	if err != nil {
		return nil, err
	}
	fields := []zap.Field{
		zap.String("backend", server.Backend()),
		zap.String("url", redact.ConnString(server.URL())),
	}
	if server.Backend() == throwaway.BackendLocal {
		// The directory holding the server's data, socket and log, which
		// Close removes.
		if dir, err := runDir(ctx, server.URL()); err == nil {
			fields = append(fields, zap.String("dir", dir))
		}
	}
	logger.Info("throwaway PostgreSQL started; it is stopped and removed on exit", fields...)
	return server, nil
}

// runDir asks a local server where its data directory is and returns the
// directory above it, where the throwaway package keeps everything of that
// server.
func runDir(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	var dataDir string
	if err := conn.QueryRow(ctx, "SHOW data_directory").Scan(&dataDir); err != nil {
		return "", err
	}
	return filepath.Dir(dataDir), nil
}
