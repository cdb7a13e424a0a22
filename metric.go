package sprocketspg

import "context"

type metricNameKey struct{}

// WithMetricName returns a copy of ctx that names the queries run with it,
// as the Python original's metric_name argument did. Execute, Callproc and
// Transaction report the name to observers (QueryEvent.MetricName), or in
// their debug log line when there are none, and put it in their errors.
func WithMetricName(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, metricNameKey{}, name)
}

// MetricName returns the name set by WithMetricName, or "" when none is.
func MetricName(ctx context.Context) string {
	name, _ := ctx.Value(metricNameKey{}).(string)
	return name
}
