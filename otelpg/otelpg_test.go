package otelpg_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/exaring/otelpgx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/otelpg"
)

const maxPoolSize = 4

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// telemetry is an in-memory OpenTelemetry SDK.
type telemetry struct {
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
}

func newTelemetry(t *testing.T) *telemetry {
	t.Helper()
	spans := tracetest.NewSpanRecorder()
	reader := sdkmetric.NewManualReader()
	tel := &telemetry{
		spans:  spans,
		tp:     sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)),
		reader: reader,
		mp:     sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)),
	}
	t.Cleanup(func() {
		assert.NoError(t, tel.tp.Shutdown(context.Background()))
		assert.NoError(t, tel.mp.Shutdown(context.Background()))
	})
	return tel
}

// supply puts the providers in the graph under their API interfaces.
func (tel *telemetry) supply() fx.Option {
	return fx.Options(
		fx.Supply(fx.Annotate(tel.tp, fx.As(new(trace.TracerProvider)))),
		fx.Supply(fx.Annotate(tel.mp, fx.As(new(metric.MeterProvider)))),
	)
}

// metrics collects every metric by name.
func (tel *telemetry) metrics(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, tel.reader.Collect(context.Background(), &rm))
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[sm.Scope.Name+" "+m.Name] = m
			if _, ok := out[m.Name]; !ok {
				out[m.Name] = m
			}
		}
	}
	return out
}

// durationCounts returns the count of the operation histogram by
// "operation/metric_name/error.type", summed over instances.
func (tel *telemetry) durationCounts(t *testing.T) map[string]uint64 {
	t.Helper()
	counts := map[string]uint64{}
	for key, n := range tel.poolDurationCounts(t) {
		_, rest, _ := strings.Cut(key, "|")
		counts[rest] += n
	}
	return counts
}

// poolDurationCounts returns the count of each data point of the
// operation histogram, keyed by
// "db.client.connection.pool.name|operation/metric_name/error.type", the
// pool name empty when the attribute is absent.
func (tel *telemetry) poolDurationCounts(t *testing.T) map[string]uint64 {
	t.Helper()
	counts := map[string]uint64{}
	m, ok := tel.metrics(t)[otelpg.ScopeName+" "+otelpg.OperationDurationName]
	if !ok {
		return counts
	}
	h, ok := m.Data.(metricdata.Histogram[float64])
	require.True(t, ok, "%s is a float histogram, not %T", otelpg.OperationDurationName, m.Data)
	for _, dp := range h.DataPoints {
		system, _ := dp.Attributes.Value("db.system.name")
		assert.Equal(t, "postgresql", system.AsString())
		pool, hasPool := dp.Attributes.Value(otelpg.PoolNameKey)
		if hasPool {
			require.NotEmpty(t, pool.AsString(), "a pool name, or none")
		}
		op, _ := dp.Attributes.Value("db.operation.name")
		name, _ := dp.Attributes.Value(otelpg.MetricNameKey)
		errType, _ := dp.Attributes.Value("error.type")
		counts[pool.AsString()+"|"+op.AsString()+"/"+name.AsString()+"/"+errType.AsString()] = dp.Count
	}
	return counts
}

func int64Value(t *testing.T, m metricdata.Metrics) int64 {
	t.Helper()
	switch d := m.Data.(type) {
	case metricdata.Gauge[int64]:
		require.Len(t, d.DataPoints, 1)
		return d.DataPoints[0].Value
	case metricdata.Sum[int64]:
		require.Len(t, d.DataPoints, 1)
		return d.DataPoints[0].Value
	}
	t.Fatalf("%s: unexpected data %T", m.Name, m.Data)
	return 0
}

func spanAttrs(s sdktrace.ReadOnlySpan) map[attribute.Key]string {
	out := map[attribute.Key]string{}
	for _, kv := range s.Attributes() {
		out[kv.Key] = kv.Value.Emit()
	}
	return out
}

// querySpans returns the ended spans of statements named name, leaving
// out those of the statements' preparation, which otelpgx names alike but
// marks with the prepared statement's name.
func querySpans(tel *telemetry, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range tel.spans.Ended() {
		if _, prepare := spanAttrs(s)[otelpgx.PrepareStmtNameKey]; s.Name() == name && !prepare {
			out = append(out, s)
		}
	}
	return out
}

func poolConfig(c sprocketspg.Config) sprocketspg.Config {
	c.MaxPoolSize = maxPoolSize
	c.MinPoolSize = 1
	return c
}

func TestModuleTracesAndRecords(t *testing.T) {
	tel := newTelemetry(t)
	var pool *sprocketspg.Pool
	fxtest_helpers.NewApp(t, otelpg.Module, tel.supply(), fx.Decorate(poolConfig), fx.Populate(&pool))

	// otelpgx starts statement spans only inside a recording span, as a
	// request handler's would be.
	ctx, parent := tel.tp.Tracer("test").Start(ctxT(t), "request")
	_, err := pool.Execute(sprocketspg.WithMetricName(ctx, "one"), "SELECT 1")
	require.NoError(t, err)
	_, err = pool.Execute(ctx, "SELECT 2")
	require.NoError(t, err)
	_, err = pool.Execute(sprocketspg.WithMetricName(ctx, "broken"), "SELECT * FROM no_such_table")
	require.Error(t, err)
	parent.End()

	selects := querySpans(tel, "SELECT")
	require.Len(t, selects, 3, "one span per statement")
	span := selects[0]
	assert.Equal(t, parent.SpanContext().SpanID(), span.Parent().SpanID())
	assert.Equal(t, trace.SpanKindClient, span.SpanKind())
	attrs := spanAttrs(span)
	assert.Equal(t, "postgresql", attrs["db.system.name"])
	assert.Equal(t, "SELECT 1", attrs["db.query.text"])
	assert.Equal(t, "SELECT", attrs["db.operation.name"])
	assert.NotEmpty(t, attrs["db.namespace"], "the database name")
	failed := spanAttrs(selects[2])
	assert.Equal(t, "42P01", failed["pgx.sql_state"])

	// Observers run on a goroutine of their own.
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, map[string]uint64{
			"execute/one/":         1,
			"execute/unnamed/":     1,
			"execute/broken/42P01": 1,
		}, tel.durationCounts(t))
	}, 5*time.Second, 20*time.Millisecond)

	metrics := tel.metrics(t)
	// otelpgx's own per-statement histogram runs beside ours.
	assert.Contains(t, metrics, "github.com/exaring/otelpgx db.client.operation.duration")
	maxConns, ok := metrics["pgxpool.max_connections"]
	require.True(t, ok, "pool statistics are recorded after start")
	assert.Equal(t, int64(maxPoolSize), int64Value(t, maxConns))
	total, ok := metrics["pgxpool.total_connections"]
	require.True(t, ok)
	assert.GreaterOrEqual(t, int64Value(t, total), int64(1))
	assert.LessOrEqual(t, int64Value(t, total), int64(maxPoolSize))
	for _, name := range []string{"pgxpool.idle_connections", "pgxpool.acquired_connections", "pgxpool.acquires", "pgxpool.new_connections"} {
		assert.Contains(t, metrics, name)
	}
}

func TestModuleWithQueryLog(t *testing.T) {
	tel := newTelemetry(t)
	core, logs := observer.New(zapcore.InfoLevel)
	var pool *sprocketspg.Pool
	fxtest_helpers.NewApp(t, otelpg.Module, tel.supply(),
		fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
			c.LogQueries = true
			return poolConfig(c)
		}),
		// Keep the test's own log and capture the pool's too.
		fx.Decorate(func(l *zap.Logger) *zap.Logger {
			return zap.New(zapcore.NewTee(l.Core(), core))
		}),
		fx.Populate(&pool),
	)

	ctx, parent := tel.tp.Tracer("test").Start(ctxT(t), "request")
	_, err := pool.Execute(sprocketspg.WithMetricName(ctx, "logged"), "SELECT 1")
	require.NoError(t, err)
	parent.End()

	// Both tracers saw the statement: the span of otelpgx ...
	selects := querySpans(tel, "SELECT")
	require.Len(t, selects, 1)
	assert.Equal(t, "SELECT 1", spanAttrs(selects[0])["db.query.text"])
	// ... and the statement log.
	var logged []observer.LoggedEntry
	for _, e := range logs.FilterMessage("postgres Query").All() {
		if e.ContextMap()["sql"] == "SELECT 1" {
			logged = append(logged, e)
		}
	}
	assert.Len(t, logged, 1, "the statement log line")
	// ... and the observer.
	assert.Eventually(t, func() bool {
		return tel.durationCounts(t)["execute/logged/"] == 1
	}, 5*time.Second, 20*time.Millisecond)
}

func TestModuleStopsStatsOnStop(t *testing.T) {
	tel := newTelemetry(t)
	url := fxtest_helpers.NewDatabase(t)
	var pool *sprocketspg.Pool
	app := fxtest.New(t,
		sprocketspg.Module,
		otelpg.Module,
		tel.supply(),
		fx.Supply(zaptest.NewLogger(t)),
		fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
			c.URL = url
			return poolConfig(c)
		}),
		fx.Populate(&pool),
	)
	assert.NotContains(t, tel.metrics(t), "pgxpool.total_connections", "nothing before start")
	app.RequireStart()
	assert.Contains(t, tel.metrics(t), "pgxpool.total_connections")
	app.RequireStop()
	assert.NotContains(t, tel.metrics(t), "pgxpool.total_connections", "nothing after stop")
}

func TestRecordStatsWithoutFx(t *testing.T) {
	tel := newTelemetry(t)
	opts, err := otelpg.PoolOptions(
		otelpg.WithTracerProvider(tel.tp),
		otelpg.WithMeterProvider(tel.mp),
		otelpg.WithBuckets(0.001, 0.1, 1),
		otelpg.WithMaxMetricNames(1),
	)
	require.NoError(t, err)
	cfg := poolConfig(sprocketspg.Config{
		URL:               fxtest_helpers.NewDatabase(t),
		ConnectionTimeout: 5 * time.Second,
		ConnectionTTL:     5 * time.Minute,
		QueryTimeout:      30 * time.Second,
		UUID:              true,
	})
	pool, err := sprocketspg.New(ctxT(t), cfg, append(opts, sprocketspg.WithLogger(zaptest.NewLogger(t)))...)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	stop, err := otelpg.RecordStats(pool,
		otelpg.WithMeterProvider(tel.mp),
		otelpg.WithStatsOptions(otelpgxPoolName("orders")))
	require.NoError(t, err)

	ctx, parent := tel.tp.Tracer("test").Start(ctxT(t), "request")
	for _, name := range []string{"first", "second", "first"} {
		_, err := pool.Execute(sprocketspg.WithMetricName(ctx, name), "SELECT 1")
		require.NoError(t, err)
	}
	parent.End()
	assert.Len(t, querySpans(tel, "SELECT"), 3)
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, map[string]uint64{
			"execute/first/": 2,
			"execute/other/": 1, // beyond WithMaxMetricNames(1)
		}, tel.durationCounts(t))
	}, 5*time.Second, 20*time.Millisecond)

	metrics := tel.metrics(t)
	total, ok := metrics["pgxpool.total_connections"]
	require.True(t, ok)
	sum, ok := total.Data.(metricdata.Sum[int64])
	require.True(t, ok)
	require.Len(t, sum.DataPoints, 1)
	poolName, _ := sum.DataPoints[0].Attributes.Value("app.pool")
	assert.Equal(t, "orders", poolName.AsString())
	hist := metrics[otelpg.ScopeName+" "+otelpg.OperationDurationName].Data.(metricdata.Histogram[float64])
	assert.Equal(t, []float64{0.001, 0.1, 1}, hist.DataPoints[0].Bounds)

	stop()
	stop() // a second call does nothing
	assert.NotContains(t, tel.metrics(t), "pgxpool.total_connections")
}

func TestRecordStatsNeedsStartedPool(t *testing.T) {
	tel := newTelemetry(t)
	url := fxtest_helpers.NewDatabase(t)
	var pool *sprocketspg.Pool
	app := fxtest.New(t,
		sprocketspg.Module,
		fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
			c.URL = url
			return c
		}),
		fx.Populate(&pool),
	)
	_, err := otelpg.RecordStats(pool, otelpg.WithMeterProvider(tel.mp))
	require.ErrorIs(t, err, otelpg.ErrPoolNotStarted, "before start")

	app.RequireStart()
	stop, err := otelpg.RecordStats(pool, otelpg.WithMeterProvider(tel.mp))
	require.NoError(t, err)
	stop()
	app.RequireStop()

	_, err = otelpg.RecordStats(pool, otelpg.WithMeterProvider(tel.mp))
	require.ErrorIs(t, err, otelpg.ErrPoolNotStarted, "after stop")
	_, err = otelpg.RecordStats(nil)
	require.ErrorIs(t, err, otelpg.ErrPoolNotStarted)
}

func TestModuleUsesGlobalProviders(t *testing.T) {
	tel := newTelemetry(t)
	prevTP, prevMP := otel.GetTracerProvider(), otel.GetMeterProvider()
	otel.SetTracerProvider(tel.tp)
	otel.SetMeterProvider(tel.mp)
	t.Cleanup(func() {
		otel.SetTracerProvider(prevTP)
		otel.SetMeterProvider(prevMP)
	})

	var pool *sprocketspg.Pool
	fxtest_helpers.NewApp(t, otelpg.Module, fx.Populate(&pool))
	ctx, parent := otel.Tracer("test").Start(ctxT(t), "request")
	_, err := pool.Execute(sprocketspg.WithMetricName(ctx, "global"), "SELECT 1")
	require.NoError(t, err)
	parent.End()

	assert.Len(t, querySpans(tel, "SELECT"), 1)
	assert.Eventually(t, func() bool {
		return tel.durationCounts(t)["execute/global/"] == 1
	}, 5*time.Second, 20*time.Millisecond)
	assert.Contains(t, tel.metrics(t), "pgxpool.total_connections")
}

// otelpgxPoolName labels pool statistics with name, as a service with
// several pools would.
func otelpgxPoolName(name string) otelpgx.StatsOption {
	return otelpgx.WithStatsAttributes(attribute.String("app.pool", name))
}
