package main

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/migrate"
)

// migrationFiles holds the service's schema migrations, which
// migrate.Migrations applies at start.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrations are migrationFiles's migrations folder, as goose reads it.
var migrations = func() fs.FS {
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		panic(err) // the folder is embedded above
	}
	return sub
}()

// defaultApplication names the service in /status when $SERVICE is unset.
const defaultApplication = "sprocketspg-example-service"

// appOptions wires the service: the database module, its migrations, the
// routes and the HTTP server. url is the server to use, application the
// name /status reports ("" for the default).
func appOptions(logger *zap.Logger, url string, s settings, application string) fx.Option {
	if application == "" {
		application = defaultApplication
	}
	return fx.Options(
		fx.Supply(logger, s),
		// fx's event log is noise for a newcomer, and every failure it
		// would log is also returned by Start or Stop, which run reports.
		fx.NopLogger,
		fx.StopTimeout(stopTimeout),
		sprocketspg.Module,
		// The URL comes from run, which may have started a server of its
		// own; the rest of Config still comes from POSTGRES_*.
		fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
			c.URL = url
			return c
		}),
		sprocketspg.ProvideHealthOptions(
			health.WithApplication(application),
			health.WithDrainDelay(s.shutdownDelay),
		),
		// Applied in the pool's start, before readiness opens and before
		// the server's hook listens: the schema exists before the first
		// request can arrive. Instances started together apply them once.
		migrate.Migrations(migrations),
		metricsModule,
		fx.Provide(newMux),
		fx.Invoke(serveHTTP),
	)
}

// serveHTTP adds the hooks of the HTTP server. They are appended after the
// pool's and the health checker's, so on stop they run first: readiness
// fails, requests in flight finish, and only then does the pool close.
func serveHTTP(lc fx.Lifecycle, mux *http.ServeMux, checker *health.Checker, s settings,
	logger *zap.Logger, shutdowner fx.Shutdowner,
) {
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          zap.NewStdLog(logger.Named("http")),
	}
	served := make(chan struct{})
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			// Listening here rather than in the goroutine makes a port in
			// use fail the start.
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)))
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			addr := ln.Addr().String()
			logger.Info("listening on http://"+addr, zap.String("addr", addr))
			go func() {
				defer close(served)
				if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
					logger.Error("http server failed", zap.Error(err))
					_ = shutdowner.Shutdown(fx.ExitCode(1))
				}
			}()
			return nil
		},
		OnStop: func(ctx context.Context) error {
			// This hook was appended last, so it runs first on stop:
			// Drain makes /readyz answer 503 for the shutdown delay while
			// the listener still accepts, then requests in flight finish,
			// and only then do the checker and the pool stop.
			if err := checker.Drain(ctx); err != nil {
				return err
			}
			err := srv.Shutdown(ctx)
			<-served
			if err != nil {
				return fmt.Errorf("drain http requests: %w", err)
			}
			return nil
		},
	})
}
