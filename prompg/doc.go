// Package prompg exports the metrics of sprocketspg pools to Prometheus:
// the statistics of each connection pool, through
// github.com/IBM/pgxpoolprometheus, and the duration of every Execute,
// Callproc and Transaction as the histogram
// sprocketspg_query_duration_seconds, fed by a sprocketspg.Observer.
//
// The package lives apart from sprocketspg so that a service that does not
// use Prometheus never links its client library.
//
// With fx, add Module next to sprocketspg.Module and any
// sprocketspg.Named instances:
//
//	fx.New(sprocketspg.Module, sprocketspg.Named("orders"), prompg.Module, ...)
//
// It exports every instance of the application (sprocketspg.InstancesGroup)
// to the prometheus.Registerer of the graph, or to
// prometheus.DefaultRegisterer when there is none, once all the pools have
// started, and unregisters before they close.
//
// Without fx, build the observer before the pools and the pool collectors
// after them:
//
//	obs := prompg.NewQueryObserver()
//	pool, err := sprocketspg.New(ctx, cfg, sprocketspg.WithObserver(obs))
//	...
//	orders, err := sprocketspg.New(ctx, ordersCfg, sprocketspg.WithName("orders"), sprocketspg.WithObserver(obs))
//	...
//	unregister, err := prompg.Register(reg, obs, prompg.NewPoolCollector(pool), prompg.NewPoolCollector(orders))
//
// # Labels
//
// The histogram has four labels, each with a bounded set of values, so a
// scrape never grows with traffic:
//
//   - operation: execute, callproc or transaction (sprocketspg.Operation).
//   - metric_name: the name given with sprocketspg.WithMetricName, "unnamed"
//     when none was, and "other" for every name beyond the first 100
//     distinct ones (see WithMaxMetricNames), counted over all instances.
//     Metric names are meant to be constants in code, never values built
//     from a request.
//   - outcome: ok, or error when the caller got an error.
//   - pool: the name of the instance whose pool ran the operation
//     (sprocketspg.Named, sprocketspg.WithName); the instances are fixed
//     when the application starts.
//
// The SQL text is never a label.
//
// The pool statistics are the pgxpool_* metrics of pgxpoolprometheus
// (pgxpool_total_conns, pgxpool_max_conns, ...), one series per instance,
// with the same pool label. They are reported only while the pool is
// connected; before it starts and after it stops its collector reports
// nothing.
//
// The default instance's pool label is "" (the exposition reads pool=""),
// which Prometheus stores as no label at all: an application with one
// database has the series it had before instances had names, and its
// queries and dashboards keep working. Select the default instance's
// series with pool="" and a named one's with pool="orders".
package prompg
