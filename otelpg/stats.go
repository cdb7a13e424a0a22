package otelpg

import (
	"errors"
	"fmt"
	"sync"

	"github.com/exaring/otelpgx"
	"go.opentelemetry.io/otel/metric"

	"github.com/sprockets/sprocketspg"
)

// ErrPoolNotStarted is matched (errors.Is) by the error RecordStats
// returns for a pool that is not connected: its statistics do not exist
// before start, and the embedded *pgxpool.Pool is nil until then.
var ErrPoolNotStarted = errors.New("postgres pool is not connected")

// RecordStats records pool's connection statistics (the pgxpool.*
// instruments of otelpgx.RecordStats, such as pgxpool.total_connections
// and pgxpool.max_connections) with the meter provider of opts, until the
// returned stop function is called. Call it after the pool has started,
// and stop before the pool closes; stop may be called more than once.
//
// The statistics of a named pool (sprocketspg.Named, sprocketspg.WithName)
// carry its name as PoolNameKey; those of the default instance carry
// otelpgx's "<host>:<port>/<database>". An attribute of that key given
// with WithStatsOptions replaces either.
//
// RecordStats returns an error matching ErrPoolNotStarted when pool is
// not connected, and otelpgx's error when the meter provider refuses the
// instruments.
func RecordStats(pool *sprocketspg.Pool, opts ...Option) (stop func(), err error) {
	return recordStats(pool, newOptions(opts))
}

func recordStats(pool *sprocketspg.Pool, o options) (func(), error) {
	// IsConnected turns true only after the embedded pool is set, and the
	// embedded pool is never unset, so reading it after a true answer is
	// safe.
	if pool == nil || !pool.IsConnected() {
		return nil, fmt.Errorf("record postgres pool statistics: %w", ErrPoolNotStarted)
	}
	mp := &registrationsProvider{MeterProvider: o.meterProvider}
	statsOpts := make([]otelpgx.StatsOption, 0, len(o.statsOptions)+2)
	statsOpts = append(statsOpts, otelpgx.WithStatsMeterProvider(mp))
	if name := pool.Name(); name != "" {
		// Before the caller's options: otelpgx keeps the last value of a
		// key, so the caller's attribute of this key wins.
		statsOpts = append(statsOpts, otelpgx.WithStatsAttributes(PoolNameKey.String(name)))
	}
	statsOpts = append(statsOpts, o.statsOptions...)
	if err := otelpgx.RecordStats(pool.Pool, statsOpts...); err != nil {
		mp.unregister()
		return nil, fmt.Errorf("record postgres pool statistics: %w", err)
	}
	return mp.unregister, nil
}

// registrationsProvider is a metric.MeterProvider that remembers the
// callbacks registered through its meters. otelpgx.RecordStats keeps the
// registration of its callback to itself, and without it the callback
// would read a closed pool for as long as the meter provider lives.
type registrationsProvider struct {
	metric.MeterProvider

	mu   sync.Mutex
	regs []metric.Registration
}

// Meter returns the meter of the wrapped provider, wrapped to remember
// its callbacks.
func (p *registrationsProvider) Meter(name string, opts ...metric.MeterOption) metric.Meter {
	return &registrationsMeter{Meter: p.MeterProvider.Meter(name, opts...), provider: p}
}

// unregister removes every callback registered so far.
func (p *registrationsProvider) unregister() {
	p.mu.Lock()
	regs := p.regs
	p.regs = nil
	p.mu.Unlock()
	for _, r := range regs {
		// An error means the callback is already gone, which is the goal.
		_ = r.Unregister()
	}
}

type registrationsMeter struct {
	metric.Meter

	provider *registrationsProvider
}

// RegisterCallback registers f with the wrapped meter and remembers the
// registration.
func (m *registrationsMeter) RegisterCallback(f metric.Callback, instruments ...metric.Observable) (metric.Registration, error) {
	r, err := m.Meter.RegisterCallback(f, instruments...)
	if err != nil {
		return r, err
	}
	m.provider.mu.Lock()
	m.provider.regs = append(m.provider.regs, r)
	m.provider.mu.Unlock()
	return r, nil
}
