package sprocketspg

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg/health"
)

// EnvShutdownDelay is the environment variable from which Module takes the
// drain delay of its *health.Checker (health.WithDrainDelay): seconds
// ("5", "1.5") or a Go duration ("500ms"); unset means zero.
const EnvShutdownDelay = "SHUTDOWN_DELAY"

// HealthOptionsGroup is the fx value group whose health.Options Module
// applies to the *health.Checker it provides, such as
// health.WithApplication. Use ProvideHealthOptions to add to it.
const HealthOptionsGroup = "sprocketspg_health_options"

// CheckerParams are the inputs of the *health.Checker Module provides.
type CheckerParams struct {
	fx.In

	Pool      *Pool
	Lifecycle fx.Lifecycle

	// Logger receives the checker's logs: changes of the databases'
	// health and the start of a drain.
	Logger *zap.Logger `optional:"true"`

	// Instances are the application's instances (InstancesGroup); the
	// checker covers the Named ones too, each under its own check names.
	Instances []Instance `group:"sprocketspg_instances"`

	// Options come from the HealthOptionsGroup value group; they apply
	// after Module's own, so health.WithDrainDelay there wins over
	// SHUTDOWN_DELAY.
	Options []health.Option `group:"sprocketspg_health_options"`
}

// ProvideHealthOptions adds opts to the HealthOptionsGroup value group.
func ProvideHealthOptions(opts ...health.Option) fx.Option {
	provides := make([]fx.Option, 0, len(opts))
	for _, opt := range opts {
		provides = append(provides, fx.Supply(fx.Annotate(opt, fx.As(new(health.Option)), fx.ResultTags(`group:"sprocketspg_health_options"`))))
	}
	return fx.Options(provides...)
}

// NewChecker returns a health.Checker of pool, for use without fx. Its
// checks run through pool's own connections, under the check names of the
// pool's instance (WithName); readiness follows the pool: it fails before
// the pool has started and from the moment Shutdown begins. Add other
// instances' pools with health.WithInstance, or join checkers with
// health.Combine.
func NewChecker(pool *Pool, opts ...health.Option) *health.Checker {
	c := newPoolChecker(pool, opts)
	c.SetReady(true)
	return c
}

// newPoolChecker is the checker of pool, named after its instance, with
// its read replica, then opts.
func newPoolChecker(pool *Pool, opts []health.Option) *health.Checker {
	own := []health.Option{health.WithName(pool.name)}
	if r := replicaHealth(pool); r != nil {
		own = append(own, health.WithReplica(r))
	}
	return health.NewChecker(poolHealth{pool}, append(own, opts...)...)
}

// provideChecker builds Module's checker: of the default pool and of every
// Named instance, each under its own check names (postgres:* for the
// default, postgres-orders:* for "orders"), so that /readyz fails while
// any required one is down (health.OptionalInstance makes one a warning).
// It is ready from the end of start-up to the beginning of stop: it takes
// every pool, so its hooks are appended after theirs, fx runs its OnStart
// after they have connected and its OnStop before they start to close, and
// readiness fails while in-flight work drains. Its drain delay comes from
// SHUTDOWN_DELAY; a value that does not parse fails the application's
// construction with an error naming the variable.
func provideChecker(p CheckerParams) (*health.Checker, error) {
	var others []Instance
	for _, in := range p.Instances {
		if in.Name != "" {
			others = append(others, in)
		}
	}
	return newLifecycleChecker(p.Pool, others, p.Lifecycle, p.Logger, p.Options)
}

// provideNamedChecker builds a Named instance's own checker, of its pool
// alone, under its check names.
func provideNamedChecker(pool *Pool, lc fx.Lifecycle, logger *zap.Logger, opts []health.Option) (*health.Checker, error) {
	return newLifecycleChecker(pool, nil, lc, logger, opts)
}

// newLifecycleChecker is the checker of main and others whose readiness
// gate follows lc, with opts applied after its own.
func newLifecycleChecker(main *Pool, others []Instance, lc fx.Lifecycle, logger *zap.Logger, opts []health.Option) (*health.Checker, error) {
	delay, err := shutdownDelay(os.Getenv(EnvShutdownDelay))
	if err != nil {
		return nil, err
	}
	own := []health.Option{health.WithDrainDelay(delay)}
	if logger != nil {
		own = append(own, health.WithLogger(logger))
	}
	for _, in := range others {
		own = append(own, health.WithInstance(in.Name, poolHealth{in.Pool}, replicaHealth(in.Pool)))
	}
	c := newPoolChecker(main, append(own, opts...))
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			c.SetReady(true)
			return nil
		},
		OnStop: func(context.Context) error {
			c.SetReady(false)
			return nil
		},
	})
	return c, nil
}

// shutdownDelay parses the value of SHUTDOWN_DELAY.
func shutdownDelay(raw string) (time.Duration, error) {
	if raw == "" {
		return 0, nil
	}
	d, err := parseSeconds(raw)
	if err != nil {
		return 0, &ConfigError{Variable: EnvShutdownDelay, Value: raw, Reason: err.Error()}
	}
	if d < 0 {
		return 0, &ConfigError{Variable: EnvShutdownDelay, Value: raw, Reason: "must not be negative (0 turns it off)"}
	}
	return d, nil
}

// replicaHealth shows pool's read replica to the health package; nil
// without one.
func replicaHealth(pool *Pool) health.Database {
	if pool.replica == nil {
		return nil
	}
	return poolHealth{pool.replica.pool}
}

// poolHealth shows a Pool to the health package, with the health
// components of its extensions.
type poolHealth struct{ p *Pool }

var _ health.ComponentSource = poolHealth{}

func (h poolHealth) Components() []health.Component { return h.p.components() }

func (h poolHealth) Ping(ctx context.Context) error { return h.p.Ping(ctx) }

func (h poolHealth) Stats() health.Stats {
	pool := h.p.pool.Load()
	if pool == nil || !h.p.connected.Load() {
		return health.Stats{}
	}
	return health.StatsFromPgxpool(pool.Stat())
}

// Ping acquires a connection from the pool and checks that the server
// answers. Unlike the embedded pgxpool method it is safe before start and
// after stop, where it returns ErrNotConnected, and a ping that ctx ended
// returns an error matching ctx.Err(); errors never contain the password.
func (p *Pool) Ping(ctx context.Context) error {
	pool, err := p.livePool()
	if err != nil {
		return err
	}
	if err := pool.Ping(ctx); err != nil {
		return p.scrub(fmt.Errorf("ping postgres at %s: %w", p.target, callError(ctx, err)))
	}
	return nil
}
