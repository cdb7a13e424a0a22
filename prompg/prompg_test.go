package prompg_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/prompg"
)

const maxPoolSize = 4

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// appOptions are the options of an application that exports its pool's
// metrics to reg.
func appOptions(reg *prometheus.Registry, pool **sprocketspg.Pool) []fx.Option {
	return []fx.Option{
		prompg.Module,
		fx.Supply(fx.Annotate(reg, fx.As(new(prometheus.Registerer)))),
		fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
			c.MaxPoolSize = maxPoolSize
			c.MinPoolSize = 1
			return c
		}),
		fx.Populate(pool),
	}
}

// families gathers reg by metric name.
func families(t *testing.T, reg prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// histogramCounts returns the sample count of the query duration
// histogram by "operation/metric_name/outcome", summed over instances.
func histogramCounts(t *testing.T, reg prometheus.Gatherer) map[string]uint64 {
	t.Helper()
	counts := map[string]uint64{}
	for key, n := range poolHistogramCounts(t, reg) {
		_, rest, _ := strings.Cut(key, "|")
		counts[rest] += n
	}
	return counts
}

// poolHistogramCounts returns the sample count of each series of the query
// duration histogram, keyed by "pool|operation/metric_name/outcome".
func poolHistogramCounts(t *testing.T, reg prometheus.Gatherer) map[string]uint64 {
	t.Helper()
	counts := map[string]uint64{}
	mf, ok := families(t, reg)[prompg.QueryDurationName]
	if !ok {
		return counts
	}
	for _, m := range mf.GetMetric() {
		labels := labelMap(m)
		key := labels[prompg.PoolLabel] + "|" + labels["operation"] + "/" + labels["metric_name"] + "/" + labels["outcome"]
		counts[key] = m.GetHistogram().GetSampleCount()
	}
	return counts
}

// labelMap returns m's labels as Prometheus stores them: without those
// whose value is empty, which it treats as absent.
func labelMap(m *dto.Metric) map[string]string {
	labels := map[string]string{}
	for _, lp := range m.GetLabel() {
		if lp.GetValue() != "" {
			labels[lp.GetName()] = lp.GetValue()
		}
	}
	return labels
}

// gaugesByPool returns the value of each series of the gauge name by its
// pool label, failing t unless every series has that label (the default
// instance's with the value "") and no two share a value.
func gaugesByPool(t *testing.T, reg prometheus.Gatherer, name string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	mf, ok := families(t, reg)[name]
	if !ok {
		return out
	}
	for _, m := range mf.GetMetric() {
		pool, found := "", false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == prompg.PoolLabel {
				pool, found = lp.GetValue(), true
			}
		}
		require.True(t, found, "%s has the %s label: %v", name, prompg.PoolLabel, m.GetLabel())
		_, dup := out[pool]
		require.False(t, dup, "%s has one series per instance", name)
		out[pool] = m.GetGauge().GetValue()
	}
	return out
}

// ordersInstance adds sprocketspg.Named("orders") to an application, on a
// database of the test's own and with a pool of at most maxConns
// connections, and sets *pool to its pool.
func ordersInstance(t *testing.T, maxConns int, pool **sprocketspg.Pool) fx.Option {
	t.Helper()
	url := fxtest_helpers.NewDatabase(t)
	return fx.Options(
		sprocketspg.Named("orders"),
		fx.Decorate(fx.Annotate(func(c sprocketspg.Config) sprocketspg.Config {
			c.URL = url
			c.MaxPoolSize = maxConns
			c.MinPoolSize = 1
			return c
		}, fx.ParamTags(`name:"orders"`), fx.ResultTags(`name:"orders"`))),
		fx.Invoke(fx.Annotate(func(p *sprocketspg.Pool) { *pool = p }, fx.ParamTags(`name:"orders"`))),
	)
}

func gaugeValue(t *testing.T, reg prometheus.Gatherer, name string) (float64, bool) {
	t.Helper()
	mf, ok := families(t, reg)[name]
	if !ok || len(mf.GetMetric()) != 1 {
		return 0, false
	}
	return mf.GetMetric()[0].GetGauge().GetValue(), true
}

func TestModuleRecordsQueryDurations(t *testing.T) {
	reg := prometheus.NewRegistry()
	var pool *sprocketspg.Pool
	fxtest_helpers.NewApp(t, appOptions(reg, &pool)...)
	ctx := ctxT(t)

	for range 3 {
		_, err := pool.Execute(sprocketspg.WithMetricName(ctx, "list-widgets"), "SELECT 1")
		require.NoError(t, err)
	}
	for range 2 {
		_, err := pool.Execute(sprocketspg.WithMetricName(ctx, "count-widgets"), "SELECT count(*) FROM pg_class")
		require.NoError(t, err)
	}
	_, err := pool.Execute(ctx, "SELECT 2")
	require.NoError(t, err)
	_, err = pool.Execute(sprocketspg.WithMetricName(ctx, "broken"), "SELECT * FROM no_such_table")
	require.Error(t, err)
	_, err = pool.Callproc(sprocketspg.WithMetricName(ctx, "now"), "now")
	require.NoError(t, err)

	want := map[string]uint64{
		"execute/list-widgets/ok":  3,
		"execute/count-widgets/ok": 2,
		"execute/unnamed/ok":       1,
		"execute/broken/error":     1,
		"callproc/now/ok":          1,
	}
	// Observers run on a goroutine of their own.
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, want, histogramCounts(t, reg))
	}, 5*time.Second, 20*time.Millisecond)

	total, ok := gaugeValue(t, reg, "pgxpool_total_conns")
	require.True(t, ok, "pgxpool_total_conns is exported")
	assert.GreaterOrEqual(t, total, 1.0)
	assert.LessOrEqual(t, total, float64(maxPoolSize))
	maxConns, ok := gaugeValue(t, reg, "pgxpool_max_conns")
	require.True(t, ok, "pgxpool_max_conns is exported")
	assert.Equal(t, float64(maxPoolSize), maxConns)
	acquired, ok := gaugeValue(t, reg, "pgxpool_acquired_conns")
	require.True(t, ok, "pgxpool_acquired_conns is exported")
	assert.Zero(t, acquired, "no connection is in use between queries")
	acquires := families(t, reg)["pgxpool_acquire_count"]
	require.NotNil(t, acquires)
	assert.GreaterOrEqual(t, acquires.GetMetric()[0].GetCounter().GetValue(), 8.0,
		"every query acquired a connection")
}

func TestModuleServesTextExposition(t *testing.T) {
	reg := prometheus.NewRegistry()
	var pool *sprocketspg.Pool
	fxtest_helpers.NewApp(t, appOptions(reg, &pool)...)
	_, err := pool.Execute(sprocketspg.WithMetricName(ctxT(t), "ping"), "SELECT 1")
	require.NoError(t, err)
	assert.Eventually(t, func() bool {
		return histogramCounts(t, reg)["execute/ping/ok"] == 1
	}, 5*time.Second, 20*time.Millisecond)

	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	req, err := http.NewRequestWithContext(ctxT(t), http.MethodGet, srv.URL, nil)
	require.NoError(t, err)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	text := string(body)

	for _, want := range []string{
		"# TYPE sprocketspg_query_duration_seconds histogram",
		// The default instance's empty pool label, which Prometheus
		// stores as no label: the series of a one-database application.
		`sprocketspg_query_duration_seconds_count{metric_name="ping",operation="execute",outcome="ok",pool=""} 1`,
		`sprocketspg_query_duration_seconds_bucket{metric_name="ping",operation="execute",outcome="ok",pool="",le="+Inf"} 1`,
		"# TYPE pgxpool_total_conns gauge",
		`pgxpool_max_conns{pool=""} 4`,
		"pgxpool_idle_conns",
		"pgxpool_acquire_count",
	} {
		assert.Contains(t, text, want)
	}
}

func TestModuleUnregistersOnStop(t *testing.T) {
	reg := prometheus.NewRegistry()
	var pool *sprocketspg.Pool
	url := fxtest_helpers.NewDatabase(t)
	app := fxtest.New(t,
		prompg.Module,
		sprocketspg.Module,
		fx.Supply(fx.Annotate(reg, fx.As(new(prometheus.Registerer)))),
		fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
			c.URL = url
			c.MaxPoolSize = maxPoolSize
			return c
		}),
		fx.Supply(zaptest.NewLogger(t)),
		fx.Populate(&pool),
	)

	// Built but not started: the pool's embedded pgxpool is still nil, and
	// nothing is registered yet.
	assert.Empty(t, families(t, reg))

	app.RequireStart()
	_, ok := gaugeValue(t, reg, "pgxpool_total_conns")
	assert.True(t, ok, "pool statistics are registered after start")

	app.RequireStop()
	assert.Empty(t, families(t, reg), "everything is unregistered on stop")
	// The same collectors can be registered again: the registry forgot them.
	require.NoError(t, reg.Register(prompg.NewQueryObserver()))
}

func TestPoolCollectorBeforeStartAndAfterStop(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	var pool *sprocketspg.Pool
	app := fxtest.New(t,
		sprocketspg.Module,
		fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
			c.URL = url
			c.MaxPoolSize = maxPoolSize
			return c
		}),
		fx.Populate(&pool),
	)

	reg := prometheus.NewRegistry()
	collector := prompg.NewPoolCollector(pool)
	// Registering describes the collector, which must not reach the nil
	// embedded pool.
	require.NotPanics(t, func() { require.NoError(t, reg.Register(collector)) })
	require.NotPanics(t, func() { assert.Empty(t, families(t, reg)) })

	app.RequireStart()
	maxConns, ok := gaugeValue(t, reg, "pgxpool_max_conns")
	require.True(t, ok)
	assert.Equal(t, float64(maxPoolSize), maxConns)

	app.RequireStop()
	assert.Empty(t, families(t, reg), "a stopped pool reports nothing")
	// Describe gives the same descriptors as at registration, so the
	// collector can be unregistered after the pool stopped.
	assert.True(t, reg.Unregister(collector))
}

func TestRegisterTwiceDoesNotPanic(t *testing.T) {
	reg := prometheus.NewRegistry()
	pool := newPool(t, nil)
	obs := prompg.NewQueryObserver()
	collector := prompg.NewPoolCollector(pool)

	unregister, err := prompg.Register(reg, obs, collector)
	require.NoError(t, err)

	// The same collectors again: nothing to do.
	again, err := prompg.Register(reg, obs, collector)
	require.NoError(t, err)
	again()
	_, ok := gaugeValue(t, reg, "pgxpool_total_conns")
	assert.True(t, ok, "undoing a no-op registration leaves the first in place")

	// A second observer shares the registered histogram.
	other := prompg.NewQueryObserver()
	_, err = prompg.Register(reg, other)
	require.NoError(t, err)
	other.ObserveQuery(sprocketspg.QueryEvent{Operation: sprocketspg.OperationExecute, MetricName: "shared", Duration: time.Millisecond})
	assert.Equal(t, uint64(1), histogramCounts(t, reg)["execute/shared/ok"])

	// A second pool's statistics with the same labels cannot be told
	// apart: an error, not a panic.
	_, err = prompg.Register(reg, prompg.NewPoolCollector(pool))
	require.ErrorIs(t, err, prompg.ErrPoolCollectorConflict)

	unregister()
	assert.Empty(t, families(t, reg))
}

func TestPoolsWithOwnLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	first, second := newPool(t, nil), newPool(t, func(c *sprocketspg.Config) { c.MaxPoolSize = 2 })
	undoFirst, err := prompg.Register(reg, prompg.NewPoolCollector(first, prompg.WithConstLabels(prometheus.Labels{"pool": "first"})))
	require.NoError(t, err)
	defer undoFirst()
	undoSecond, err := prompg.Register(reg, prompg.NewPoolCollector(second, prompg.WithConstLabels(prometheus.Labels{"pool": "second"})))
	require.NoError(t, err)
	defer undoSecond()

	maxConns := map[string]float64{}
	for _, m := range families(t, reg)["pgxpool_max_conns"].GetMetric() {
		maxConns[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
	}
	assert.Equal(t, map[string]float64{"first": maxPoolSize, "second": 2}, maxConns)
}

func TestModulesShareRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	var first, second *sprocketspg.Pool
	fxtest_helpers.NewApp(t, appOptions(reg, &first)...)
	// The second application finds its collectors registered; it starts
	// anyway, recording into the shared histogram.
	fxtest_helpers.NewApp(t, appOptions(reg, &second)...)

	_, err := second.Execute(sprocketspg.WithMetricName(ctxT(t), "from-second"), "SELECT 1")
	require.NoError(t, err)
	assert.Eventually(t, func() bool {
		return histogramCounts(t, reg)["execute/from-second/ok"] == 1
	}, 5*time.Second, 20*time.Millisecond)
}

func TestModuleDefaultRegisterer(t *testing.T) {
	var pool *sprocketspg.Pool
	fxtest_helpers.NewApp(t, prompg.Module, fx.Populate(&pool))
	_, err := pool.Execute(sprocketspg.WithMetricName(ctxT(t), "default-registry"), "SELECT 1")
	require.NoError(t, err)
	assert.Eventually(t, func() bool {
		return histogramCounts(t, prometheus.DefaultGatherer)["execute/default-registry/ok"] == 1
	}, 5*time.Second, 20*time.Millisecond)
}

func TestWithoutFx(t *testing.T) {
	obs := prompg.NewQueryObserver(
		prompg.WithBuckets(0.001, 0.01, 0.1, 1),
		prompg.WithConstLabels(prometheus.Labels{"service": "widgets"}),
	)
	pool := newPool(t, nil, sprocketspg.WithObserver(obs))
	reg := prometheus.NewRegistry()
	unregister, err := prompg.Register(reg, obs, prompg.NewPoolCollector(pool, prompg.WithConstLabels(prometheus.Labels{"service": "widgets"})))
	require.NoError(t, err)
	defer unregister()

	_, err = pool.Execute(sprocketspg.WithMetricName(ctxT(t), "plain"), "SELECT 1")
	require.NoError(t, err)
	assert.Eventually(t, func() bool {
		return histogramCounts(t, reg)["execute/plain/ok"] == 1
	}, 5*time.Second, 20*time.Millisecond)

	mf := families(t, reg)[prompg.QueryDurationName]
	require.NotNil(t, mf)
	h := mf.GetMetric()[0].GetHistogram()
	assert.Len(t, h.GetBucket(), 4, "the buckets given")
	assert.Contains(t, mf.GetMetric()[0].GetLabel(), &dto.LabelPair{Name: new("service"), Value: new("widgets")})
	total := families(t, reg)["pgxpool_total_conns"]
	require.NotNil(t, total)
	assert.Equal(t, map[string]string{"service": "widgets"}, labelMap(total.GetMetric()[0]),
		"the labels given, and the default instance's empty pool label")
}

func TestQueryObserverBoundsMetricNames(t *testing.T) {
	reg := prometheus.NewRegistry()
	obs := prompg.NewQueryObserver(prompg.WithMaxMetricNames(2))
	require.NoError(t, reg.Register(obs))
	for _, name := range []string{"a", "b", "c", "d", "a", ""} {
		obs.ObserveQuery(sprocketspg.QueryEvent{
			Operation:  sprocketspg.OperationTransaction,
			MetricName: name,
			Duration:   time.Millisecond,
			Err:        nil,
		})
	}
	obs.ObserveQuery(sprocketspg.QueryEvent{Operation: sprocketspg.OperationTransaction, MetricName: "e", Err: context.Canceled})
	assert.Equal(t, map[string]uint64{
		"transaction/a/ok":        2,
		"transaction/b/ok":        1,
		"transaction/other/ok":    2,
		"transaction/unnamed/ok":  1,
		"transaction/other/error": 1,
	}, histogramCounts(t, reg))
}

// newPool connects a Pool without fx to a fresh database and closes it
// when the test ends.
func newPool(t *testing.T, change func(*sprocketspg.Config), opts ...sprocketspg.Option) *sprocketspg.Pool {
	t.Helper()
	cfg := sprocketspg.Config{
		URL:               fxtest_helpers.NewDatabase(t),
		MaxPoolSize:       maxPoolSize,
		MinPoolSize:       1,
		ConnectionTimeout: 5 * time.Second,
		ConnectionTTL:     5 * time.Minute,
		QueryTimeout:      30 * time.Second,
		UUID:              true,
	}
	if change != nil {
		change(&cfg)
	}
	opts = append([]sprocketspg.Option{sprocketspg.WithLogger(zaptest.NewLogger(t, zaptest.Level(zap.DebugLevel)))}, opts...)
	pool, err := sprocketspg.New(ctxT(t), cfg, opts...)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

func TestModuleOptionsGroup(t *testing.T) {
	reg := prometheus.NewRegistry()
	var pool *sprocketspg.Pool
	// A pool label given by the application replaces the instance's name,
	// as an application with one pool labelled so before instances had
	// names expects.
	fxtest_helpers.NewApp(t, append(appOptions(reg, &pool),
		fx.Supply(fx.Annotate(prompg.WithConstLabels(prometheus.Labels{"pool": "orders"}),
			fx.As(new(prompg.Option)), fx.ResultTags(`group:"prompg_options"`))),
	)...)
	_, err := pool.Execute(ctxT(t), "SELECT 1")
	require.NoError(t, err)
	assert.Eventually(t, func() bool {
		return histogramCounts(t, reg)["execute/unnamed/ok"] == 1
	}, 5*time.Second, 20*time.Millisecond)

	for _, name := range []string{prompg.QueryDurationName, "pgxpool_total_conns"} {
		mf := families(t, reg)[name]
		require.NotNil(t, mf, name)
		assert.Contains(t, mf.GetMetric()[0].GetLabel(), &dto.LabelPair{Name: new("pool"), Value: new("orders")}, name)
	}
}
