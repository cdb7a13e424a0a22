package prompg

import "github.com/prometheus/client_golang/prometheus"

// DefaultMaxMetricNames is how many distinct metric names a QueryObserver
// keeps as label values unless WithMaxMetricNames says otherwise.
const DefaultMaxMetricNames = 100

// An Option changes a QueryObserver or a PoolCollector.
type Option interface {
	apply(*options)
}

type options struct {
	buckets        []float64
	constLabels    prometheus.Labels
	maxMetricNames int
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

func newOptions(opts []Option) options {
	o := options{
		buckets:        prometheus.DefBuckets,
		maxMetricNames: DefaultMaxMetricNames,
	}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	return o
}

// WithBuckets sets the upper bounds, in seconds, of the duration
// histogram's buckets. Without it, or with no bounds, the histogram uses
// prometheus.DefBuckets (5 ms to 10 s), which covers queries from an
// index lookup to a report.
func WithBuckets(bounds ...float64) Option {
	return optionFunc(func(o *options) {
		if len(bounds) > 0 {
			o.buckets = append([]float64(nil), bounds...)
		}
	})
}

// WithConstLabels adds labels with fixed values to every metric, such as
// {"service": "widgets"} for applications that share a registry.
// Prometheus accepts neither two collectors with the same metrics and
// label values nor one metric name with different label names, so give
// every collector of a registry the same label names.
//
// The pool label (PoolLabel) already tells the instances of an
// application apart. A pool label given here replaces it: every instance
// is then reported under that one value, the query durations of all of
// them in one set of series, and the statistics of only the first pool,
// as the others' collide with it (ErrPoolCollectorConflict). It suits an
// application with one pool whose series were labelled pool="<name>"
// before the label existed.
func WithConstLabels(labels prometheus.Labels) Option {
	return optionFunc(func(o *options) {
		if len(labels) == 0 {
			return
		}
		merged := make(prometheus.Labels, len(o.constLabels)+len(labels))
		for k, v := range o.constLabels {
			merged[k] = v
		}
		for k, v := range labels {
			merged[k] = v
		}
		o.constLabels = merged
	})
}

// WithMaxMetricNames sets how many distinct metric names a QueryObserver
// keeps as values of the metric_name label; the events of any further name
// are counted under "other". It bounds the number of time series a
// mistaken per-request metric name can create. n <= 0 keeps the default,
// DefaultMaxMetricNames.
func WithMaxMetricNames(n int) Option {
	return optionFunc(func(o *options) {
		if n > 0 {
			o.maxMetricNames = n
		}
	})
}
