package sprocketspg

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/instance"
	"github.com/sprockets/sprocketspg/internal/redact"
)

// This file is where a pool meets the packages that extend its instance
// (migrate, for one) without their importing this package: the pool shows
// itself to them as an instance.Handle and runs their instance.Extensions
// inside its own start and stop.

// extensionStopTimeout bounds the stop of the extensions already started
// when a later one fails to start; the start context may have ended.
const extensionStopTimeout = 5 * time.Second

// WithExtension adds ext to the pool: its Start runs once the pool has
// connected, before start returns, and its Stop at the beginning of
// Shutdown. Packages such as migrate make Extensions; with fx, their
// options attach to the instance themselves.
func WithExtension(ext instance.Extension) Option {
	return optionFunc(func(o *options) { o.extensions = append(o.extensions, ext) })
}

// handle is the pool as an instance.Handle.
type handle struct{ p *Pool }

var _ instance.Handle = handle{}

// Handle returns the pool as the packages that extend its instance see it.
func (p *Pool) Handle() instance.Handle { return handle{p} }

func (h handle) Name() string                        { return h.p.name }
func (h handle) Logger() *zap.Logger                 { return h.p.logger }
func (h handle) Pool() *pgxpool.Pool                 { return h.p.pool.Load() }
func (h handle) Attach(ext instance.Extension) error { return h.p.attach(ext) }

func (h handle) ConnConfig(ctx context.Context, url, variable string) (*pgx.ConnConfig, error) {
	return h.p.connConfig(ctx, url, variable)
}

// attach adds ext to an unstarted pool. It takes extMu alone, not mu,
// so that an extension that attaches another while it starts or stops
// gets an error instead of waiting for itself.
func (p *Pool) attach(ext instance.Extension) error {
	p.extMu.Lock()
	defer p.extMu.Unlock()
	if p.extSealed {
		return fmt.Errorf("attach %s to postgres pool for %s: the pool has already started", extensionName(ext), p.target)
	}
	p.extensions = append(p.extensions, ext)
	return nil
}

// sealExtensions makes attach fail from now on: the pool is starting or
// stopping.
func (p *Pool) sealExtensions() {
	p.extMu.Lock()
	p.extSealed = true
	p.extMu.Unlock()
}

// components lists the health components of the pool's extensions.
func (p *Pool) components() []health.Component {
	p.extMu.Lock()
	defer p.extMu.Unlock()
	var out []health.Component
	for _, ext := range p.extensions {
		out = append(out, ext.Components...)
	}
	return out
}

// startExtensions runs the Start of each extension in order. When one
// fails, those started before it are stopped, and the error names it and
// the pool. Called with p.mu held, once the pool's connections are open.
func (p *Pool) startExtensions(ctx context.Context) error {
	p.extMu.Lock()
	exts := append([]instance.Extension(nil), p.extensions...)
	p.extMu.Unlock()
	for i, ext := range exts {
		if ext.Start == nil {
			p.startedExts = i + 1
			continue
		}
		if err := ext.Start(ctx, handle{p}); err != nil {
			stopErr := p.abandonExtensions(ctx)
			err = fmt.Errorf("start %s of postgres pool for %s: %w", extensionName(ext), p.target, err)
			return p.scrub(errors.Join(err, stopErr))
		}
		p.startedExts = i + 1
	}
	return nil
}

// abandonExtensions stops the started extensions of a start that failed,
// whose ctx may have ended, within extensionStopTimeout.
func (p *Pool) abandonExtensions(ctx context.Context) error {
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), extensionStopTimeout)
	defer cancel()
	return p.stopExtensions(stopCtx)
}

// stopExtensions runs the Stop of each started extension, the last one
// first, and returns their errors joined. Called with p.mu held.
func (p *Pool) stopExtensions(ctx context.Context) error {
	p.extMu.Lock()
	exts := append([]instance.Extension(nil), p.extensions[:p.startedExts]...)
	p.extMu.Unlock()
	p.startedExts = 0
	var errs []error
	for i := len(exts) - 1; i >= 0; i-- {
		if stop := exts[i].Stop; stop != nil {
			if err := stop(ctx); err != nil {
				errs = append(errs, fmt.Errorf("stop %s of postgres pool for %s: %w", extensionName(exts[i]), p.target, err))
			}
		}
	}
	return p.scrub(errors.Join(errs...))
}

func extensionName(ext instance.Extension) string {
	if ext.Name == "" {
		return "extension"
	}
	return ext.Name
}

// connConfig is Handle.ConnConfig: the configuration of one new
// connection, made as the pool makes its own, to url or, when url is
// empty, to the pool's own server.
func (p *Pool) connConfig(ctx context.Context, url, variable string) (*pgx.ConnConfig, error) {
	target := p
	if strings.TrimSpace(url) != "" {
		other, err := newPoolForURL(p.cfg, p.opts, url, variable)
		if err != nil {
			return nil, err
		}
		target = other
	}
	pc := target.poolConfig
	cc := pc.ConnConfig.Copy()
	cc.Tracer = nil
	if before := pc.BeforeConnect; before != nil {
		if err := before(ctx, cc); err != nil {
			return nil, redact.Error(fmt.Errorf("prepare a connection to postgres at %s: %w", target.target, callError(ctx, err)),
				p.password, target.password)
		}
	}
	return cc, nil
}

// newPoolForURL prepares, with no I/O, a pool of cfg's settings and o's
// options whose URL is url rather than cfg's, as a read replica's or a
// migration's is. Its configuration errors name variable, where url came
// from, instead of the instance's URL variable.
func newPoolForURL(cfg Config, o options, url, variable string) (*Pool, error) {
	ucfg := cfg
	ucfg.URL, ucfg.ReadURL = url, ""
	o.observers = nil // the primary's dispatcher serves every pool of an instance
	o.extensions = nil
	p, err := newPool(ucfg, optionFunc(func(dst *options) { *dst = o }))
	if err != nil {
		own := EnvPrefix(o.name) + EnvURL
		forEachConfigError(err, func(ce *ConfigError) {
			if ce.Variable == own {
				ce.Variable = variable
			}
			ce.Reason = strings.ReplaceAll(ce.Reason, own, variable)
		})
		return nil, err
	}
	return p, nil
}
