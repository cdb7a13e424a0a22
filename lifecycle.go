package sprocketspg

import (
	"strings"

	"go.uber.org/fx"
)

// NewPool builds the Pool for Module from its Params and ties it to the
// application's lifecycle: OnStart connects (retrying until the
// connection timeout), OnStop marks the pool not connected and closes it
// within the stop context. It does no I/O itself and returns an error
// matching ErrInvalidConfig, naming the environment variable, when the
// Config cannot work.
//
// With ThrowawayWhenUnset in the application and no URL in the Config,
// NewPool starts a throwaway server first and uses it.
func NewPool(p Params) (Result, error) {
	pool, err := buildPool("", p)
	if err != nil {
		return Result{}, err
	}
	return Result{Pool: pool, Instance: Instance{Pool: pool}, Handle: pool.Handle()}, nil
}

// buildPool is NewPool for the instance called name ("" for the default),
// the one code path of Module and Named.
func buildPool(name string, p Params) (*Pool, error) {
	cfg := p.Config
	if p.Throwaway != nil && strings.TrimSpace(cfg.URL) == "" {
		var err error
		if cfg, err = useThrowaway(name, cfg, p.Throwaway, p.Lifecycle, p.Logger); err != nil {
			return nil, err
		}
	}
	opts := make([]Option, 0, len(p.Options)+len(p.Observers)+3)
	opts = append(opts, WithName(name))
	if p.Logger != nil {
		opts = append(opts, WithLogger(p.Logger))
	}
	if p.Resolver != nil {
		opts = append(opts, WithResolver(p.Resolver))
	}
	for _, o := range p.Observers {
		opts = append(opts, WithObserver(o))
	}
	opts = append(opts, p.Options...)
	pool, err := newPool(cfg, opts...)
	if err != nil {
		return nil, err
	}
	p.Lifecycle.Append(fx.Hook{
		OnStart: pool.start,
		OnStop:  pool.Shutdown,
	})
	return pool, nil
}
