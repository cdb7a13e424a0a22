package prompg

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg"
)

// OptionsGroup is the fx value group whose Options Module applies to its
// QueryObserver and PoolCollector; for example
//
//	fx.Supply(fx.Annotate(prompg.WithConstLabels(prometheus.Labels{"pool": "orders"}),
//		fx.As(new(prompg.Option)), fx.ResultTags(`group:"prompg_options"`)))
const OptionsGroup = "prompg_options"

// Module exports the metrics of the application's sprocketspg.Pool to
// Prometheus. It provides a *QueryObserver, which it adds to
// sprocketspg.ObserversGroup, and, once the pool has started, registers
// that observer and a PoolCollector of the pool with the
// prometheus.Registerer of the graph, or with
// prometheus.DefaultRegisterer when the graph has none. It unregisters
// both when the application stops.
//
// Module expects sprocketspg.Module (or another provider of
// *sprocketspg.Pool) in the same application.
var Module = fx.Module("prompg",
	fx.Provide(NewObserver),
	fx.Invoke(RegisterHooks),
)

// ObserverParams are the inputs of NewObserver.
type ObserverParams struct {
	fx.In

	// Options come from the OptionsGroup value group.
	Options []Option `group:"prompg_options"`
}

// ObserverResult is what NewObserver provides: the QueryObserver, both as
// itself and as a member of sprocketspg.ObserversGroup.
type ObserverResult struct {
	fx.Out

	QueryObserver *QueryObserver
	Observer      sprocketspg.Observer `group:"sprocketspg_observers"`
}

// NewObserver builds the QueryObserver of Module from the options of
// OptionsGroup. It does no I/O and cannot fail.
func NewObserver(p ObserverParams) ObserverResult {
	q := NewQueryObserver(p.Options...)
	return ObserverResult{QueryObserver: q, Observer: q}
}

// Params are the inputs of RegisterHooks. Fields added later will be
// optional.
type Params struct {
	fx.In

	Pool          *sprocketspg.Pool
	QueryObserver *QueryObserver
	Lifecycle     fx.Lifecycle

	// Registerer receives the collectors; without one they go to
	// prometheus.DefaultRegisterer.
	Registerer prometheus.Registerer `optional:"true"`

	// Logger is told when the pool's statistics cannot be registered
	// because another pool's already are; without one nothing is logged.
	Logger *zap.Logger `optional:"true"`

	// Options come from the OptionsGroup value group.
	Options []Option `group:"prompg_options"`
}

// RegisterHooks appends the lifecycle hooks of Module: on start, register
// p.QueryObserver and a PoolCollector of p.Pool; on stop, unregister them.
// Because it takes the pool, fx builds the pool, and appends the pool's
// own hooks, first: the collectors are registered only after the pool has
// connected and unregistered before it closes.
//
// Start fails when the registry refuses a collector, for example because
// a different metric with the same name is registered; another pool's
// statistics registered with the same labels are not an error but a
// warning, so that applications sharing a registry keep running.
func RegisterHooks(p Params) {
	reg := p.Registerer
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	logger := p.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	var unregister []func()
	p.Lifecycle.Append(fx.Hook{
		OnStart: func(context.Context) error {
			undo, err := Register(reg, p.QueryObserver)
			if err != nil {
				return err
			}
			unregister = append(unregister, undo)
			undo, err = Register(reg, NewPoolCollector(p.Pool, p.Options...))
			switch {
			case errors.Is(err, ErrPoolCollectorConflict):
				logger.Warn("postgres pool statistics not exported to prometheus; give each pool its own labels with prompg.WithConstLabels",
					zap.Error(err))
			case err != nil:
				// fx runs no OnStop for a hook whose OnStart failed.
				for _, undo := range unregister {
					undo()
				}
				unregister = nil
				return err
			default:
				unregister = append(unregister, undo)
			}
			return nil
		},
		OnStop: func(context.Context) error {
			for _, undo := range unregister {
				undo()
			}
			unregister = nil
			return nil
		},
	})
}
