package sprocketspg_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sprockets/sprocketspg"
)

// BenchmarkBatch compares n one-row statements sent as one ExecuteBatch
// with the same n sent as n Execute calls, for n of 2, 10 and 100. Each
// b.N is one set of n statements.
//
//	../shared/tools/bench-pinned . BenchmarkBatch -test.count 5
func BenchmarkBatch(b *testing.B) {
	pool, raw := benchPools(b)
	ctx := context.Background()
	for _, n := range []int{2, 10, 100} {
		stmts := make([]sprocketspg.Statement, n)
		for i := range stmts {
			stmts[i] = sprocketspg.Statement{SQL: "SELECT $1::int AS n", Args: []any{i}}
		}
		b.Run("n="+strconv.Itoa(n)+"/sequential", func(b *testing.B) {
			for b.Loop() {
				for _, s := range stmts {
					if _, err := pool.Execute(ctx, s.SQL, s.Args...); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		b.Run("n="+strconv.Itoa(n)+"/batch", func(b *testing.B) {
			for b.Loop() {
				if _, err := pool.ExecuteBatch(ctx, stmts); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("n="+strconv.Itoa(n)+"/raw-pgx-batch", func(b *testing.B) {
			for b.Loop() {
				batch := &pgx.Batch{}
				for _, s := range stmts {
					batch.Queue(s.SQL, s.Args...)
				}
				br := raw.SendBatch(ctx, batch)
				for range stmts {
					rows, err := br.Query()
					if err != nil {
						b.Fatal(err)
					}
					if _, err := pgx.CollectRows(rows, pgx.RowToMap); err != nil {
						b.Fatal(err)
					}
				}
				if err := br.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("n="+strconv.Itoa(n)+"/batch-atomic", func(b *testing.B) {
			for b.Loop() {
				if _, err := pool.ExecuteBatch(ctx, stmts, sprocketspg.Atomic()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
