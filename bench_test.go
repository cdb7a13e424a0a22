package sprocketspg_test

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// benchPools returns a sprocketspg Pool and a raw pgxpool on the same fresh
// database with the same size, so the two are measured side by side.
func benchPools(b *testing.B) (*sprocketspg.Pool, *pgxpool.Pool) {
	b.Helper()
	url := fxtest_helpers.NewDatabase(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := testConfig(url)
	cfg.MinPoolSize, cfg.MaxPoolSize = 4, 4
	pool, err := sprocketspg.New(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	pc.MinConns, pc.MaxConns = 4, 4
	raw, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(raw.Close)
	if err := raw.Ping(ctx); err != nil {
		b.Fatal(err)
	}
	return pool, raw
}

// rawToMaps is what Execute does, written against pgx alone: the fair
// baseline for the map-shaped result.
func rawToMaps(ctx context.Context, p *pgxpool.Pool, sql string, args ...any) ([]map[string]any, error) {
	rows, err := p.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToMap)
}

func BenchmarkSelectOneRow(b *testing.B) {
	pool, raw := benchPools(b)
	ctx := context.Background()
	const q = "SELECT $1::int AS n, 'name'::text AS label"

	b.Run("pgx-queryrow-scan", func(b *testing.B) {
		b.ReportAllocs()
		var n int32
		var label string
		for i := 0; i < b.N; i++ {
			if err := raw.QueryRow(ctx, q, 1).Scan(&n, &label); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pgx-rowtomap", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := rawToMaps(ctx, raw, q, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sprocketspg-execute", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := pool.Execute(ctx, q, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkSelect100Rows(b *testing.B) {
	pool, raw := benchPools(b)
	ctx := context.Background()
	const q = "SELECT i AS n, 'row ' || i AS label FROM generate_series(1, $1::int) AS i"

	b.Run("pgx-rowtomap", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := rawToMaps(ctx, raw, q, 100); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sprocketspg-execute", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := pool.Execute(ctx, q, 100); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkInsert(b *testing.B) {
	pool, raw := benchPools(b)
	ctx := context.Background()
	if _, err := raw.Exec(ctx, "CREATE TABLE bench (id bigserial PRIMARY KEY, v text)"); err != nil {
		b.Fatal(err)
	}
	const q = "INSERT INTO bench (v) VALUES ($1)"

	b.Run("pgx-exec", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := raw.Exec(ctx, q, "x"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sprocketspg-execute", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := pool.Execute(ctx, q, "x"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkObservers measures what observation costs a query: Execute with
// no observer (the default debug log, disabled here), with one observer,
// and with the statement log tracer on (to a discarding logger), beside
// raw pgx doing the same work.
func BenchmarkObservers(b *testing.B) {
	url := fxtest_helpers.NewDatabase(b)
	ctx := context.Background()
	const q = "SELECT $1::int AS n"
	open := func(b *testing.B, change func(*sprocketspg.Config), opts ...sprocketspg.Option) *sprocketspg.Pool {
		cfg := testConfig(url)
		cfg.MinPoolSize, cfg.MaxPoolSize = 1, 1
		if change != nil {
			change(&cfg)
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		pool, err := sprocketspg.New(sctx, cfg, opts...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(pool.Close)
		return pool
	}
	run := func(b *testing.B, pool *sprocketspg.Pool) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := pool.Execute(ctx, q, i); err != nil {
				b.Fatal(err)
			}
		}
	}

	b.Run("pgx-rowtomap", func(b *testing.B) {
		pool := open(b, nil)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := rawToMaps(ctx, pool.Pool, q, i); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("no-observer", func(b *testing.B) {
		run(b, open(b, nil))
	})
	b.Run("one-observer", func(b *testing.B) {
		var n atomic.Int64
		run(b, open(b, nil, sprocketspg.WithObserver(sprocketspg.ObserverFunc(func(sprocketspg.QueryEvent) { n.Add(1) }))))
	})
	b.Run("log-queries", func(b *testing.B) {
		// An info-level logger that writes nowhere: the cost of building
		// each entry, not of the sink.
		logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
			zapcore.AddSync(io.Discard), zap.InfoLevel))
		run(b, open(b, func(c *sprocketspg.Config) { c.LogQueries = true }, sprocketspg.WithLogger(logger)))
	})
}
