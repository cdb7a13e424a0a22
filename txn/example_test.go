package txn_test

import (
	"context"
	"log"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sprockets/sprocketspg/txn"
)

// Run a serializable transfer whose statements may each take at most two
// seconds, run again up to three times on a serialization failure or a
// deadlock.
func ExampleRun() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://localhost/bank")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		// Runs again on a retry: it keeps no state outside the database.
		if _, err := tx.Exec(ctx, "update accounts set balance = balance - $1 where id = $2", 100, 1); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "update accounts set balance = balance + $1 where id = $2", 100, 2)
		return err
	},
		txn.Isolation(pgx.Serializable),
		txn.Timeout(2*time.Second),
		txn.Retries(3),
		txn.MetricName("transfer"),
	)
	if err != nil {
		log.Printf("transfer: %v", err)
	}
}
