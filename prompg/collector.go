package prompg

import (
	"context"
	"sync"

	"github.com/IBM/pgxpoolprometheus"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sprockets/sprocketspg"
)

var _ prometheus.Collector = (*PoolCollector)(nil)

// A PoolCollector is a prometheus.Collector of the connection statistics
// of a sprocketspg.Pool: the pgxpool_* metrics of
// github.com/IBM/pgxpoolprometheus (pgxpool_total_conns,
// pgxpool_idle_conns, pgxpool_max_conns, pgxpool_acquire_count, ...),
// with the pool label (PoolLabel) naming the pool's instance.
//
// It may be made and registered before the pool starts: while the pool is
// not connected (before start, after stop) it reports nothing, and it
// never touches the pool's embedded *pgxpool.Pool, which is nil until the
// pool starts.
type PoolCollector struct {
	pool *sprocketspg.Pool

	// mu guards current, the statistics inner reads through stat while
	// it describes or collects.
	mu      sync.Mutex
	current *pgxpool.Stat
	inner   *pgxpoolprometheus.Collector
}

// NewPoolCollector returns the collector of pool's statistics, labelled
// pool="<pool.Name()>": "" for the default instance, which Prometheus
// stores as no label, and the instance's name for one made with
// sprocketspg.Named or sprocketspg.WithName, so that the statistics of
// several instances can share a registry. Of opts only WithConstLabels
// applies to it; a pool label given there replaces the instance's name.
// It does no I/O.
func NewPoolCollector(pool *sprocketspg.Pool, opts ...Option) *PoolCollector {
	o := newOptions(opts)
	c := &PoolCollector{pool: pool}
	instance := ""
	if pool != nil {
		instance = pool.Name()
	}
	labels := make(prometheus.Labels, len(o.constLabels)+1)
	// Every collector has the label, the default instance's too: the
	// registry refuses one metric name with different label names.
	labels[PoolLabel] = instance
	for k, v := range o.constLabels {
		labels[k] = v
	}
	c.inner = pgxpoolprometheus.NewCollector(collectorStater{c}, labels)
	return c
}

// Describe implements prometheus.Collector. It sends the same descriptors
// whether or not the pool is connected, as the registry needs them to
// unregister the collector later.
func (c *PoolCollector) Describe(ch chan<- *prometheus.Desc) {
	st := c.liveStat()
	if st == nil {
		// pgxpoolprometheus describes its metrics by collecting them, so
		// it needs statistics even when there are none to report.
		st = zeroStat()
		if st == nil {
			return
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.current = st
	c.inner.Describe(ch)
}

// Collect implements prometheus.Collector. It sends nothing while the
// pool is not connected.
func (c *PoolCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.liveStat()
	if st == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.current = st
	c.inner.Collect(ch)
}

// liveStat returns the running pool's statistics, or nil when the pool is
// not connected.
func (c *PoolCollector) liveStat() *pgxpool.Stat {
	// IsConnected turns true only after the embedded pool is set, and the
	// embedded pool is never unset, so reading it after a true answer is
	// safe.
	if c.pool == nil || !c.pool.IsConnected() {
		return nil
	}
	return c.pool.Pool.Stat()
}

// collectorStater hands pgxpoolprometheus the statistics its PoolCollector
// picked for the current Describe or Collect.
type collectorStater struct {
	c *PoolCollector
}

func (s collectorStater) Stat() *pgxpool.Stat {
	return s.c.current
}

// zeroStat returns the statistics of a pool that was closed before it
// opened a connection, or nil if such a pool cannot be made.
// pgxpool.Stat has no usable zero value, so the only way to get zeros is
// from such a pool; it is made once, the first time a collector is
// described while its pool is not running.
var zeroStat = sync.OnceValue(func() *pgxpool.Stat {
	// A password, and TLS turned off, keep ParseConfig from reading a
	// password file or certificates; the pool is closed before it could
	// dial anything.
	cfg, err := pgxpool.ParseConfig("host=/nonexistent port=5432 user=none password=none dbname=none sslmode=disable")
	if err != nil {
		return nil
	}
	cfg.MinConns = 0
	cfg.MinIdleConns = 0
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil
	}
	pool.Close()
	return pool.Stat()
})
