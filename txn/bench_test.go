package txn_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/txn"
)

// BenchmarkTx compares a short transaction (one SELECT) run by plain pgx,
// by Run with a Timeout, by pgx with the same one-message BEGIN, and by
// hand with a SET LOCAL of its own.
func BenchmarkTx(b *testing.B) {
	pool := newPool(b, fxtest_helpers.NewDatabase(b), func(cfg *pgxpool.Config) {
		cfg.MaxConns = 1
	})
	ctx := ctxT(b)
	selectOne := func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "select 1")
		return err
	}

	b.Run("plain_pgx", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := pgx.BeginFunc(ctx, pool, selectOne); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("txn_timeout", func(b *testing.B) {
		b.ReportAllocs()
		fn := func(_ context.Context, tx pgx.Tx) error { return selectOne(tx) }
		for b.Loop() {
			// Options built in the loop, as a caller writes them.
			err := txn.Run(ctx, pool, fn, txn.Timeout(5*time.Second))
			if err != nil {
				b.Fatal(err)
			}
		}
	})

	// What pgx itself costs for the same fused BEGIN: the difference to
	// txn_timeout is Run's own, the difference to plain_pgx the server's
	// second statement.
	b.Run("pgx_begin_query", func(b *testing.B) {
		b.ReportAllocs()
		opts := pgx.TxOptions{BeginQuery: "begin; set local statement_timeout = 5000"}
		for b.Loop() {
			if err := pgx.BeginTxFunc(ctx, pool, opts, selectOne); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("naive_set_local", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tx, err := pool.Begin(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "set local statement_timeout = 5000"); err != nil {
				b.Fatal(err)
			}
			if err := selectOne(tx); err != nil {
				b.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
