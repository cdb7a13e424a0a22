package otelpg

import (
	"github.com/exaring/otelpgx"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// DefaultMaxMetricNames is how many distinct metric names an Observer
// keeps as attribute values unless WithMaxMetricNames says otherwise.
const DefaultMaxMetricNames = 100

// An Option changes how this package instruments a pool.
type Option interface {
	apply(*options)
}

type options struct {
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	tracerOptions  []otelpgx.Option
	statsOptions   []otelpgx.StatsOption
	buckets        []float64
	maxMetricNames int
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// newOptions applies opts over the defaults. The global providers are
// read here, not when the package loads, so that a provider installed
// with otel.SetTracerProvider before the pool is built is the one used.
func newOptions(opts []Option) options {
	o := options{maxMetricNames: DefaultMaxMetricNames}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	if o.tracerProvider == nil {
		o.tracerProvider = otel.GetTracerProvider()
	}
	if o.meterProvider == nil {
		o.meterProvider = otel.GetMeterProvider()
	}
	return o
}

// WithTracerProvider makes spans with tp. Without it, or with nil, the
// global provider (otel.GetTracerProvider) is used.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(o *options) {
		if tp != nil {
			o.tracerProvider = tp
		}
	})
}

// WithMeterProvider records metrics with mp. Without it, or with nil, the
// global provider (otel.GetMeterProvider) is used.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(o *options) {
		if mp != nil {
			o.meterProvider = mp
		}
	})
}

// WithTracerOptions passes opts to otelpgx.NewTracer, after the providers
// of WithTracerProvider and WithMeterProvider, so they may override them;
// for example otelpgx.WithIncludeQueryParameters or
// otelpgx.WithDisableSQLStatementInAttributes.
func WithTracerOptions(opts ...otelpgx.Option) Option {
	return optionFunc(func(o *options) {
		o.tracerOptions = append(o.tracerOptions, opts...)
	})
}

// WithStatsOptions passes opts to otelpgx.RecordStats, after the provider
// of WithMeterProvider; for example otelpgx.WithStatsAttributes to tell
// several pools apart.
func WithStatsOptions(opts ...otelpgx.StatsOption) Option {
	return optionFunc(func(o *options) {
		o.statsOptions = append(o.statsOptions, opts...)
	})
}

// WithBuckets sets the explicit bucket boundaries, in seconds, of the
// sprocketspg.operation.duration histogram. Without it the histogram uses
// the boundaries OpenTelemetry's database conventions advise for
// db.client.operation.duration (1 ms to 10 s).
func WithBuckets(bounds ...float64) Option {
	return optionFunc(func(o *options) {
		if len(bounds) > 0 {
			o.buckets = append([]float64(nil), bounds...)
		}
	})
}

// WithMaxMetricNames sets how many distinct metric names an Observer
// keeps as values of the sprocketspg.metric_name attribute; the events of
// any further name are recorded under "other". It bounds the number of
// time series a mistaken per-request metric name can create. n <= 0 keeps
// the default, DefaultMaxMetricNames.
func WithMaxMetricNames(n int) Option {
	return optionFunc(func(o *options) {
		if n > 0 {
			o.maxMetricNames = n
		}
	})
}
