package health_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/health"
)

func TestCheckPasses(t *testing.T) {
	t.Parallel()
	db, pool := newCounted(t, nil)
	clock := newFakeClock()
	c := health.NewChecker(db, health.WithClock(clock.Now))

	r := c.Check(context.Background())
	assert.Equal(t, health.StatusPass, r.Status)
	assert.True(t, r.Available)
	assert.Empty(t, r.Error)
	assert.Positive(t, r.Latency)
	assert.Equal(t, clock.Now(), r.Time)
	assert.GreaterOrEqual(t, r.Stats.Size, int32(1))
	assert.Equal(t, pool.Config().MaxConns, r.Stats.Max)
	assert.Positive(t, r.Stats.AcquireCount)
	assert.EqualValues(t, 1, db.pings.Load())
}

func TestCheckCacheWindow(t *testing.T) {
	t.Parallel()
	db, _ := newCounted(t, nil)
	clock := newFakeClock()
	c := health.NewChecker(db, health.WithClock(clock.Now), health.WithCacheWindow(time.Second))
	ctx := context.Background()

	first := c.Check(ctx)
	second := c.Check(ctx)
	assert.EqualValues(t, 1, db.pings.Load(), "a second check within the window reuses the first")
	assert.Equal(t, first, second)

	clock.Advance(999 * time.Millisecond)
	c.Check(ctx)
	assert.EqualValues(t, 1, db.pings.Load(), "still within the window")

	clock.Advance(time.Millisecond)
	third := c.Check(ctx)
	assert.EqualValues(t, 2, db.pings.Load(), "the window has passed")
	assert.Equal(t, clock.Now(), third.Time)

	clock.Advance(time.Hour)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			assert.Equal(t, health.StatusPass, c.Check(ctx).Status)
		})
	}
	wg.Wait()
	assert.EqualValues(t, 3, db.pings.Load(), "concurrent checks share one ping")
}

func TestCheckCacheWindowZero(t *testing.T) {
	t.Parallel()
	db, _ := newCounted(t, nil)
	c := health.NewChecker(db, health.WithCacheWindow(0))
	for range 3 {
		assert.Equal(t, health.StatusPass, c.Check(context.Background()).Status)
	}
	assert.EqualValues(t, 3, db.pings.Load())
}

func TestCheckCallerCancelledIsNotCached(t *testing.T) {
	t.Parallel()
	db, _ := newCounted(t, nil)
	c := health.NewChecker(db, health.WithClock(newFakeClock().Now))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := c.Check(ctx)
	assert.Equal(t, health.StatusFail, r.Status)
	assert.False(t, r.Available)
	assert.Contains(t, r.Error, "context canceled")

	// The clock stands still, so a cached result would be returned here;
	// the caller's own cancellation says nothing about the database.
	r = c.Check(context.Background())
	assert.Equal(t, health.StatusPass, r.Status)
	assert.EqualValues(t, 2, db.pings.Load())
}

func TestCheckSaturatedDoesNotWait(t *testing.T) {
	t.Parallel()
	db, pool := newCounted(t, func(c *pgxpool.Config) { c.MaxConns = 2 })
	// A timeout far above the time the test allows, so that a check that
	// waited for a connection would show.
	c := health.NewChecker(db, health.WithTimeout(10*time.Second))

	release := saturate(t, pool)
	defer release()

	began := time.Now()
	r := c.Check(context.Background())
	assert.Less(t, time.Since(began), time.Second, "the check must not wait for a connection")
	assert.Equal(t, health.StatusWarn, r.Status)
	assert.True(t, r.Available)
	assert.Equal(t, "pool saturated: all 2 connections in use", r.Error)
	assert.Equal(t, int32(2), r.Stats.Acquired)
	assert.Zero(t, r.Latency)
	assert.Zero(t, db.pings.Load())
}

// saturate occupies every connection of pool with pg_sleep(2) and returns
// once they are all in use; the returned func waits for the queries.
func saturate(t *testing.T, pool *pgxpool.Pool) func() {
	t.Helper()
	n := int(pool.Config().MaxConns)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			_, err := pool.Exec(context.Background(), "SELECT pg_sleep(2)")
			assert.NoError(t, err)
		})
	}
	require.Eventually(t, func() bool { return pool.Stat().AcquiredConns() == int32(n) },
		time.Second, 5*time.Millisecond, "the sleeping queries did not take every connection")
	return wg.Wait
}

// failingDB is a real pool whose Ping fails with a fixed error, as a
// driver's error text quoting a connection string would.
type failingDB struct {
	health.Database
	err error
}

func (d failingDB) Ping(context.Context) error { return d.err }

func TestCheckScrubsErrorText(t *testing.T) {
	t.Parallel()
	pool := newPgxpool(t, nil)
	tests := []struct{ name, err, want, secret string }{
		{
			name:   "url",
			err:    "failed to connect to `postgres://app:s3cret@db:5432/orders`: dial error",
			want:   "failed to connect to `postgres://app:xxxxx@db:5432/orders`: dial error",
			secret: "s3cret",
		},
		{
			name:   "url with @ and : in the password",
			err:    "connect postgresql://app:p@ss:w0rd@db/orders failed",
			want:   "connect postgresql://app:xxxxx@db/orders failed",
			secret: "w0rd",
		},
		{
			name:   "url query",
			err:    "connect postgresql://db/orders?password=s3cret&sslmode=disable failed",
			want:   "connect postgresql://db/orders?password=xxxxx&sslmode=disable failed",
			secret: "s3cret",
		},
		{
			name:   "keyword/value",
			err:    "cannot parse host=db user=app password=s3cret dbname=orders",
			want:   "cannot parse host=db user=app password=xxxxx dbname=orders",
			secret: "s3cret",
		},
		{
			name:   "quoted keyword/value",
			err:    `cannot parse host=db PASSWORD = 's3 \'cret' sslpassword=k3y dbname=orders`,
			want:   `cannot parse host=db PASSWORD=xxxxx sslpassword=xxxxx dbname=orders`,
			secret: "cret",
		},
		{
			name: "nothing secret",
			err:  `FATAL: password authentication failed for user "app" (SQLSTATE 28P01)`,
			want: `FATAL: password authentication failed for user "app" (SQLSTATE 28P01)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := failingDB{Database: health.FromPgxpool(pool), err: errors.New(tt.err)}
			c := health.NewChecker(db)
			c.SetReady(true)

			r := c.Check(context.Background())
			assert.Equal(t, health.StatusFail, r.Status)
			assert.False(t, r.Available)
			assert.Equal(t, tt.want, r.Error)

			if tt.secret == "" {
				return
			}
			srv := serve(t, c)
			for _, path := range []string{"/readyz", "/status", "/livez"} {
				resp := get(t, srv, path)
				assert.NotContains(t, string(resp.body), tt.secret, path)
			}
			ready := get(t, srv, "/readyz")
			assert.Equal(t, 503, ready.code)
			assert.Contains(t, string(ready.body), "xxxxx")
		})
	}
}

func TestCheckIgnoresGate(t *testing.T) {
	t.Parallel()
	db, _ := newCounted(t, nil)
	c := health.NewChecker(db)
	assert.False(t, c.Ready())
	assert.Equal(t, health.StatusPass, c.Check(context.Background()).Status)
	assert.EqualValues(t, 1, db.pings.Load())
}
