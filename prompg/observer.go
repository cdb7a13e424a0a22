package prompg

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/internal/metricname"
)

// QueryDurationName is the name of the histogram a QueryObserver exports.
const QueryDurationName = "sprocketspg_query_duration_seconds"

// PoolLabel is the label that names the instance (sprocketspg.Named,
// sprocketspg.WithName) a series belongs to, on the histogram and on the
// pool statistics. The default instance's value is "", which Prometheus
// stores as no label at all: an application with one database keeps the
// series it had before instances had names, and its dashboards keep
// working. A label of that name given with WithConstLabels replaces it.
const PoolLabel = "pool"

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
// sprocketspg_query_duration_seconds{operation, metric_name, outcome,
// pool}. It is also the prometheus.Collector of that histogram.
//
// One QueryObserver may observe several pools, as Module's observes every
// instance of the application: the pool label (PoolLabel) tells them
// apart by QueryEvent.Instance. It is safe for concurrent use, which that
// needs, since each pool delivers its events from a goroutine of its own.
// Use NewQueryObserver to make one.
type QueryObserver struct {
	// vec is swapped for an identical histogram already registered when
	// Register finds one, so observations reach the registry either way.
	// The registry takes one only with the same label names, so byPool
	// holds for it too.
	vec   atomic.Pointer[prometheus.HistogramVec]
	names *metricname.Limiter
	// byPool is whether the histogram has the pool label; it has not when
	// WithConstLabels fixed the label's value.
	byPool bool
}

// NewQueryObserver returns a QueryObserver configured by opts. Hand it to
// the pool with sprocketspg.WithObserver (Module does so through
// sprocketspg.ObserversGroup) and register it with Register.
func NewQueryObserver(opts ...Option) *QueryObserver {
	o := newOptions(opts)
	labels := []string{"operation", "metric_name", "outcome"}
	// A constant and a variable label of one name would make an invalid
	// descriptor; the caller's constant wins, as it did before the label
	// existed.
	_, fixed := o.constLabels[PoolLabel]
	if !fixed {
		labels = append(labels, PoolLabel)
	}
	vec := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:        QueryDurationName,
		Help:        "Duration of sprocketspg Execute, Callproc and Transaction calls, retries included.",
		Buckets:     o.buckets,
		ConstLabels: o.constLabels,
	}, labels)
	q := &QueryObserver{
		names:  metricname.NewLimiter(o.maxMetricNames, UnnamedMetric, OtherMetric),
		byPool: !fixed,
	}
	q.vec.Store(vec)
	return q
}

// ObserveQuery records ev's duration under its operation, metric name,
// outcome and instance. The instances of an application are fixed when it
// starts, so the pool label's values stay as few as they are.
func (q *QueryObserver) ObserveQuery(ev sprocketspg.QueryEvent) {
	outcome := OutcomeOK
	if ev.Err != nil {
		outcome = OutcomeError
	}
	op, name := string(ev.Operation), q.names.Label(ev.MetricName)
	vec := q.vec.Load()
	if q.byPool {
		vec.WithLabelValues(op, name, outcome, ev.Instance).Observe(ev.Duration.Seconds())
		return
	}
	vec.WithLabelValues(op, name, outcome).Observe(ev.Duration.Seconds())
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
