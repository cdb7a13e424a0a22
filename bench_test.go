package sprocketspg_test

import (
	"context"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/fx"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/txn"
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
	raw := rawPool(b, url, cfg)
	return pool, raw
}

// rawPool returns a pgxpool on url with the server settings a Pool with cfg
// gives its connections: statement_timeout in the startup message and a
// cancel request when a caller's context ends. What is left between the
// two is the module's own code and hooks.
func rawPool(b *testing.B, url string, cfg sprocketspg.Config) *pgxpool.Pool {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	pc.MinConns, pc.MaxConns = int32(cfg.MinPoolSize), int32(cfg.MaxPoolSize)
	pc.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(cfg.QueryTimeout.Milliseconds(), 10)
	pc.ConnConfig.BuildContextWatcherHandler = func(conn *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: conn, DeadlineDelay: cfg.ConnectionTimeout}
	}
	raw, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(raw.Close)
	if err := raw.Ping(ctx); err != nil {
		b.Fatal(err)
	}
	return raw
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

// BenchmarkQueryRow runs the same pgx call, QueryRow(...).Scan, on a raw
// pgxpool and on the pool embedded in a sprocketspg Pool, which carries
// the module's hooks (statement_timeout, cancel-request handling, the
// response deadline tracer), one caller at a time and from parallel
// callers.
func BenchmarkQueryRow(b *testing.B) {
	pool, raw := benchPools(b)
	ctx := context.Background()
	const q = "SELECT $1::int"
	queryRow := func(b *testing.B, p *pgxpool.Pool) {
		b.ReportAllocs()
		var n int32
		for i := 0; b.Loop(); i++ {
			if err := p.QueryRow(ctx, q, int32(i)).Scan(&n); err != nil {
				b.Fatal(err)
			}
		}
	}
	parallel := func(b *testing.B, p *pgxpool.Pool) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var n int32
			for pb.Next() {
				if err := p.QueryRow(ctx, q, int32(1)).Scan(&n); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.Run("pgxpool", func(b *testing.B) { queryRow(b, raw) })
	b.Run("sprocketspg", func(b *testing.B) { queryRow(b, pool.Pool) })
	b.Run("pgxpool-parallel", func(b *testing.B) { parallel(b, raw) })
	b.Run("sprocketspg-parallel", func(b *testing.B) { parallel(b, pool.Pool) })
}

// BenchmarkTransaction compares a one-statement transaction through
// pgx.BeginFunc with Pool.Transaction, without options and with a
// statement timeout.
func BenchmarkTransaction(b *testing.B) {
	pool, raw := benchPools(b)
	ctx := context.Background()
	b.Run("pgx-beginfunc", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			err := pgx.BeginFunc(ctx, raw, func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, "SELECT 1")
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	run := func(b *testing.B, opts ...txn.Option) {
		b.ReportAllocs()
		for b.Loop() {
			err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
				_, err := tx.Exec(ctx, "SELECT 1")
				return err
			}, opts...)
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("sprocketspg", func(b *testing.B) { run(b) })
	b.Run("sprocketspg-timeout", func(b *testing.B) { run(b, txn.Timeout(5*time.Second)) })
}

// BenchmarkAppStart measures an fx application with Module from Start to
// ready (connected, MinPoolSize connections open, pinged) and back.
func BenchmarkAppStart(b *testing.B) {
	url := fxtest_helpers.NewDatabase(b)
	cfg := testConfig(url)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		app := fx.New(sprocketspg.Module, fx.Replace(cfg), fx.NopLogger)
		if err := app.Start(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := app.Stop(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// interleaved runs each variant once per iteration, in turn, and reports
// each one's median and mean time per call as custom metrics. On a shared
// or virtual machine, whose speed drifts over seconds, the plain
// sub-benchmarks above measure the variants at different moments;
// alternating call by call measures them under the same conditions, which
// is what a comparison within a few percent needs.
func interleaved(b *testing.B, variants map[string]func() error) {
	names := make([]string, 0, len(variants))
	for name := range variants {
		names = append(names, name)
	}
	sort.Strings(names)
	samples := make(map[string][]time.Duration, len(names))
	for _, name := range names { // warm up caches and connections
		if err := variants[name](); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	order := make([]int, len(names))
	for i := range order {
		order[i] = i
	}
	for b.Loop() {
		// A new random order each round: a fixed or rotating one would
		// always put the same variant after the same other, and the
		// variant after one on another pool pays for waking that pool's
		// server process.
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, k := range order {
			name := names[k]
			began := time.Now()
			if err := variants[name](); err != nil {
				b.Fatal(err)
			}
			samples[name] = append(samples[name], time.Since(began))
		}
	}
	for _, name := range names {
		s := samples[name]
		slices.Sort(s)
		var total time.Duration
		for _, d := range s {
			total += d
		}
		b.ReportMetric(float64(s[len(s)/2].Nanoseconds()), name+"-p50-ns")
		b.ReportMetric(float64(total.Nanoseconds())/float64(len(s)), name+"-mean-ns")
	}
}

// BenchmarkInterleaved compares the module with the raw pgx code doing the
// same work, call by call (see interleaved). Each sub-benchmark compares
// exactly two variants, one per pool: each pool's connection is served by
// its own server process, and a call that follows a call on the other
// pool pays for switching to its process (cold caches, most of all with
// both processes pinned to one CPU). With two variants in a random order
// both pay that equally often; with three or more, the pool with fewer
// variants pays it more often, by several percent.
//
//	../shared/tools/bench-pinned . BenchmarkInterleaved -test.benchtime 10000x -test.count 5
func BenchmarkInterleaved(b *testing.B) {
	pool, raw := benchPools(b)
	ctx := context.Background()
	b.Run("queryrow", func(b *testing.B) {
		var n int32
		interleaved(b, map[string]func() error{
			"pgxpool":     func() error { return raw.QueryRow(ctx, "SELECT $1::int", int32(1)).Scan(&n) },
			"sprocketspg": func() error { return pool.QueryRow(ctx, "SELECT $1::int", int32(1)).Scan(&n) },
		})
	})
	b.Run("execute", func(b *testing.B) {
		const q = "SELECT $1::int AS n, 'name'::text AS label"
		interleaved(b, map[string]func() error{
			"pgx-rowtomap": func() error { _, err := rawToMaps(ctx, raw, q, 1); return err },
			"sprocketspg":  func() error { _, err := pool.Execute(ctx, q, 1); return err },
		})
	})
	stmt := func(tx pgx.Tx) error { _, err := tx.Exec(ctx, "SELECT 1"); return err }
	b.Run("transaction", func(b *testing.B) {
		interleaved(b, map[string]func() error{
			"pgx-beginfunc": func() error { return pgx.BeginFunc(ctx, raw, stmt) },
			"sprocketspg": func() error {
				return pool.Transaction(ctx, func(tx *sprocketspg.Tx) error { return stmt(tx) })
			},
		})
	})
	b.Run("transaction-timeout", func(b *testing.B) {
		interleaved(b, map[string]func() error{
			// What txn.Timeout(5s) sends, written against pgx alone.
			"pgx-begintxfunc": func() error {
				return pgx.BeginTxFunc(ctx, raw, pgx.TxOptions{BeginQuery: "begin; set local statement_timeout = 5000"}, stmt)
			},
			"sprocketspg": func() error {
				return pool.Transaction(ctx, func(tx *sprocketspg.Tx) error { return stmt(tx) }, txn.Timeout(5*time.Second))
			},
		})
	})
	// Both on the raw pool: what txn.Run itself costs.
	b.Run("txn-run", func(b *testing.B) {
		interleaved(b, map[string]func() error{
			"pgx-beginfunc": func() error { return pgx.BeginFunc(ctx, raw, stmt) },
			"txn-run": func() error {
				return txn.Run(ctx, raw, func(_ context.Context, tx pgx.Tx) error { return stmt(tx) })
			},
		})
	})
}
