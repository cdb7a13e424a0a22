package sprocketspg_test

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/txn"
)

// pgBouncerSchema is the database the PgBouncer tests work on.
const pgBouncerSchema = `
CREATE TABLE items (id serial PRIMARY KEY, n int NOT NULL, label text NOT NULL);
CREATE TABLE ledger (v int NOT NULL);
INSERT INTO ledger VALUES (1);`

// pgBouncerPoolSize is the pool's size in these tests, twice PgBouncer's
// default_pool_size (2) in fxtest_helpers, so that the pool's connections
// share server connections.
const pgBouncerPoolSize = 4

// bouncedDatabase creates a database on srv and starts PgBouncer in front
// of it; it returns the database's direct URL and its URL through
// PgBouncer.
func bouncedDatabase(t *testing.T, srv *fxtest_helpers.TestServer, opts ...fxtest_helpers.PgBouncerOption) (direct, bounced string) {
	t.Helper()
	direct = srv.NewDatabase(t, fxtest_helpers.WithSchema(pgBouncerSchema))
	u, err := url.Parse(direct)
	require.NoError(t, err)
	return direct, fxtest_helpers.StartPgBouncer(t, srv, strings.TrimPrefix(u.Path, "/"), opts...)
}

// bouncerPool connects a pool of pgBouncerPoolSize connections, all
// opened at start, through PgBouncer with the given query exec mode.
func bouncerPool(t *testing.T, bounced, mode string) *sprocketspg.Pool {
	t.Helper()
	return newPoolAt(t, bounced, func(c *sprocketspg.Config) {
		c.QueryExecMode = mode
		c.MinPoolSize = pgBouncerPoolSize
		c.MaxPoolSize = pgBouncerPoolSize
	})
}

// pgBouncerConfig reads PgBouncer's settings from its admin console.
func pgBouncerConfig(t *testing.T, bounced string) map[string]string {
	t.Helper()
	u, err := url.Parse(bounced)
	require.NoError(t, err)
	u.Path = "/pgbouncer"
	// The console speaks only the simple query protocol.
	rows, err := adminConn(t, u.String()).PgConn().Exec(ctxT(t), "SHOW CONFIG").ReadAll()
	require.NoError(t, err)
	cfg := map[string]string{}
	for _, r := range rows[0].Rows {
		cfg[string(r[0])] = string(r[1])
	}
	return cfg
}

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// TestPgBouncerTransactionPooling runs the pool through PgBouncer in
// transaction pooling mode with the two query exec modes that do not keep
// prepared statements on the server connection.
//
// No test here ends a query through the caller's deadline: the pool then
// sends a cancel request and closes its connection as soon as the query
// has failed, and PgBouncer 1.18 (Debian 12's) can crash when a cancel
// connection closes before PgBouncer has finished with it ("bad client
// state: 0", pgbouncer/pgbouncer#801, fixed in 1.19.1). Seen here about
// one run in two; the server-side timeouts tested below send no cancel
// request.
func TestPgBouncerTransactionPooling(t *testing.T) {
	srv := fxtest_helpers.StartServer(t)
	for _, mode := range []string{"exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			direct, bounced := bouncedDatabase(t, srv)
			pool := bouncerPool(t, bounced, mode)
			cfg := pgBouncerConfig(t, bounced)
			require.Equal(t, "transaction", cfg["pool_mode"])
			require.Equal(t, "2", cfg["default_pool_size"])

			t.Run("execute with args on shared server connections", func(t *testing.T) {
				testPgBouncerExecute(t, pool, direct)
			})
			t.Run("transaction timeout applies", func(t *testing.T) {
				testPgBouncerTxTimeout(t, pool)
			})
			t.Run("transaction retries a serialization conflict", func(t *testing.T) {
				testPgBouncerRetries(t, pool)
			})
		})
	}
}

func testPgBouncerExecute(t *testing.T, pool *sprocketspg.Pool, direct string) {
	ctx := ctxT(t)
	require.Equal(t, int32(pgBouncerPoolSize), pool.Stat().TotalConns(), "every client connection is open")
	const workers, each = 4, 25
	var (
		mu   sync.Mutex
		pids = map[int32]bool{}
		wg   sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				n := w*each + i
				label := "item-" + strconv.Itoa(n)
				res, err := pool.Execute(ctx,
					"INSERT INTO items (n, label) VALUES ($1, $2) RETURNING n, label, pg_backend_pid() AS pid", n, label)
				if !assert.NoError(t, err) {
					return
				}
				assert.Equal(t, int32(n), res.Row["n"])
				assert.Equal(t, label, res.Row["label"])
				mu.Lock()
				pids[res.Row["pid"].(int32)] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res, err := pool.Execute(ctx, "SELECT count(*) AS n, count(DISTINCT n) AS distinct_n FROM items")
	require.NoError(t, err)
	assert.Equal(t, int64(workers*each), res.Row["n"])
	assert.Equal(t, int64(workers*each), res.Row["distinct_n"])
	// Four client connections, at most two server connections.
	assert.LessOrEqual(t, len(pids), 2, "server backends seen: %v", pids)
	var onServer int
	require.NoError(t, adminConn(t, direct).QueryRow(ctx,
		"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()").Scan(&onServer))
	assert.LessOrEqual(t, onServer, 2, "server connections of the database")
}

func testPgBouncerTxTimeout(t *testing.T, pool *sprocketspg.Pool) {
	ctx := ctxT(t)
	const timeout = 500 * time.Millisecond
	err := pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.Execute(ctx, "SELECT pg_sleep(0.05)")
		return err
	}, txn.Timeout(timeout))
	require.NoError(t, err, "a statement within the timeout")

	began := time.Now()
	err = pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.Execute(ctx, "SELECT pg_sleep(5)")
		return err
	}, txn.Timeout(timeout))
	require.Error(t, err)
	assert.True(t, sprocketspg.IsQueryTimeout(err), "want a query timeout, got %v", err)
	assert.Equal(t, "57014", sqlState(err), "cancelled by the server's statement_timeout")
	assert.Less(t, time.Since(began), 3*time.Second)

	// The timeout was SET LOCAL: it ended with its transaction, so the
	// server connections PgBouncer hands to others do not keep it.
	var wg sync.WaitGroup
	for range pgBouncerPoolSize {
		wg.Go(func() {
			_, err := pool.Execute(ctx, "SELECT pg_sleep(0.7)")
			assert.NoError(t, err, "a statement longer than an earlier transaction's timeout")
		})
	}
	wg.Wait()
}

func testPgBouncerRetries(t *testing.T, pool *sprocketspg.Pool) {
	ctx := ctxT(t)
	// Each transaction reads the sum and appends sum+1: serially the
	// ledger ends as 1, 2, 4. Both read before either writes, which
	// SERIALIZABLE cannot allow for both, so one is run again.
	var arrived [2]chan struct{}
	for i := range arrived {
		arrived[i] = make(chan struct{})
	}
	var (
		runs [2]int
		errs [2]error
		wg   sync.WaitGroup
	)
	for i := range 2 {
		wg.Go(func() {
			errs[i] = pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
				runs[i]++
				res, err := tx.Execute(ctx, "SELECT sum(v) AS s FROM ledger")
				if err != nil {
					return err
				}
				if runs[i] == 1 {
					close(arrived[i])
					select {
					case <-arrived[1-i]:
					case <-time.After(10 * time.Second):
						return errors.New("the other transaction never read")
					}
				}
				_, err = tx.Execute(ctx, "INSERT INTO ledger VALUES ($1)", res.Row["s"].(int64)+1)
				return err
			}, txn.Isolation(pgx.Serializable), txn.Retries(5), txn.Timeout(10*time.Second))
		})
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	assert.GreaterOrEqual(t, runs[0]+runs[1], 3, "one transaction ran again")
	res, err := pool.Execute(ctx, "SELECT v FROM ledger ORDER BY v")
	require.NoError(t, err)
	var got []int32
	for _, r := range res.Rows {
		got = append(got, r["v"].(int32))
	}
	assert.Equal(t, []int32{1, 2, 4}, got)
}

// TestPgBouncerCacheStatement shows what the default query exec mode,
// cache_statement, does under transaction pooling: pgx prepares each
// statement under a name (stmtcache_...) on the server connection it has
// at the moment, and uses it later on whatever server connection PgBouncer
// then gives it. PgBouncer before 1.21, or with max_prepared_statements
// 0, does not track prepared statements, so the name is missing on the
// other connection, or already taken there by another client. From 1.21,
// with max_prepared_statements above 0, PgBouncer re-prepares statements
// where needed and the mode works.
func TestPgBouncerCacheStatement(t *testing.T) {
	srv := fxtest_helpers.StartServer(t)
	_, bounced := bouncedDatabase(t, srv)
	cfg := pgBouncerConfig(t, bounced)
	maxPrepared, _ := strconv.Atoi(cfg["max_prepared_statements"])
	pool := bouncerPool(t, bounced, "cache_statement")
	ctx := ctxT(t)

	// Two client connections take turns, so that a statement prepared
	// through one is used, or prepared again, on the other's server
	// connection.
	a, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer a.Release()
	b, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer b.Release()
	var broke error
	for round := 0; round < 50 && broke == nil; round++ {
		sql := fmt.Sprintf("SELECT $1::int + %d", round)
		for _, c := range []*pgxpool.Conn{a, b, a, b} {
			if _, err := c.Exec(ctx, sql, round); err != nil {
				broke = err
				break
			}
		}
	}

	if maxPrepared > 0 {
		t.Logf("PgBouncer tracks up to %d prepared statements per connection", maxPrepared)
		assert.NoError(t, broke, "cache_statement through a PgBouncer that tracks prepared statements")
		return
	}
	t.Logf("PgBouncer does not track prepared statements (max_prepared_statements %q); cache_statement fails with: %v",
		cfg["max_prepared_statements"], broke)
	require.Error(t, broke, "cache_statement kept working under transaction pooling")
	// 26000 invalid_sql_statement_name: does not exist;
	// 42P05 duplicate_prepared_statement: already exists.
	assert.Contains(t, []string{"26000", "42P05"}, sqlState(broke), "%v", broke)
	assert.Contains(t, broke.Error(), `prepared statement "stmtcache_`)
}

// TestPgBouncerStartupParameters shows what becomes of the pool's
// statement_timeout, which pgx sends in the startup message: PgBouncer
// refuses a client that sends a parameter it neither tracks nor ignores,
// and drops one it ignores, so Config.QueryTimeout does not reach the
// server through PgBouncer. Per-transaction timeouts (txn.Timeout) and
// the caller's deadline still apply.
func TestPgBouncerStartupParameters(t *testing.T) {
	srv := fxtest_helpers.StartServer(t)

	t.Run("refused unless ignored", func(t *testing.T) {
		_, bounced := bouncedDatabase(t, srv,
			fxtest_helpers.WithPgBouncerSetting("ignore_startup_parameters", "extra_float_digits"))
		cfg := testConfig(bounced)
		cfg.QueryExecMode = "exec"
		cfg.ConnectionTimeout = time.Second
		pool, err := sprocketspg.New(ctxT(t), cfg)
		if err == nil {
			pool.Close()
		}
		require.Error(t, err)
		assert.Contains(t, err.Error(), "unsupported startup parameter: statement_timeout")
	})

	t.Run("ignored, so Config.QueryTimeout is not in force", func(t *testing.T) {
		direct, bounced := bouncedDatabase(t, srv)
		ctx := ctxT(t)
		show := func(pool *sprocketspg.Pool) string {
			res, err := pool.Execute(ctx, "SHOW statement_timeout")
			require.NoError(t, err)
			return res.Row["statement_timeout"].(string)
		}
		assert.Equal(t, "30s", show(newPoolAt(t, direct, nil)), "directly, QueryTimeout is the session's statement_timeout")
		assert.Equal(t, "0", show(bouncerPool(t, bounced, "exec")), "through PgBouncer the server's default stays")
	})
}
