package throwaway_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sprockets/sprocketspg/throwaway"
)

// A development tool that needs a PostgreSQL for a moment: start one, use
// it, and remove it with everything it stored.
func ExampleStart() {
	run := func(ctx context.Context) (err error) {
		srv, err := throwaway.Start(ctx, throwaway.WithLogf(log.Printf))
		if err != nil {
			return err // says how to get PostgreSQL's server binaries or Docker
		}
		defer func() { err = errors.Join(err, srv.Close()) }()

		conn, err := pgx.Connect(ctx, srv.URL())
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		var version string
		if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
			return err
		}
		fmt.Println(srv.Backend(), version)
		return nil
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx); err != nil {
		log.Print(err)
	}
}
