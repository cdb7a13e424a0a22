// Package otelpg instruments sprocketspg pools with OpenTelemetry:
//
//   - traces and per-statement metrics through github.com/exaring/otelpgx,
//     installed with sprocketspg.WithTracer, so it runs beside the
//     statement log of Config.LogQueries and any other pgx tracer;
//   - the duration of every Execute, Callproc and Transaction as the
//     histogram sprocketspg.operation.duration, fed by a
//     sprocketspg.Observer;
//   - each pool's connection statistics (pgxpool.total_connections,
//     pgxpool.idle_connections, ...) through otelpgx.RecordStats, from the
//     moment the pool has started until it stops.
//
// The package lives apart from sprocketspg so that a service that does not
// use OpenTelemetry never links it.
//
// With fx, add Module next to sprocketspg.Module and any
// sprocketspg.Named instances:
//
//	fx.New(sprocketspg.Module, sprocketspg.Named("orders"), otelpg.Module, ...)
//
// It instruments every instance of the application
// (sprocketspg.InstancesGroup), with the trace.TracerProvider and
// metric.MeterProvider of the graph when there are any, and the
// OpenTelemetry globals otherwise.
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
// first 100 distinct names of all instances, see WithMaxMetricNames),
// for a named instance (sprocketspg.Named, sprocketspg.WithName)
// db.client.connection.pool.name with the instance's name (PoolNameKey),
// and, for a failed operation, error.type (the SQLSTATE of a server error,
// else "_OTHER"). The SQL text is never an attribute of a metric.
//
// The pool statistics carry db.system.name and
// db.client.connection.pool.name: the instance's name for a named
// instance, and for the default instance otelpgx's
// "<host>:<port>/<database>", what OpenTelemetry's conventions advise for
// a pool without a name. The default instance's measurements are thus the
// same as an application with one database always had.
//
// The spans and otelpgx's per-statement metrics of a named instance carry
// db.client.connection.pool.name too: under Module each pool gets a tracer
// of its own (sprocketspg.WithInstanceTracer). Without fx, give each
// pool's tracer the name:
//
//	otelpg.PoolOptions(otelpg.WithTracerOptions(otelpgx.WithTracerAttributes(
//		otelpg.PoolNameKey.String("orders"))), ...)
package otelpg
