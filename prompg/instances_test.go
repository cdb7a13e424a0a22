package prompg_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/prompg"
)

// exposition returns what a scrape of reg reads.
func exposition(t *testing.T, reg prometheus.Gatherer) string {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequestWithContext(ctxT(t), http.MethodGet, "/metrics", nil)
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, req)
	require.Equal(t, http.StatusOK, rec.Code)
	return rec.Body.String()
}

// poolStatsInstances returns, for each pgxpool_* metric, the pool label
// values of its series.
func poolStatsInstances(t *testing.T, reg prometheus.Gatherer) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for name, mf := range families(t, reg) {
		if !strings.HasPrefix(name, "pgxpool_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[name] = append(out[name], labelMap(m)[prompg.PoolLabel])
		}
	}
	return out
}

func TestModuleExportsEveryInstance(t *testing.T) {
	reg := prometheus.NewRegistry()
	var pool, orders *sprocketspg.Pool
	fxtest_helpers.NewApp(t, append(appOptions(reg, &pool), ordersInstance(t, 2, &orders))...)
	require.Equal(t, "orders", orders.Name())
	require.NotEqual(t, pool.Config().URL, orders.Config().URL, "two databases")
	ctx := ctxT(t)

	for range 2 {
		_, err := pool.Execute(sprocketspg.WithMetricName(ctx, "list"), "SELECT 1")
		require.NoError(t, err)
	}
	_, err := orders.Execute(sprocketspg.WithMetricName(ctx, "list"), "SELECT 1")
	require.NoError(t, err)
	_, err = orders.Execute(sprocketspg.WithMetricName(ctx, "broken"), "SELECT * FROM no_such_table")
	require.Error(t, err)

	// Module's one observer saw the events of both instances, each under
	// its instance's name.
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, map[string]uint64{
			"|execute/list/ok":            2,
			"orders|execute/list/ok":      1,
			"orders|execute/broken/error": 1,
		}, poolHistogramCounts(t, reg))
	}, 5*time.Second, 20*time.Millisecond)

	// One series of each statistic per instance.
	assert.Equal(t, map[string]float64{"": maxPoolSize, "orders": 2}, gaugesByPool(t, reg, "pgxpool_max_conns"))
	stats := poolStatsInstances(t, reg)
	require.NotEmpty(t, stats)
	for name, pools := range stats {
		assert.ElementsMatch(t, []string{"", "orders"}, pools, name)
	}

	text := exposition(t, reg)
	for _, want := range []string{
		`pgxpool_max_conns{pool=""} 4`,
		`pgxpool_max_conns{pool="orders"} 2`,
		`sprocketspg_query_duration_seconds_count{metric_name="list",operation="execute",outcome="ok",pool=""} 2`,
		`sprocketspg_query_duration_seconds_count{metric_name="list",operation="execute",outcome="ok",pool="orders"} 1`,
		`sprocketspg_query_duration_seconds_count{metric_name="broken",operation="execute",outcome="error",pool="orders"} 1`,
	} {
		assert.Contains(t, text, want)
	}
}

func TestModuleWithOnlyNamedInstance(t *testing.T) {
	reg := prometheus.NewRegistry()
	var orders *sprocketspg.Pool
	// No sprocketspg.Module: the graph has no unnamed pool.
	app := fxtest.New(t,
		prompg.Module,
		ordersInstance(t, 2, &orders),
		fx.Supply(fx.Annotate(reg, fx.As(new(prometheus.Registerer)))),
		fx.Supply(zaptest.NewLogger(t)),
	)
	assert.Empty(t, families(t, reg), "nothing is registered before start")

	app.RequireStart()
	_, err := orders.Execute(sprocketspg.WithMetricName(ctxT(t), "only"), "SELECT 1")
	require.NoError(t, err)
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, map[string]uint64{"orders|execute/only/ok": 1}, poolHistogramCounts(t, reg))
	}, 5*time.Second, 20*time.Millisecond)
	assert.Equal(t, map[string]float64{"orders": 2}, gaugesByPool(t, reg, "pgxpool_max_conns"))

	app.RequireStop()
	assert.Empty(t, families(t, reg), "everything is unregistered on stop")
}

func TestModulePoolConstLabelMergesInstances(t *testing.T) {
	reg := prometheus.NewRegistry()
	core, logs := observer.New(zapcore.WarnLevel)
	var pool, orders *sprocketspg.Pool
	fxtest_helpers.NewApp(t, append(appOptions(reg, &pool),
		ordersInstance(t, 2, &orders),
		fx.Supply(fx.Annotate(prompg.WithConstLabels(prometheus.Labels{"pool": "all"}),
			fx.As(new(prompg.Option)), fx.ResultTags(`group:"prompg_options"`))),
		// Keep the test's own log and capture the warnings too.
		fx.Decorate(func(l *zap.Logger) *zap.Logger {
			return zap.New(zapcore.NewTee(l.Core(), core))
		}),
	)...)

	for _, p := range []*sprocketspg.Pool{pool, orders} {
		_, err := p.Execute(sprocketspg.WithMetricName(ctxT(t), "merged"), "SELECT 1")
		require.NoError(t, err)
	}
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, map[string]uint64{"all|execute/merged/ok": 2}, poolHistogramCounts(t, reg))
	}, 5*time.Second, 20*time.Millisecond)

	// The statistics of the first instance by name, the default, are
	// exported; the other's collide with them, which is a warning.
	assert.Equal(t, map[string]float64{"all": maxPoolSize}, gaugesByPool(t, reg, "pgxpool_max_conns"))
	warnings := logs.FilterMessageSnippet("not exported to prometheus").All()
	require.Len(t, warnings, 1)
	assert.Equal(t, "orders", warnings[0].ContextMap()["instance"])
}

func TestPoolCollectorNamesInstance(t *testing.T) {
	reg := prometheus.NewRegistry()
	obs := prompg.NewQueryObserver()
	def := newPool(t, nil, sprocketspg.WithObserver(obs))
	billing := newPool(t, func(c *sprocketspg.Config) { c.MaxPoolSize = 2 },
		sprocketspg.WithName("billing"), sprocketspg.WithObserver(obs))
	unregister, err := prompg.Register(reg, obs, prompg.NewPoolCollector(def), prompg.NewPoolCollector(billing))
	require.NoError(t, err)
	defer unregister()

	assert.Equal(t, map[string]float64{"": maxPoolSize, "billing": 2}, gaugesByPool(t, reg, "pgxpool_max_conns"))
	for _, p := range []*sprocketspg.Pool{def, billing} {
		_, err := p.Execute(sprocketspg.WithMetricName(ctxT(t), "plain"), "SELECT 1")
		require.NoError(t, err)
	}
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, map[string]uint64{"|execute/plain/ok": 1, "billing|execute/plain/ok": 1},
			poolHistogramCounts(t, reg))
	}, 5*time.Second, 20*time.Millisecond)

	// A second collector of one instance cannot be told apart from the
	// first.
	_, err = prompg.Register(reg, prompg.NewPoolCollector(billing))
	require.ErrorIs(t, err, prompg.ErrPoolCollectorConflict)

	// A collector of no pool reports nothing, as one of a pool not started.
	other := prometheus.NewRegistry()
	require.NotPanics(t, func() { require.NoError(t, other.Register(prompg.NewPoolCollector(nil))) })
	assert.Empty(t, families(t, other))
}
