package sprocketspg

import (
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg/discovery"
	"github.com/sprockets/sprocketspg/instance"
)

// OptionsGroup is the fx value group whose Options Module applies to the
// pool, after its own. Use ProvideOptions to add to it.
const OptionsGroup = "sprocketspg_options"

// Params are the inputs of NewPool. Fields added later will be optional,
// so code that builds Params by hand keeps compiling.
type Params struct {
	fx.In

	Config    Config
	Lifecycle fx.Lifecycle

	// Logger receives the pool's logs; without one the pool logs nothing.
	Logger *zap.Logger `optional:"true"`

	// Resolver looks up the hosts of a postgresql+srv:// or aws+srv://
	// URL. Module provides NewResolver's.
	Resolver discovery.Resolver `optional:"true"`

	// Observers come from the ObserversGroup value group (AsObserver).
	Observers []Observer `group:"sprocketspg_observers"`

	// Options come from the OptionsGroup value group.
	Options []Option `group:"sprocketspg_options"`

	// Throwaway, supplied by ThrowawayWhenUnset, starts a server for a
	// Config without a URL. Development only.
	Throwaway ThrowawayStarter `optional:"true"`
}

// Result is what NewPool provides.
type Result struct {
	fx.Out

	Pool *Pool

	// Instance is the pool as the default instance, in InstancesGroup.
	Instance Instance `group:"sprocketspg_instances"`

	// Handle is the pool as the packages that extend it see it, in
	// instance.HandlesGroup.
	Handle instance.Handle `group:"sprocketspg_handles"`
}

// ProvideOptions adds opts to the OptionsGroup value group, so Module
// applies them when it builds the pool; for example
// ProvideOptions(WithPoolConfig(func(c *pgxpool.Config) { c.ConnConfig.Tracer = t })).
func ProvideOptions(opts ...Option) fx.Option {
	provides := make([]fx.Option, 0, len(opts))
	for _, opt := range opts {
		provides = append(provides, fx.Supply(fx.Annotate(opt, fx.As(new(Option)), fx.ResultTags(`group:"sprocketspg_options"`))))
	}
	return fx.Options(provides...)
}
