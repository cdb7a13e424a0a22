package otelpg

import (
	"github.com/exaring/otelpgx"

	"github.com/sprockets/sprocketspg"
)

// NewTracer returns the otelpgx tracer configured by opts: spans from the
// tracer provider, otelpgx's per-statement metrics from the meter
// provider, then the otelpgx options of WithTracerOptions. Install it with
// sprocketspg.WithTracer; PoolOptions does so.
func NewTracer(opts ...Option) *otelpgx.Tracer {
	return newTracer(newOptions(opts))
}

func newTracer(o options) *otelpgx.Tracer {
	return newInstanceTracer(o, "")
}

// newInstanceTracer is the tracer of the pool of the instance called
// instance: its spans and metrics carry the name as PoolNameKey, unless it
// is the default instance's (""), whose telemetry stays as it always was.
func newInstanceTracer(o options, instance string) *otelpgx.Tracer {
	tracerOpts := []otelpgx.Option{
		otelpgx.WithTracerProvider(o.tracerProvider),
		otelpgx.WithMeterProvider(o.meterProvider),
	}
	if instance != "" {
		name := PoolNameKey.String(instance)
		tracerOpts = append(tracerOpts, otelpgx.WithTracerAttributes(name), otelpgx.WithMeterAttributes(name))
	}
	return otelpgx.NewTracer(append(tracerOpts, o.tracerOptions...)...)
}

// PoolOptions returns the sprocketspg options that instrument a pool
// built with them: the otelpgx tracer (sprocketspg.WithTracer, so it
// composes with the pool's other tracers) and an Observer of its
// operations (sprocketspg.WithObserver). Pass them to sprocketspg.New, and
// call RecordStats once the pool has started for its connection
// statistics.
//
// PoolOptions returns NewObserver's error when the meter provider refuses
// the histogram.
func PoolOptions(opts ...Option) ([]sprocketspg.Option, error) {
	o := newOptions(opts)
	obs, err := newObserver(o)
	if err != nil {
		return nil, err
	}
	return []sprocketspg.Option{
		sprocketspg.WithTracer(newTracer(o)),
		sprocketspg.WithObserver(obs),
	}, nil
}
