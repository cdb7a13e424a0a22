package otelpg

import (
	"context"

	"github.com/jackc/pgx/v5"
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

// Module instruments every database instance of the application with
// OpenTelemetry: sprocketspg.Module's and each of sprocketspg.Named, as
// sprocketspg.InstancesGroup lists them. It adds the otelpgx tracer to
// sprocketspg.OptionsGroup and an Observer to sprocketspg.ObserversGroup
// (New), which every instance's pool uses, and records each pool's
// connection statistics from the end of the pools' start until the
// application stops (RecordStatsHooks).
//
// The spans, otelpgx's per-statement metrics, the operation histogram and
// the statistics of a named instance carry its name as PoolNameKey
// (db.client.connection.pool.name): the tracer option
// (sprocketspg.WithInstanceTracer) gives each pool a tracer of its own.
//
// It uses the trace.TracerProvider and metric.MeterProvider of the graph
// when there are any, and the OpenTelemetry globals otherwise. Module
// expects sprocketspg.Module, sprocketspg.Named, or both (or another
// provider of *sprocketspg.Pool that reads those groups) in the same
// application, but requires none of them: an application with only named
// instances needs no unnamed *sprocketspg.Pool.
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

	// Tracer makes the otelpgx tracer of each instance's pool, as a
	// sprocketspg.WithInstanceTracer option.
	Tracer sprocketspg.Option `group:"sprocketspg_options"`

	// Observer records the duration of the operations of every
	// instance's pool.
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
		Tracer: sprocketspg.WithInstanceTracer(func(instance string) pgx.QueryTracer {
			return newInstanceTracer(o, instance)
		}),
		Observer: obs,
	}, nil
}

// StatsParams are the inputs of RecordStatsHooks. Fields added later will
// be optional.
type StatsParams struct {
	fx.In

	// Instances are the application's database instances, from
	// sprocketspg.InstancesGroup.
	Instances []sprocketspg.Instance `group:"sprocketspg_instances"`

	// Pool is an unnamed pool from a provider of its own, which puts
	// nothing in sprocketspg.InstancesGroup; its statistics are recorded
	// too. sprocketspg.Module's pool is also among Instances, and is
	// recorded once.
	Pool *sprocketspg.Pool `optional:"true"`

	Lifecycle fx.Lifecycle

	// MeterProvider records the statistics; without one the global
	// provider does.
	MeterProvider metric.MeterProvider `optional:"true"`

	// Options come from the OptionsGroup value group.
	Options []Option `group:"otelpg_options"`
}

// RecordStatsHooks appends the lifecycle hooks that record the connection
// statistics of each pool of p.Instances (and of p.Pool): RecordStats on
// start, the stop functions on stop. Because it takes the instances, fx
// builds every pool, and appends the pools' own hooks, first: recording
// starts after all the pools have connected and stops before any of them
// closes. Start fails with RecordStats's error, having stopped what it had
// started.
func RecordStatsHooks(p StatsParams) {
	o := newOptions(withGraph(nil, p.MeterProvider, p.Options))
	pools := sprocketspg.InstancePools(p.Instances, p.Pool)
	var stops []func()
	stopAll := func() {
		for _, stop := range stops {
			stop()
		}
		stops = nil
	}
	p.Lifecycle.Append(fx.Hook{
		OnStart: func(context.Context) error {
			for _, pool := range pools {
				stop, err := recordStats(pool, o)
				if err != nil {
					// fx runs no OnStop for a hook whose OnStart failed.
					stopAll()
					return err
				}
				stops = append(stops, stop)
			}
			return nil
		},
		OnStop: func(context.Context) error {
			stopAll()
			return nil
		},
	})
}

// withGraph puts the providers found in the graph before opts, so that
// the options of OptionsGroup win.
func withGraph(tp trace.TracerProvider, mp metric.MeterProvider, opts []Option) []Option {
	return append([]Option{WithTracerProvider(tp), WithMeterProvider(mp)}, opts...)
}
