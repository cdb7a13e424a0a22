package otelpg

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/internal/metricname"
)

// ScopeName is the instrumentation scope of the meter an Observer records
// with.
const ScopeName = "github.com/sprockets/sprocketspg/otelpg"

// OperationDurationName is the name of the histogram an Observer records.
// It is not db.client.operation.duration because otelpgx already records
// that one per statement: an Execute with a retry or a Transaction is
// several statements, and two instruments of one name would be summed
// together by most backends.
const OperationDurationName = "sprocketspg.operation.duration"

// MetricNameKey is the attribute that carries the name given with
// sprocketspg.WithMetricName.
const MetricNameKey = attribute.Key("sprocketspg.metric_name")

// PoolNameKey is the attribute that names the instance (sprocketspg.Named,
// sprocketspg.WithName) whose pool a measurement is of: OpenTelemetry's
// db.client.connection.pool.name, whose conventions ask for the pool's own
// name when it has one. The histogram of an Observer and the statistics of
// RecordStats carry it for a named instance. The default instance has no
// name: its operations are recorded without the attribute, and its
// statistics with the value otelpgx gives every pool,
// "<host>:<port>/<database>", which the conventions advise for a pool
// without a name; both are what they were before instances had names.
// An instance's name, lower-case letters, digits and underscores, never
// looks like that value.
const PoolNameKey = semconv.DBClientConnectionPoolNameKey

// Values of MetricNameKey besides the names an Observer is given.
const (
	// UnnamedMetric is the metric name of an operation run without
	// sprocketspg.WithMetricName.
	UnnamedMetric = "unnamed"
	// OtherMetric is the metric name of an operation whose name came after
	// the limit set with WithMaxMetricNames was reached.
	OtherMetric = "other"
)

// defaultBuckets are the boundaries OpenTelemetry's database conventions
// advise for db.client.operation.duration.
var defaultBuckets = []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10}

var _ sprocketspg.Observer = (*Observer)(nil)

// An Observer is a sprocketspg.Observer that records the duration of every
// Execute, Callproc and Transaction in the histogram
// sprocketspg.operation.duration (seconds).
//
// One Observer may observe several pools, as Module's observes every
// instance of the application: PoolNameKey tells the named instances
// apart by QueryEvent.Instance. It is safe for concurrent use, which that
// needs, since each pool delivers its events from a goroutine of its own.
// Use NewObserver to make one.
type Observer struct {
	histogram metric.Float64Histogram
	names     *metricname.Limiter
	system    attribute.KeyValue
}

// NewObserver returns an Observer recording with the meter provider of
// opts. Hand it to the pool with sprocketspg.WithObserver (Module does so
// through sprocketspg.ObserversGroup). It returns an error when the meter
// provider refuses the histogram.
func NewObserver(opts ...Option) (*Observer, error) {
	return newObserver(newOptions(opts))
}

func newObserver(o options) (*Observer, error) {
	buckets := o.buckets
	if len(buckets) == 0 {
		buckets = defaultBuckets
	}
	h, err := o.meterProvider.Meter(ScopeName).Float64Histogram(OperationDurationName,
		metric.WithDescription("Duration of sprocketspg Execute, Callproc and Transaction calls, retries included."),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(buckets...),
	)
	if err != nil {
		return nil, fmt.Errorf("create histogram %s: %w", OperationDurationName, err)
	}
	return &Observer{
		histogram: h,
		names:     metricname.NewLimiter(o.maxMetricNames, UnnamedMetric, OtherMetric),
		system:    semconv.DBSystemNamePostgreSQL,
	}, nil
}

// ObserveQuery records ev's duration with its operation, metric name, the
// name of its instance when it has one, and, when it failed, its error
// type. The instances of an application are fixed when it starts, so the
// values of PoolNameKey stay as few as they are.
func (o *Observer) ObserveQuery(ev sprocketspg.QueryEvent) {
	attrs := make([]attribute.KeyValue, 0, 5)
	attrs = append(attrs,
		o.system,
		semconv.DBOperationName(string(ev.Operation)),
		MetricNameKey.String(o.names.Label(ev.MetricName)),
	)
	if ev.Instance != "" {
		attrs = append(attrs, PoolNameKey.String(ev.Instance))
	}
	if ev.Err != nil {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errorType(ev.Err)))
	}
	// The event carries no context: the query's has ended by now, and
	// nothing here depends on one.
	o.histogram.Record(context.Background(), ev.Duration.Seconds(), metric.WithAttributes(attrs...))
}

// errorType is the error.type of err: the SQLSTATE of a server error, as
// OpenTelemetry's database conventions ask, else "_OTHER". Both keep the
// attribute's values few.
func errorType(err error) string {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code != "" {
		return pgErr.Code
	}
	return semconv.ErrorTypeOther.Value.AsString()
}
