package sprocketspg_test

// These are the package's examples on pkg.go.dev. They need a running
// PostgreSQL, so they have no Output comment: go test compiles them without
// running them. README.md's snippets are not copied here; TestREADME
// (readme_test.go) compiles the README itself.

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/discovery"
	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/txn"
)

func ExampleModule() {
	fx.New(
		fx.Provide(zap.NewProduction),
		sprocketspg.Module, // reads POSTGRES_URL and friends
		fx.Invoke(func(lc fx.Lifecycle, db *sprocketspg.Pool, logger *zap.Logger) {
			lc.Append(fx.StartHook(func(ctx context.Context) error {
				res, err := db.Execute(ctx, "SELECT now() AS now")
				logger.Info("server time", zap.Any("now", res.Row["now"]))
				return err
			}))
		}),
	).Run()
}

func ExampleNew() {
	ctx := context.Background()
	cfg, err := sprocketspg.LoadConfig()
	if err != nil {
		log.Fatal(err)
	}
	cfg.QueryTimeout = 5 * time.Second
	pool, err := sprocketspg.New(ctx, cfg,
		sprocketspg.WithLogger(zap.NewExample()),
		sprocketspg.WithPoolConfig(func(pc *pgxpool.Config) { pc.MaxConnIdleTime = time.Minute }))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
}

func ExamplePool_Execute() {
	var db *sprocketspg.Pool // from fx
	ctx := sprocketspg.WithMetricName(context.Background(), "load-team")

	res, err := db.Execute(ctx, "SELECT id, name FROM users WHERE team = $1", "core")
	if err != nil {
		log.Fatal(err)
	}
	// res.RowCount: rows returned, or rows affected by INSERT/UPDATE/DELETE
	// res.Row:      the row when exactly one came back, else nil
	// res.Rows:     every row in order; never nil (encodes as [])
	for _, row := range res.Rows {
		log.Println(row["id"], row["name"])
	}

	// Named arguments, as pgx takes them.
	_, err = db.Execute(ctx, "UPDATE users SET name = @name WHERE id = @id",
		pgx.NamedArgs{"id": 7, "name": "Ada"})
	if sprocketspg.IsUniqueViolation(err) {
		log.Println("name taken")
	}
}

func ExamplePool_Callproc() {
	var db *sprocketspg.Pool // from fx
	// SELECT * FROM "billing"."charge"($1, $2), or CALL for a procedure.
	// The name follows SQL identifier rules and cannot inject SQL.
	res, err := db.Callproc(context.Background(), "billing.charge", 42, 1999)
	if err != nil {
		log.Fatal(err)
	}
	log.Println(res.Row)
}

func ExamplePool_Transaction() {
	var db *sprocketspg.Pool // from fx
	ctx := context.Background()
	err := db.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		if _, err := tx.Execute(ctx, "INSERT INTO orders (id, total) VALUES ($1, $2)", 1, 1999); err != nil {
			return err // rolls back
		}
		_, err := tx.Callproc(ctx, "bump_order_count", 42)
		return err // nil commits
	}, txn.Timeout(2*time.Second), txn.Isolation(pgx.Serializable), txn.Retries(3))

	var retry *txn.RetryError
	if errors.As(err, &retry) {
		log.Printf("gave up after %d attempts: %v", retry.Attempts, retry.Err)
	}
}

func ExamplePool_Reader() {
	var db *sprocketspg.Pool // from fx, with POSTGRES_READ_URL set
	// The replica while it answers, else the primary.
	res, err := db.Reader().Execute(context.Background(), "SELECT count(*) AS n FROM orders")
	if err != nil {
		log.Fatal(err)
	}
	log.Println(res.Row["n"])
}

func ExampleWithResolver() {
	// postgresql+srv://app:secret@db.example.com/app looks up the SRV record
	// _db._postgresql.example.com, here through a DNS server of our own.
	cfg := sprocketspg.Config{URL: "postgresql+srv://app:secret@db.example.com/app?sslmode=verify-full"}
	resolver := discovery.NewDNSResolver(discovery.WithServer("10.0.0.2:53"))
	pool, err := sprocketspg.New(context.Background(), cfg, sprocketspg.WithResolver(resolver))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
}

func ExampleNewChecker() {
	var pool *sprocketspg.Pool // from sprocketspg.New
	checker := sprocketspg.NewChecker(pool, health.WithApplication("orders"), health.WithVersion("1.4.2"))
	mux := http.NewServeMux()
	health.Register(mux, checker) // GET /livez, /readyz, /status
	log.Fatal(http.ListenAndServe(":8080", mux))
}

func ExampleProvideHealthOptions() {
	_ = fx.Options(
		sprocketspg.Module,
		sprocketspg.ProvideHealthOptions(health.WithApplication("orders"), health.WithVersion("1.4.2")),
		fx.Provide(http.NewServeMux),
		fx.Invoke(func(mux *http.ServeMux, checker *health.Checker) {
			health.Register(mux, checker)
		}),
	)
}

func ExampleWriteProblem() {
	var db *sprocketspg.Pool // from fx
	http.HandleFunc("GET /ratio", func(w http.ResponseWriter, r *http.Request) {
		res, err := db.Execute(r.Context(), "SELECT 100 / $1::int AS ratio", r.URL.Query().Get("d"))
		if err != nil {
			// One handler's own mapping, as overriding on_postgres_error did.
			divisionByZero := func(_ context.Context, _ error, p sprocketspg.Problem) (sprocketspg.Problem, bool) {
				if p.SQLState == "22012" {
					p.Status, p.Title = http.StatusUnprocessableEntity, "Unprocessable Entity"
				}
				return p, true // false swallows the error: nothing is written
			}
			if !sprocketspg.WriteProblem(w, r, err, divisionByZero) {
				http.Error(w, "internal error", http.StatusInternalServerError) // not a database error
			}
			return
		}
		fmt.Fprintln(w, res.Row["ratio"])
	})
}

// timing is an Observer: it sees every Execute, Callproc and Transaction.
type timing struct{ logger *zap.Logger }

func (t timing) ObserveQuery(ev sprocketspg.QueryEvent) {
	t.logger.Info("query", zap.String("metric_name", ev.MetricName),
		zap.Duration("duration", ev.Duration), zap.Error(ev.Err))
}

func ExampleAsObserver() {
	_ = fx.Options(
		sprocketspg.Module,
		fx.Provide(sprocketspg.AsObserver(func(logger *zap.Logger) timing { return timing{logger} })),
	)
}
