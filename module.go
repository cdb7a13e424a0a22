package sprocketspg

import "go.uber.org/fx"

// Module provides a Config loaded from the environment (LoadConfig), a
// *Pool built from it (NewPool), connected on start and closed on stop, the
// discovery.Resolver that looks up postgresql+srv:// and aws+srv:// hosts
// (NewResolver), and a *health.Checker of the pool, ready from the end of
// start-up until stop begins.
//
// Override configuration in code with fx.Decorate, which keeps the
// environment's other values:
//
//	fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
//		c.MaxPoolSize = 20
//		return c
//	})
//
// or replace it whole with fx.Replace(cfg).
var Module = fx.Module("sprocketspg",
	fx.Provide(
		LoadConfig,
		NewPool,
		NewResolver,
		provideChecker,
	),
	// The pool connects on start even when nothing else asks for it, as the
	// original connected on application start.
	fx.Invoke(func(*Pool) {}),
)
