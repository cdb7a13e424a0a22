package main

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg/prompg"
)

// metricsHandler serves /metrics.
type metricsHandler http.Handler

// metricsModule exports the pool's metrics (prompg: connection pool
// statistics and sprocketspg_query_duration_seconds) and serves them at
// /metrics. The application has a registry of its own rather than
// prometheus's global one, which prompg would otherwise use, so that two
// applications in one process (as in the tests) do not collide.
var metricsModule = fx.Options(
	prompg.Module,
	fx.Provide(
		newRegistry,
		func(r *prometheus.Registry) prometheus.Registerer { return r },
		func(r *prometheus.Registry) prometheus.Gatherer { return r },
		func(g prometheus.Gatherer) metricsHandler {
			return promhttp.HandlerFor(g, promhttp.HandlerOpts{})
		},
	),
)

// newRegistry returns a registry with the Go runtime and process
// collectors that prometheus's default registry would have had.
func newRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return r
}
