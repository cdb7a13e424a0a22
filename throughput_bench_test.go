package sprocketspg_test

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// Throughput under contention: throughputCallers goroutines share pools of
// throughputPoolSize connections. Each variant runs blocks of
// throughputBlock queries in turn, throughputRounds times per b.N, and
// reports its median queries per second. The variants run one at a time,
// never together, so each has the machine to itself; rotating them block
// by block spreads the machine's drift over all of them.
const (
	throughputCallers  = 32
	throughputPoolSize = 8
	throughputBlock    = 3200
	throughputRounds   = 16
)

// runBlock runs n calls of call from callers goroutines and returns how
// long they took.
func runBlock(b *testing.B, callers, n int, call func() error) time.Duration {
	var wg sync.WaitGroup
	var failed sync.Once
	per := n / callers
	began := time.Now()
	for range callers {
		wg.Go(func() {
			for range per {
				if err := call(); err != nil {
					failed.Do(func() { b.Error(err) })
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(began)
}

// rotated runs each variant's block in turn, in a new random order each
// round, and reports each one's median throughput as a custom metric.
func rotated(b *testing.B, variants map[string]func() error) {
	names := make([]string, 0, len(variants))
	for name := range variants {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names { // warm up: connections open, statements prepared
		runBlock(b, throughputCallers, throughputCallers*16, variants[name])
	}
	rates := map[string][]float64{}
	b.ResetTimer()
	for b.Loop() {
		for range throughputRounds {
			rand.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
			for _, name := range names {
				d := runBlock(b, throughputCallers, throughputBlock, variants[name])
				rates[name] = append(rates[name], float64(throughputBlock)/d.Seconds())
			}
		}
	}
	slices.Sort(names)
	for _, name := range names {
		r := rates[name]
		slices.Sort(r)
		b.ReportMetric(r[len(r)/2], name+"-qps")
	}
}

// BenchmarkThroughput compares the module's pool with a pgxpool of the
// same settings and with database/sql over that pgxpool (pgx's stdlib,
// as yokai's fxsql and go-service use it), all of throughputPoolSize
// connections under throughputCallers goroutines.
//
//	../shared/tools/bench-pinned . BenchmarkThroughput -test.benchtime 1x -test.count 5
func BenchmarkThroughput(b *testing.B) {
	url := fxtest_helpers.NewDatabase(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := testConfig(url)
	cfg.MinPoolSize, cfg.MaxPoolSize = throughputPoolSize, throughputPoolSize
	pool, err := sprocketspg.New(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	raw := rawPool(b, url, cfg)
	// database/sql over its own pgxpool, so that its connections are not
	// the raw variant's. Each of its connections holds one of the
	// pgxpool's: more open than the pgxpool has would wait in Connect for
	// ever once the idle ones hold them all.
	db := stdlib.OpenDBFromPool(rawPool(b, url, cfg))
	db.SetMaxOpenConns(throughputPoolSize)
	db.SetMaxIdleConns(throughputPoolSize)
	b.Cleanup(func() { _ = db.Close() })
	// database/sql with its defaults (no limit on open connections, two
	// idle), the way an application that sets neither gets it: callers
	// beyond the pgxpool's size wait in its Connect, and a released
	// connection beyond the two idle ones goes back to the pgxpool.
	dbDefaults := stdlib.OpenDBFromPool(rawPool(b, url, cfg))
	b.Cleanup(func() { _ = dbDefaults.Close() })
	bg := context.Background()

	b.Run("queryrow", func(b *testing.B) {
		scan := func(p *pgxpool.Pool) func() error {
			return func() error {
				var n int32
				return p.QueryRow(bg, "SELECT $1::int", int32(1)).Scan(&n)
			}
		}
		rotated(b, map[string]func() error{
			"pgxpool":     scan(raw),
			"sprocketspg": scan(pool.Pool),
			"database-sql": func() error {
				var n int32
				return db.QueryRowContext(bg, "SELECT $1::int", int32(1)).Scan(&n)
			},
			"database-sql-defaults": func() error {
				var n int32
				return dbDefaults.QueryRowContext(bg, "SELECT $1::int", int32(1)).Scan(&n)
			},
		})
	})
	b.Run("execute", func(b *testing.B) {
		const q = "SELECT $1::int AS n, 'name'::text AS label"
		rotated(b, map[string]func() error{
			"pgx-rowtomap":          func() error { _, err := rawToMaps(bg, raw, q, 1); return err },
			"sprocketspg":           func() error { _, err := pool.Execute(bg, q, 1); return err },
			"database-sql":          func() error { _, err := sqlToMaps(bg, db, q, 1); return err },
			"database-sql-defaults": func() error { _, err := sqlToMaps(bg, dbDefaults, q, 1); return err },
		})
	})
}

// sqlToMaps is what Execute does, written against database/sql.
func sqlToMaps(ctx context.Context, db *sql.DB, query string, args ...any) ([]map[string]any, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var out []map[string]any
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		m := make(map[string]any, len(cols))
		for i, c := range cols {
			m[c] = vals[i]
		}
		out = append(out, m)
	}
	return out, rows.Err()
}
