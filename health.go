package sprocketspg

import (
	"context"
	"fmt"

	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg/health"
)

// HealthOptionsGroup is the fx value group whose health.Options Module
// applies to the *health.Checker it provides, such as
// health.WithApplication. Use ProvideHealthOptions to add to it.
const HealthOptionsGroup = "sprocketspg_health_options"

// CheckerParams are the inputs of the *health.Checker Module provides.
type CheckerParams struct {
	fx.In

	Pool      *Pool
	Lifecycle fx.Lifecycle

	// Options come from the HealthOptionsGroup value group.
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
// checks run through pool's own connections; readiness follows the pool:
// it fails before the pool has started and from the moment Shutdown
// begins.
func NewChecker(pool *Pool, opts ...health.Option) *health.Checker {
	c := health.NewChecker(poolHealth{pool}, withReplicaCheck(pool, opts)...)
	c.SetReady(true)
	return c
}

// provideChecker builds Module's checker. It is ready from the end of
// start-up to the beginning of stop: its hooks are appended after the
// pool's, so fx runs its OnStart after the pool has connected and its
// OnStop before the pool starts to close, and readiness fails while
// in-flight work drains.
func provideChecker(p CheckerParams) *health.Checker {
	c := health.NewChecker(poolHealth{p.Pool}, withReplicaCheck(p.Pool, p.Options)...)
	p.Lifecycle.Append(fx.Hook{
		OnStart: func(context.Context) error {
			c.SetReady(true)
			return nil
		},
		OnStop: func(context.Context) error {
			c.SetReady(false)
			return nil
		},
	})
	return c
}

// withReplicaCheck adds the read replica, if pool has one, to the checks.
func withReplicaCheck(pool *Pool, opts []health.Option) []health.Option {
	if pool.replica == nil {
		return opts
	}
	return append([]health.Option{health.WithReplica(poolHealth{pool.replica.pool})}, opts...)
}

// poolHealth shows a Pool to the health package.
type poolHealth struct{ p *Pool }

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
// after stop, where it returns ErrNotConnected; other errors never contain
// the password.
func (p *Pool) Ping(ctx context.Context) error {
	pool, err := p.livePool()
	if err != nil {
		return err
	}
	if err := pool.Ping(ctx); err != nil {
		return p.scrub(fmt.Errorf("ping postgres at %s: %w", p.target, err))
	}
	return nil
}
