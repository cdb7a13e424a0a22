package otelpg

import (
	"context"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
)

// OptionsGroup is the fx value group whose Options Module applies after
// the providers it takes from the graph; for example
//
//	fx.Supply(fx.Annotate(otelpg.WithTracerOptions(otelpgx.WithIncludeQueryParameters()),
//		fx.As(new(otelpg.Option)), fx.ResultTags(`group:"otelpg_options"`)))
const OptionsGroup = "otelpg_options"

// Module instruments the application's sprocketspg.Pool with
// OpenTelemetry. It adds the otelpgx tracer to sprocketspg.OptionsGroup
// and an Observer to sprocketspg.ObserversGroup (New), and records the
// pool's connection statistics from the end of the pool's start until
// the application stops (RecordStatsHooks).
//
// It uses the trace.TracerProvider and metric.MeterProvider of the graph
// when there are any, and the OpenTelemetry globals otherwise. Module
// expects sprocketspg.Module (or another provider of *sprocketspg.Pool
// that reads those groups) in the same application.
var Module = fx.Module("otelpg",
	fx.Provide(New),
	fx.Invoke(RecordStatsHooks),
)

// Params are the inputs of New. Fields added later will be optional.
type Params struct {
	fx.In

	// TracerProvider makes the spans; without one the global provider
	// does.
	TracerProvider trace.TracerProvider `optional:"true"`

	// MeterProvider records the metrics; without one the global provider
	// does.
	MeterProvider metric.MeterProvider `optional:"true"`

	// Options come from the OptionsGroup value group.
	Options []Option `group:"otelpg_options"`
}

// Result is what New provides: members of sprocketspg's value groups.
type Result struct {
	fx.Out

	// Tracer is the otelpgx tracer, as a sprocketspg.WithTracer option.
	Tracer sprocketspg.Option `group:"sprocketspg_options"`

	// Observer records the duration of the pool's operations.
	Observer sprocketspg.Observer `group:"sprocketspg_observers"`
}

// New builds the tracer and the Observer of Module. It does no I/O and
// returns NewObserver's error when the meter provider refuses the
// histogram.
func New(p Params) (Result, error) {
	o := newOptions(withGraph(p.TracerProvider, p.MeterProvider, p.Options))
	obs, err := newObserver(o)
	if err != nil {
		return Result{}, err
	}
	return Result{
		Tracer:   sprocketspg.WithTracer(newTracer(o)),
		Observer: obs,
	}, nil
}

// StatsParams are the inputs of RecordStatsHooks. Fields added later will
// be optional.
type StatsParams struct {
	fx.In

	Pool      *sprocketspg.Pool
	Lifecycle fx.Lifecycle

	// MeterProvider records the statistics; without one the global
	// provider does.
	MeterProvider metric.MeterProvider `optional:"true"`

	// Options come from the OptionsGroup value group.
	Options []Option `group:"otelpg_options"`
}

// RecordStatsHooks appends the lifecycle hooks that record p.Pool's
// connection statistics: RecordStats on start, its stop function on stop.
// Because it takes the pool, fx builds the pool, and appends the pool's
// own hooks, first: recording starts after the pool has connected and
// stops before it closes. Start fails with RecordStats's error.
func RecordStatsHooks(p StatsParams) {
	o := newOptions(withGraph(nil, p.MeterProvider, p.Options))
	var stop func()
	p.Lifecycle.Append(fx.Hook{
		OnStart: func(context.Context) error {
			var err error
			stop, err = recordStats(p.Pool, o)
			return err
		},
		OnStop: func(context.Context) error {
			if stop != nil {
				stop()
			}
			return nil
		},
	})
}

// withGraph puts the providers found in the graph before opts, so that
// the options of OptionsGroup win.
func withGraph(tp trace.TracerProvider, mp metric.MeterProvider, opts []Option) []Option {
	return append([]Option{WithTracerProvider(tp), WithMeterProvider(mp)}, opts...)
}
