package sprocketspg_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

func TestMain(m *testing.M) { os.Exit(fxtest_helpers.RunTests(m)) }

// testConfig returns a Config for url with short timeouts, as a test wants.
func testConfig(url string) sprocketspg.Config {
	return sprocketspg.Config{
		URL:               url,
		MaxPoolSize:       5,
		MinPoolSize:       1,
		ConnectionTimeout: 5 * time.Second,
		ConnectionTTL:     5 * time.Minute,
		QueryTimeout:      30 * time.Second,
		UUID:              true,
	}
}

// newPool connects a Pool without fx to a fresh database and closes it when
// the test ends.
func newPool(t *testing.T, change func(*sprocketspg.Config), opts ...sprocketspg.Option) (*sprocketspg.Pool, string) {
	t.Helper()
	url := fxtest_helpers.NewDatabase(t)
	return newPoolAt(t, url, change, opts...), url
}

// newPoolWithSchema connects a Pool without fx to a fresh database filled
// with schema.
func newPoolWithSchema(t *testing.T, schema string) *sprocketspg.Pool {
	t.Helper()
	return newPoolAt(t, fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(schema)), nil)
}

// newPoolAt connects a Pool without fx to url and closes it when the test
// ends.
func newPoolAt(t *testing.T, url string, change func(*sprocketspg.Config), opts ...sprocketspg.Option) *sprocketspg.Pool {
	t.Helper()
	cfg := testConfig(url)
	if change != nil {
		change(&cfg)
	}
	opts = append([]sprocketspg.Option{sprocketspg.WithLogger(zaptest.NewLogger(t, zaptest.Level(zap.DebugLevel)))}, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := sprocketspg.New(ctx, cfg, opts...)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// appPool starts an fx app with Module on a fresh database and returns its
// pool.
func appPool(t *testing.T, opts ...fx.Option) *sprocketspg.Pool {
	t.Helper()
	var pool *sprocketspg.Pool
	fxtest_helpers.NewApp(t, append(opts, fx.Populate(&pool))...)
	return pool
}

// adminConn opens a plain pgx connection to url, outside any Pool.
func adminConn(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
