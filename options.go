package sprocketspg

import (
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg/discovery"
	"github.com/sprockets/sprocketspg/instance"
)

// An Option changes how New and Module build a Pool.
type Option interface {
	apply(*options)
}

type options struct {
	name        string // the instance's name; "" for the default
	nameErr     error  // a name WithName refused
	logger      *zap.Logger
	loggerNamed bool // logger already carries the instance's name
	resolver    discovery.Resolver
	observers   []Observer
	credentials CredentialsFunc
	// instanceCredentials make a CredentialsFunc for the instance's name.
	instanceCredentials func(instance string) CredentialsFunc
	tracers             []pgx.QueryTracer
	// instanceTracers make tracers for the instance's name.
	instanceTracers []func(instance string) pgx.QueryTracer
	poolConfigs     []func(*pgxpool.Config)
	extensions      []instance.Extension
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
// them (hooks.go): BeforeConnect, AfterConnect and BeforeClose run after
// the pool's (which resolve SRV hosts, set credentials and TLS from files,
// register the types Config asks for and track idle connections),
// ShouldPing is asked when the pool's own check does not ask for a ping,
// and a ConnConfig.Tracer runs beside the pool's tracers. A
// ConnConfig.TLSConfig that fn sets is replaced on each connection while
// Config's SSL settings, or TLS files in the URL, apply.
func WithPoolConfig(fn func(*pgxpool.Config)) Option {
	return optionFunc(func(o *options) {
		if fn != nil {
			o.poolConfigs = append(o.poolConfigs, fn)
		}
	})
}

// WithName names the pool as an instance of the application, as Named
// does under fx: its errors and logs say which instance they concern
// (logs carry an "instance" field), QueryEvent.Instance reports name, and
// configuration errors name the instance's variables (ORDERS_POSTGRES_URL
// for "orders"). name follows the rule of Named; New and NewPool fail for
// any other. Without it, or with "", the pool is the default instance.
func WithName(name string) Option {
	return optionFunc(func(o *options) {
		o.name, o.nameErr = name, validateInstanceName(name)
		if o.nameErr != nil {
			o.nameErr = fmt.Errorf("sprocketspg.WithName(%q): %w", name, o.nameErr)
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
