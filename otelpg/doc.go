// Package otelpg instruments a sprocketspg.Pool with OpenTelemetry:
//
//   - traces and per-statement metrics through github.com/exaring/otelpgx,
//     installed with sprocketspg.WithTracer, so it runs beside the
//     statement log of Config.LogQueries and any other pgx tracer;
//   - the duration of every Execute, Callproc and Transaction as the
//     histogram sprocketspg.operation.duration, fed by a
//     sprocketspg.Observer;
//   - the pool's connection statistics (pgxpool.total_connections,
//     pgxpool.idle_connections, ...) through otelpgx.RecordStats, from the
//     moment the pool has started until it stops.
//
// The package lives apart from sprocketspg so that a service that does not
// use OpenTelemetry never links it.
//
// With fx, add Module next to sprocketspg.Module:
//
//	fx.New(sprocketspg.Module, otelpg.Module, ...)
//
// It uses the trace.TracerProvider and metric.MeterProvider of the graph
// when there are any, and the OpenTelemetry globals otherwise.
//
// Without fx:
//
//	opts, err := otelpg.PoolOptions(otelpg.WithTracerProvider(tp), otelpg.WithMeterProvider(mp))
//	...
//	pool, err := sprocketspg.New(ctx, cfg, opts...)
//	...
//	stop, err := otelpg.RecordStats(pool, otelpg.WithMeterProvider(mp))
//	...
//	defer stop()
//
// otelpgx starts a span for a statement only inside a recording span of
// the caller's context, as OpenTelemetry client libraries do; its metrics
// and those of this package are recorded either way.
//
// # Attributes
//
// sprocketspg.operation.duration carries a bounded set of attributes:
// db.system.name (postgresql), db.operation.name (execute, callproc or
// transaction), sprocketspg.metric_name (the name given with
// sprocketspg.WithMetricName, "unnamed" without one, "other" beyond the
// first 100 distinct names, see WithMaxMetricNames) and, for a failed
// operation, error.type (the SQLSTATE of a server error, else "_OTHER").
// The SQL text is never an attribute of a metric.
package otelpg
