// Command basic shows sprocketspg in an fx application: it connects through
// sprocketspg.Module, runs a few queries the way a service would, and
// exits.
//
// With POSTGRES_URL unset it starts a throwaway local PostgreSQL first, so
// that `go run ./examples/basic` works on a machine with nothing
// configured but PostgreSQL's server binaries installed.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/internal/pgserver"
)

func main() {
	logger, err := zap.NewDevelopment()
	if err != nil {
		fmt.Fprintln(os.Stderr, "basic: create logger:", err)
		os.Exit(1)
	}
	if err := run(logger); err != nil {
		logger.Error("basic example failed", zap.Error(err))
		_ = logger.Sync()
		os.Exit(1)
	}
	_ = logger.Sync()
}

func run(logger *zap.Logger) error {
	var db *sprocketspg.Pool
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	opts := []fx.Option{
		fx.Supply(logger),
		fx.WithLogger(func() fxevent.Logger {
			return &fxevent.ZapLogger{Logger: logger.Named("fx").WithOptions(zap.IncreaseLevel(zap.WarnLevel))}
		}),
		sprocketspg.Module,
		fx.Populate(&db),
	}
	if os.Getenv(sprocketspg.EnvURL) == "" {
		server, err := pgserver.Start(ctx)
		if err != nil {
			return fmt.Errorf("POSTGRES_URL is unset and no throwaway PostgreSQL could be started: %w", err)
		}
		defer func() {
			if err := server.Close(); err != nil {
				logger.Warn("remove throwaway postgres", zap.Error(err))
			}
		}()
		logger.Info("POSTGRES_URL is unset: started a throwaway PostgreSQL for this run",
			zap.String("backend", server.Backend()), zap.String("url", server.URL()))
		url := server.URL()
		opts = append(opts, fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
			c.URL = url
			return c
		}))
	}

	app := fx.New(opts...)
	if err := app.Start(ctx); err != nil {
		return err
	}
	queryErr := queries(ctx, logger, db)
	stopErr := app.Stop(ctx)
	return errors.Join(queryErr, stopErr)
}

// queries does what a small service would: create a table, write, read,
// call a function, handle a constraint violation and report status.
func queries(ctx context.Context, logger *zap.Logger, db *sprocketspg.Pool) (err error) {
	// The table is dropped again so that a run against your own server
	// leaves nothing behind.
	defer func() {
		if _, dropErr := db.Execute(ctx, "DROP TABLE IF EXISTS sprocketspg_example_visits"); dropErr != nil {
			err = errors.Join(err, dropErr)
		}
	}()
	steps := []struct {
		name string
		sql  string
		args []any
	}{
		{"create-table", `CREATE TABLE sprocketspg_example_visits (
			id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
			page text NOT NULL UNIQUE,
			seen_at timestamptz NOT NULL DEFAULT now())`, nil},
		{"insert", "INSERT INTO sprocketspg_example_visits (page) VALUES ($1), ($2)", []any{"/home", "/about"}},
		{"select", "SELECT id, page, seen_at FROM sprocketspg_example_visits ORDER BY page", nil},
	}
	for _, s := range steps {
		res, err := db.Execute(sprocketspg.WithMetricName(ctx, s.name), s.sql, s.args...)
		if err != nil {
			return err
		}
		logger.Info("query done", zap.String("metric", s.name), zap.Int64("row_count", res.RowCount), zap.Any("rows", res.Rows))
	}

	res, err := db.Callproc(sprocketspg.WithMetricName(ctx, "version"), "pg_catalog.version")
	if err != nil {
		return err
	}
	logger.Info("server version", zap.Any("version", res.Row["version"]))

	_, err = db.Execute(ctx, "INSERT INTO sprocketspg_example_visits (page) VALUES ($1)", "/home")
	if !sprocketspg.IsUniqueViolation(err) {
		return fmt.Errorf("want a unique violation for a duplicate page, got %v", err)
	}
	logger.Info("duplicate insert refused, as the original answered with 409 Conflict", zap.Error(err))

	st := db.Status(ctx)
	logger.Info("status", zap.Bool("available", st.Available), zap.Int("pool_size", st.PoolSize), zap.Int("pool_free", st.PoolFree))
	if !st.Available {
		return fmt.Errorf("postgres unavailable: %w", st.Err)
	}
	return nil
}
