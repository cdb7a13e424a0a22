package sprocketspg

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg/discovery"
	"github.com/sprockets/sprocketspg/instance"
)

// Module provides a Config loaded from the environment (LoadConfig), a
// *Pool built from it (NewPool), connected on start and closed on stop, the
// discovery.Resolver that looks up postgresql+srv:// and aws+srv:// hosts
// (NewResolver), and a *health.Checker of the pool, and of every Named
// instance of the application, ready from the end of start-up until stop
// begins.
//
// Override configuration in code with fx.Decorate, which keeps the
// environment's other values:
//
//	fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
//		c.MaxPoolSize = 20
//		return c
//	})
//
// or replace it whole with fx.Replace(cfg). Module is the default
// instance; add others with Named.
var Module = instanceModule("")

// InstancesGroup is the fx value group in which every instance of the
// application, Module's and each Named one, puts its Instance: for
// plug-ins that serve all of them, such as metrics.
const InstancesGroup = "sprocketspg_instances"

// Instance is one database instance of an application, as InstancesGroup
// holds it.
type Instance struct {
	// Name is the instance's name; "" for Module's.
	Name string
	// Pool is the instance's pool.
	Pool *Pool
}

// InstancePools returns the pools of instances, and those of extra that
// are not among them, each once: the default instance's first, the others
// by name, then extra's. fx does not promise the order of a value group;
// a plug-in that serves every instance (metrics, say) does the same from
// run to run with this order. Nil pools are left out.
func InstancePools(instances []Instance, extra ...*Pool) []*Pool {
	sorted := slices.Clone(instances)
	slices.SortStableFunc(sorted, func(a, b Instance) int { return strings.Compare(a.Name, b.Name) })
	pools := make([]*Pool, 0, len(sorted)+len(extra))
	add := func(p *Pool) {
		if p != nil && !slices.Contains(pools, p) {
			pools = append(pools, p)
		}
	}
	for _, in := range sorted {
		add(in.Pool)
	}
	for _, p := range extra {
		add(p)
	}
	return pools
}

// instanceNameRule is the rule of Named, as its errors state it.
const instanceNameRule = `^[a-z][a-z0-9_]*$`

var instanceName = regexp.MustCompile(instanceNameRule)

// ErrInvalidInstanceName is matched (errors.Is) by the error of a Named
// or WithName whose name breaks the rule.
var ErrInvalidInstanceName = fmt.Errorf("invalid instance name: want a lower-case letter, then lower-case letters, digits and underscores (%s)", instanceNameRule)

func validateInstanceName(name string) error {
	if name != "" && !instanceName.MatchString(name) {
		return fmt.Errorf("instance name %q: %w", name, ErrInvalidInstanceName)
	}
	return nil
}

// EnvPrefix returns the prefix of the environment variables of the
// instance called name: "ORDERS_" for "orders", so that it reads
// ORDERS_POSTGRES_URL; "" for the default instance.
func EnvPrefix(name string) string {
	return instance.EnvPrefix(name)
}

// Named adds a database instance called name to the application, with
// everything Module gives the default one: it provides, tagged
// `name:"<name>"`, a Config loaded from the variables with the instance's
// prefix (EnvPrefix: Named("orders") reads ORDERS_POSTGRES_URL,
// ORDERS_POSTGRES_MAX_POOL_SIZE, ... ORDERS_POSTGRES_READ_URL, with the
// defaults and rules of LoadConfig), a *Pool connected on start and closed
// on stop, and a *health.Checker of that pool. A constructor takes them
// with fx.In fields such as
//
//	Orders *sprocketspg.Pool `name:"orders"`
//
// or with fx.Annotate(newThing, fx.ParamTags(`name:"orders"`)). Decorate
// the instance's Config as the default one's, with the tags:
//
//	fx.Decorate(fx.Annotate(func(c sprocketspg.Config) sprocketspg.Config {
//		c.MaxPoolSize = 20
//		return c
//	}, fx.ParamTags(`name:"orders"`), fx.ResultTags(`name:"orders"`)))
//
// Its errors, logs ("instance" field) and QueryEvent.Instance name it. The
// observers of ObserversGroup, the options of OptionsGroup and the
// discovery.Resolver (Module's, when there is one) serve every instance.
// Named may be combined with Module and with other Named instances; a name
// that breaks the rule ^[a-z][a-z0-9_]*$, or one used twice, fails fx.New.
func Named(name string) fx.Option {
	if name == "" {
		return fx.Error(fmt.Errorf("sprocketspg.Named(\"\"): %w; the default instance is Module", ErrInvalidInstanceName))
	}
	if err := validateInstanceName(name); err != nil {
		return fx.Error(fmt.Errorf("sprocketspg.Named(%q): %w", name, err))
	}
	return instanceModule(name)
}

// instanceModule is the fx module of the instance called name: Module for
// "", Named's otherwise. It is the one code path of both.
func instanceModule(name string) fx.Option {
	if name == "" {
		// The exported constructors themselves, so that fx's errors name
		// them.
		return fx.Module(instance.ModuleName("sprocketspg", name),
			fx.Provide(LoadConfig, NewPool, NewResolver, provideChecker),
			// The pool connects on start even when nothing else asks for
			// it, as the original connected on application start.
			fx.Invoke(func(*Pool) {}),
		)
	}
	tag := instance.Tag(name)
	prefix := EnvPrefix(name)
	return fx.Module(instance.ModuleName("sprocketspg", name),
		fx.Provide(
			fx.Annotate(func() (Config, error) { return LoadConfigPrefix(prefix) }, fx.ResultTags(tag)),
			// Positional parameters, since only they can take the
			// instance's tag; they are Params's fields, in order.
			fx.Annotate(
				func(cfg Config, lc fx.Lifecycle, logger *zap.Logger, resolver discovery.Resolver,
					observers []Observer, options []Option, throwaway ThrowawayStarter,
				) (*Pool, Instance, instance.Handle, error) {
					pool, err := buildPool(name, Params{
						Config: cfg, Lifecycle: lc, Logger: logger, Resolver: resolver,
						Observers: observers, Options: options, Throwaway: throwaway,
					})
					if err != nil {
						return nil, Instance{}, nil, err
					}
					return pool, Instance{Name: name, Pool: pool}, pool.Handle(), nil
				},
				fx.ParamTags(tag, ``, `optional:"true"`, `optional:"true"`,
					`group:"`+ObserversGroup+`"`, `group:"`+OptionsGroup+`"`, `optional:"true"`),
				fx.ResultTags(tag, `group:"`+InstancesGroup+`"`, `group:"`+instance.HandlesGroup+`"`)),
			fx.Annotate(provideNamedChecker,
				fx.ParamTags(tag, ``, `optional:"true"`, `group:"`+HealthOptionsGroup+`"`), fx.ResultTags(tag)),
		),
		fx.Invoke(fx.Annotate(func(*Pool) {}, fx.ParamTags(tag))),
	)
}
