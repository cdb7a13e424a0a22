// Package prompg exports the metrics of a sprocketspg.Pool to Prometheus:
// the statistics of its connection pool, through
// github.com/IBM/pgxpoolprometheus, and the duration of every Execute,
// Callproc and Transaction as the histogram
// sprocketspg_query_duration_seconds, fed by a sprocketspg.Observer.
//
// The package lives apart from sprocketspg so that a service that does not
// use Prometheus never links its client library.
//
// With fx, add Module next to sprocketspg.Module:
//
//	fx.New(sprocketspg.Module, prompg.Module, ...)
//
// It registers with the prometheus.Registerer of the graph, or with
// prometheus.DefaultRegisterer when there is none, once the pool has
// started, and unregisters when the application stops.
//
// Without fx, build the observer before the pool and the pool collector
// after it:
//
//	obs := prompg.NewQueryObserver()
//	pool, err := sprocketspg.New(ctx, cfg, sprocketspg.WithObserver(obs))
//	...
//	unregister, err := prompg.Register(reg, obs, prompg.NewPoolCollector(pool))
//
// # Labels
//
// The histogram has three labels, each with a bounded set of values, so a
// scrape never grows with traffic:
//
//   - operation: execute, callproc or transaction (sprocketspg.Operation).
//   - metric_name: the name given with sprocketspg.WithMetricName, "unnamed"
//     when none was, and "other" for every name beyond the first 100
//     distinct ones (see WithMaxMetricNames). Metric names are meant to be
//     constants in code, never values built from a request.
//   - outcome: ok, or error when the caller got an error.
//
// The SQL text is never a label.
//
// The pool statistics are the pgxpool_* metrics of pgxpoolprometheus
// (pgxpool_total_conns, pgxpool_max_conns, ...). They are reported only
// while the pool is connected; before it starts and after it stops the
// collector reports nothing.
package prompg
