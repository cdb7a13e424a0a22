package prompg

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/internal/metricname"
)

// QueryDurationName is the name of the histogram a QueryObserver exports.
const QueryDurationName = "sprocketspg_query_duration_seconds"

// Label values a QueryObserver uses besides the names and operations it
// is given.
const (
	// UnnamedMetric is the metric_name of an operation run without
	// sprocketspg.WithMetricName.
	UnnamedMetric = "unnamed"
	// OtherMetric is the metric_name of an operation whose name came after
	// the limit set with WithMaxMetricNames was reached.
	OtherMetric = "other"
	// OutcomeOK is the outcome of an operation that returned no error.
	OutcomeOK = "ok"
	// OutcomeError is the outcome of an operation that returned an error.
	OutcomeError = "error"
)

var _ interface {
	sprocketspg.Observer
	prometheus.Collector
} = (*QueryObserver)(nil)

// A QueryObserver is a sprocketspg.Observer that records the duration of
// every Execute, Callproc and Transaction in the histogram
// sprocketspg_query_duration_seconds{operation, metric_name, outcome}. It
// is also the prometheus.Collector of that histogram. One QueryObserver
// may observe several pools. Use NewQueryObserver to make one.
type QueryObserver struct {
	// vec is swapped for an identical histogram already registered when
	// Register finds one, so observations reach the registry either way.
	vec   atomic.Pointer[prometheus.HistogramVec]
	names *metricname.Limiter
}

// NewQueryObserver returns a QueryObserver configured by opts. Hand it to
// the pool with sprocketspg.WithObserver (Module does so through
// sprocketspg.ObserversGroup) and register it with Register.
func NewQueryObserver(opts ...Option) *QueryObserver {
	o := newOptions(opts)
	vec := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:        QueryDurationName,
		Help:        "Duration of sprocketspg Execute, Callproc and Transaction calls, retries included.",
		Buckets:     o.buckets,
		ConstLabels: o.constLabels,
	}, []string{"operation", "metric_name", "outcome"})
	q := &QueryObserver{names: metricname.NewLimiter(o.maxMetricNames, UnnamedMetric, OtherMetric)}
	q.vec.Store(vec)
	return q
}

// ObserveQuery records ev's duration under its operation, metric name and
// outcome.
func (q *QueryObserver) ObserveQuery(ev sprocketspg.QueryEvent) {
	outcome := OutcomeOK
	if ev.Err != nil {
		outcome = OutcomeError
	}
	q.vec.Load().WithLabelValues(string(ev.Operation), q.names.Label(ev.MetricName), outcome).
		Observe(ev.Duration.Seconds())
}

// Describe implements prometheus.Collector.
func (q *QueryObserver) Describe(ch chan<- *prometheus.Desc) {
	q.vec.Load().Describe(ch)
}

// Collect implements prometheus.Collector.
func (q *QueryObserver) Collect(ch chan<- prometheus.Metric) {
	q.vec.Load().Collect(ch)
}

// adopt makes q record into existing, a histogram with the same
// descriptor that was registered first, and reports whether it could.
func (q *QueryObserver) adopt(existing prometheus.Collector) bool {
	switch e := existing.(type) {
	case *QueryObserver:
		q.vec.Store(e.vec.Load())
	case *prometheus.HistogramVec:
		q.vec.Store(e)
	default:
		return false
	}
	return true
}
