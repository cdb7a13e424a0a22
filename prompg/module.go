package prompg

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/listen"
)

// OptionsGroup is the fx value group whose Options Module applies to its
// QueryObserver and to the PoolCollector of every instance; for example
//
//	fx.Supply(fx.Annotate(prompg.WithConstLabels(prometheus.Labels{"service": "widgets"}),
//		fx.As(new(prompg.Option)), fx.ResultTags(`group:"prompg_options"`)))
const OptionsGroup = "prompg_options"

// Module exports the metrics of every database instance of the
// application to Prometheus: sprocketspg.Module's and each of
// sprocketspg.Named, as sprocketspg.InstancesGroup lists them. It provides
// a *QueryObserver, which it adds to sprocketspg.ObserversGroup so that
// every instance's pool reports to it, and, once the pools have started,
// registers that observer and a PoolCollector of each pool with the
// prometheus.Registerer of the graph, or with
// prometheus.DefaultRegisterer when the graph has none. It unregisters
// them all when the application stops.
//
// With package listen in the application, it also exports each
// listener's notifications received and dropped, handler errors and
// reconnects (ListenerCollector), from listen.ListenersGroup.
//
// Every series carries the pool label (PoolLabel) naming its instance;
// the default instance's is "", which Prometheus stores as no label, so
// its series are the ones an application with one database always had.
//
// Module expects sprocketspg.Module, sprocketspg.Named, or both, in the
// same application, but requires neither: an application with only named
// instances needs no unnamed *sprocketspg.Pool.
var Module = fx.Module("prompg",
	fx.Provide(NewObserver),
	fx.Invoke(RegisterHooks),
)

// ObserverParams are the inputs of NewObserver.
type ObserverParams struct {
	fx.In

	// Options come from the OptionsGroup value group.
	Options []Option `group:"prompg_options"`

	// Listeners are the application's notification listeners, from
	// listen.ListenersGroup; each gets a ListenerCollector.
	Listeners []*listen.Listener `group:"listen_listeners"`
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

	// Instances are the application's database instances, from
	// sprocketspg.InstancesGroup.
	Instances []sprocketspg.Instance `group:"sprocketspg_instances"`

	// Pool is an unnamed pool from a provider of its own, which puts
	// nothing in sprocketspg.InstancesGroup; its statistics are exported
	// too. sprocketspg.Module's pool is also among Instances, and is
	// exported once.
	Pool *sprocketspg.Pool `optional:"true"`

	QueryObserver *QueryObserver
	Lifecycle     fx.Lifecycle

	// Registerer receives the collectors; without one they go to
	// prometheus.DefaultRegisterer.
	Registerer prometheus.Registerer `optional:"true"`

	// Logger is told when a pool's statistics cannot be registered
	// because another pool's with the same labels already are; without
	// one nothing is logged.
	Logger *zap.Logger `optional:"true"`

	// Options come from the OptionsGroup value group.
	Options []Option `group:"prompg_options"`

	// Listeners are the application's notification listeners, from
	// listen.ListenersGroup; each gets a ListenerCollector.
	Listeners []*listen.Listener `group:"listen_listeners"`
}

// RegisterHooks appends the lifecycle hooks of Module: on start, register
// p.QueryObserver, a PoolCollector of each pool of p.Instances (and of
// p.Pool) and a ListenerCollector of each of p.Listeners; on stop,
// unregister them. Because it takes the instances, fx
// builds every pool, and appends the pools' own hooks, first: the
// collectors are registered only after all the pools have connected and
// unregistered before any of them closes.
//
// Start fails when the registry refuses a collector, for example because
// a different metric with the same name is registered. Another pool's
// statistics registered with the same labels, as those of the same
// instance of another application sharing the registry, are not an error
// but a warning naming the instance, so that the application keeps
// running; that pool's statistics are then not exported. The same holds
// for a listener's.
func RegisterHooks(p Params) {
	reg := p.Registerer
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	logger := p.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	pools := sprocketspg.InstancePools(p.Instances, p.Pool)
	var unregister []func()
	undoAll := func() {
		for _, undo := range unregister {
			undo()
		}
		unregister = nil
	}
	p.Lifecycle.Append(fx.Hook{
		OnStart: func(context.Context) error {
			undo, err := Register(reg, p.QueryObserver)
			if err != nil {
				return err
			}
			unregister = append(unregister, undo)
			for _, pool := range pools {
				undo, err := Register(reg, NewPoolCollector(pool, p.Options...))
				switch {
				case errors.Is(err, ErrPoolCollectorConflict):
					logger.Warn("postgres pool statistics not exported to prometheus: another pool's with the same labels are registered; "+
						"give each application sharing the registry its own labels with prompg.WithConstLabels, and set no pool label there",
						zap.String("instance", pool.Name()), zap.Error(err))
				case err != nil:
					// fx runs no OnStop for a hook whose OnStart failed.
					undoAll()
					return err
				default:
					unregister = append(unregister, undo)
				}
			}
			// By instance name, the default first, as the pools: which of
			// two colliding collectors is exported does not change from run
			// to run.
			listeners := slices.Clone(p.Listeners)
			slices.SortStableFunc(listeners, func(a, b *listen.Listener) int { return strings.Compare(a.Instance(), b.Instance()) })
			for _, l := range listeners {
				undo, err := Register(reg, NewListenerCollector(l, p.Options...))
				switch {
				case errors.Is(err, ErrPoolCollectorConflict):
					logger.Warn("postgres listener statistics not exported to prometheus: another listener's with the same labels are registered; "+
						"give each application sharing the registry its own labels with prompg.WithConstLabels, and set no pool label there",
						zap.String("instance", l.Instance()), zap.Error(err))
				case err != nil:
					undoAll()
					return err
				default:
					unregister = append(unregister, undo)
				}
			}
			return nil
		},
		OnStop: func(context.Context) error {
			undoAll()
			return nil
		},
	})
}
