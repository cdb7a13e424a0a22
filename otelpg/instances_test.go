package otelpg_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/exaring/otelpgx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/otelpg"
)

// ordersInstance adds sprocketspg.Named("orders") to an application, on a
// database of the test's own and with a pool of at most maxConns
// connections, and sets *pool to its pool.
func ordersInstance(t *testing.T, maxConns int, pool **sprocketspg.Pool) fx.Option {
	t.Helper()
	url := fxtest_helpers.NewDatabase(t)
	return fx.Options(
		sprocketspg.Named("orders"),
		fx.Decorate(fx.Annotate(func(c sprocketspg.Config) sprocketspg.Config {
			c = poolConfig(c)
			c.URL = url
			c.MaxPoolSize = maxConns
			return c
		}, fx.ParamTags(`name:"orders"`), fx.ResultTags(`name:"orders"`))),
		fx.Invoke(fx.Annotate(func(p *sprocketspg.Pool) { *pool = p }, fx.ParamTags(`name:"orders"`))),
	)
}

// statsByPool returns the value of each data point of the pool statistic
// m by its db.client.connection.pool.name, failing t unless every point
// has the attribute and no two share a value.
func statsByPool(t *testing.T, m metricdata.Metrics) map[string]int64 {
	t.Helper()
	var points []metricdata.DataPoint[int64]
	switch d := m.Data.(type) {
	case metricdata.Gauge[int64]:
		points = d.DataPoints
	case metricdata.Sum[int64]:
		points = d.DataPoints
	default:
		t.Fatalf("%s: unexpected data %T", m.Name, m.Data)
	}
	out := map[string]int64{}
	for _, dp := range points {
		name, ok := dp.Attributes.Value(otelpg.PoolNameKey)
		require.True(t, ok, "%s carries %s", m.Name, otelpg.PoolNameKey)
		_, dup := out[name.AsString()]
		require.False(t, dup, "%s has one data point per instance", m.Name)
		out[name.AsString()] = dp.Value
	}
	return out
}

// defaultPoolName is the pool name otelpgx gives the statistics of a pool
// without a name of its own.
func defaultPoolName(pool *sprocketspg.Pool) string {
	cc := pool.Pool.Config().ConnConfig
	return fmt.Sprintf("%s:%d/%s", cc.Host, cc.Port, cc.Database)
}

func TestModuleInstrumentsEveryInstance(t *testing.T) {
	tel := newTelemetry(t)
	var pool, orders *sprocketspg.Pool
	fxtest_helpers.NewApp(t, otelpg.Module, tel.supply(), fx.Decorate(poolConfig),
		ordersInstance(t, 2, &orders), fx.Populate(&pool))
	require.NotEqual(t, pool.Config().URL, orders.Config().URL, "two databases")

	ctx, parent := tel.tp.Tracer("test").Start(ctxT(t), "request")
	_, err := pool.Execute(sprocketspg.WithMetricName(ctx, "list"), "SELECT 1")
	require.NoError(t, err)
	_, err = orders.Execute(sprocketspg.WithMetricName(ctx, "list"), "SELECT 1")
	require.NoError(t, err)
	_, err = orders.Execute(sprocketspg.WithMetricName(ctx, "broken"), "SELECT * FROM no_such_table")
	require.Error(t, err)
	parent.End()

	// Module's one observer saw the events of both instances, the named
	// one's under its name, the default's without one, as before.
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, map[string]uint64{
			"|execute/list/":              1,
			"orders|execute/list/":        1,
			"orders|execute/broken/42P01": 1,
		}, tel.poolDurationCounts(t))
	}, 5*time.Second, 20*time.Millisecond)

	// Each instance's pool has a tracer of its own: the spans are on both
	// databases, and the named instance's carry its name.
	databases := map[string]int{}
	poolNames := map[string]int{}
	for _, s := range querySpans(tel, "SELECT") {
		attrs := spanAttrs(s)
		databases[attrs["db.namespace"]]++
		poolNames[attrs[otelpg.PoolNameKey]]++
	}
	assert.Equal(t, map[string]int{
		pool.Pool.Config().ConnConfig.Database:   1,
		orders.Pool.Config().ConnConfig.Database: 2,
	}, databases)
	assert.Equal(t, map[string]int{"": 1, "orders": 2}, poolNames,
		"the default instance's spans stay as they were, orders' are named")

	// One data point of each statistic per instance.
	defaultName := defaultPoolName(pool)
	metrics := tel.metrics(t)
	assert.Equal(t, map[string]int64{defaultName: maxPoolSize, "orders": 2},
		statsByPool(t, metrics["pgxpool.max_connections"]))
	found := 0
	for key, m := range metrics {
		if !strings.HasPrefix(key, "pgxpool.") {
			continue
		}
		found++
		assert.ElementsMatch(t, []string{defaultName, "orders"}, keys(statsByPool(t, m)), key)
	}
	assert.GreaterOrEqual(t, found, 10, "otelpgx's pool statistics")
}

func TestModuleWithOnlyNamedInstance(t *testing.T) {
	tel := newTelemetry(t)
	var orders *sprocketspg.Pool
	// No sprocketspg.Module: the graph has no unnamed pool.
	app := fxtest.New(t,
		otelpg.Module,
		ordersInstance(t, 2, &orders),
		tel.supply(),
		fx.Supply(zaptest.NewLogger(t)),
	)
	assert.NotContains(t, tel.metrics(t), "pgxpool.total_connections", "nothing before start")

	app.RequireStart()
	ctx, parent := tel.tp.Tracer("test").Start(ctxT(t), "request")
	_, err := orders.Execute(sprocketspg.WithMetricName(ctx, "only"), "SELECT 1")
	require.NoError(t, err)
	parent.End()
	assert.Len(t, querySpans(tel, "SELECT"), 1, "the tracer serves the named instance")
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, map[string]uint64{"orders|execute/only/": 1}, tel.poolDurationCounts(t))
	}, 5*time.Second, 20*time.Millisecond)
	assert.Equal(t, map[string]int64{"orders": 2}, statsByPool(t, tel.metrics(t)["pgxpool.max_connections"]))

	app.RequireStop()
	assert.NotContains(t, tel.metrics(t), "pgxpool.total_connections", "nothing after stop")
}

func TestRecordStatsNamesInstance(t *testing.T) {
	tel := newTelemetry(t)
	cfg := poolConfig(sprocketspg.Config{
		URL:               fxtest_helpers.NewDatabase(t),
		ConnectionTimeout: 5 * time.Second,
		ConnectionTTL:     5 * time.Minute,
		QueryTimeout:      30 * time.Second,
		UUID:              true,
	})
	obs, err := otelpg.NewObserver(otelpg.WithMeterProvider(tel.mp))
	require.NoError(t, err)
	pool, err := sprocketspg.New(ctxT(t), cfg, sprocketspg.WithName("billing"), sprocketspg.WithObserver(obs),
		sprocketspg.WithLogger(zaptest.NewLogger(t)))
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	stop, err := otelpg.RecordStats(pool, otelpg.WithMeterProvider(tel.mp))
	require.NoError(t, err)
	assert.Equal(t, map[string]int64{"billing": maxPoolSize}, statsByPool(t, tel.metrics(t)["pgxpool.max_connections"]))
	stop()

	// The caller's attribute of the key wins.
	stop, err = otelpg.RecordStats(pool, otelpg.WithMeterProvider(tel.mp),
		otelpg.WithStatsOptions(otelpgx.WithStatsAttributes(attribute.String(string(otelpg.PoolNameKey), "custom"))))
	require.NoError(t, err)
	assert.Equal(t, map[string]int64{"custom": maxPoolSize}, statsByPool(t, tel.metrics(t)["pgxpool.max_connections"]))
	stop()

	_, err = pool.Execute(sprocketspg.WithMetricName(ctxT(t), "named"), "SELECT 1")
	require.NoError(t, err)
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, map[string]uint64{"billing|execute/named/": 1}, tel.poolDurationCounts(t))
	}, 5*time.Second, 20*time.Millisecond)
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
