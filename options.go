package sprocketspg

import (
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg/discovery"
)

// An Option changes how New and Module build a Pool.
type Option interface {
	apply(*options)
}

type options struct {
	logger      *zap.Logger
	resolver    discovery.Resolver
	observers   []Observer
	tracers     []pgx.QueryTracer
	poolConfigs []func(*pgxpool.Config)
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithLogger sends the pool's logs to logger. Without it the pool logs
// nothing.
func WithLogger(logger *zap.Logger) Option {
	return optionFunc(func(o *options) {
		if logger != nil {
			o.logger = logger
		}
	})
}

// WithPoolConfig calls fn with the pgxpool configuration after every
// setting from Config has been applied and before the pool is built: the
// escape hatch for tracers, dialers, TLS and hooks. Several are applied in
// order.
//
// Hooks that fn sets compose with the pool's own instead of replacing
// them: BeforeConnect, AfterConnect and BeforeClose run after the pool's
// (which resolve SRV hosts, register the types Config asks for and track
// idle connections), ShouldPing is asked when the pool's own check does
// not ask for a ping, and a ConnConfig.Tracer runs beside the pool's
// tracers.
func WithPoolConfig(fn func(*pgxpool.Config)) Option {
	return optionFunc(func(o *options) {
		if fn != nil {
			o.poolConfigs = append(o.poolConfigs, fn)
		}
	})
}

// WithResolver makes a pool whose URL uses the postgresql+srv:// or
// aws+srv:// scheme look up its hosts with r. Without it such a pool
// uses discovery.NewDNSResolver(); a pool with a plain URL never uses a
// resolver.
func WithResolver(r discovery.Resolver) Option {
	return optionFunc(func(o *options) {
		if r != nil {
			o.resolver = r
		}
	})
}
