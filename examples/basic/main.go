// Command basic shows sprocketspg in an fx application: it connects through
// sprocketspg.Module, runs a few queries the way a service would, and
// exits.
//
// With POSTGRES_URL unset it starts a throwaway PostgreSQL first
// (sprocketspg.ThrowawayWhenUnset with package throwaway, logged at warn
// level), so that `go run ./examples/basic` works on a machine with nothing
// configured but PostgreSQL's server binaries installed, or Docker. The
// server and its data are removed when the program ends.
//
// A setting that cannot work, such as POSTGRES_MAX_POOL_SIZE=abc, ends it
// with one line on stderr that names the variable, and exit status 1.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.uber.org/dig"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/throwaway"
)

func main() {
	os.Exit(realMain(os.Stderr))
}

// realMain runs the example, logging to stderr, and reports a failure on
// w, one line per problem; it returns the exit status.
func realMain(w io.Writer) int {
	logger, err := newLogger()
	if err != nil {
		fmt.Fprintln(w, "basic: create logger:", err)
		return 1
	}
	err = run(logger)
	_ = logger.Sync()
	if err != nil {
		// One line per problem: several bad settings are reported
		// together, one to a line.
		for _, line := range strings.Split(rootCause(err).Error(), "\n") {
			fmt.Fprintln(w, "basic:", line)
		}
		return 1
	}
	return 0
}

// newLogger returns zap's development logger without its stack traces,
// which would bury a warning or an error in lines about this program's
// own call stack.
func newLogger() (*zap.Logger, error) {
	cfg := zap.NewDevelopmentConfig()
	cfg.DisableStacktrace = true
	return cfg.Build()
}

func run(logger *zap.Logger) error {
	var db *sprocketspg.Pool
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	app := fx.New(
		fx.Supply(logger),
		// fx's event log is noise here, and every failure it would log is
		// also returned by New, Start or Stop, which main reports.
		fx.NopLogger,
		sprocketspg.Module,
		// Development only: with POSTGRES_URL unset, a throwaway server
		// for this run, removed again when the application stops.
		sprocketspg.ThrowawayWhenUnset(throwaway.Starter(throwaway.WithLogf(func(format string, args ...any) {
			logger.Debug(fmt.Sprintf(format, args...))
		}))),
		fx.Populate(&db),
	)
	if err := app.Err(); err != nil {
		return err
	}
	if err := app.Start(ctx); err != nil {
		return err
	}
	queryErr := queries(ctx, logger, db)
	stopErr := app.Stop(ctx)
	return errors.Join(queryErr, stopErr)
}

// rootCause returns what a constructor, such as sprocketspg.LoadConfig,
// returned, without the account fx's dependency injection adds of every
// constructor it was building when that one failed.
func rootCause(err error) error {
	return dig.RootCause(err)
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
