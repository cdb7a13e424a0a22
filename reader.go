package sprocketspg

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

// replicaCheckInterval is how often the read replica is pinged to decide
// whether Reader hands it out.
const replicaCheckInterval = time.Second

// replica is the read pool of Config.ReadURL and what is known of its
// health.
type replica struct {
	pool *Pool
	// up is true while the last ping succeeded and no query has since
	// failed to reach the server. It changes only through markUp and
	// markDown, which log each change once, whoever noticed it.
	up     atomic.Bool
	logger *zap.Logger
	stop   chan struct{}
	done   chan struct{}
}

// newReplica prepares the read pool of cfg.ReadURL. It does no I/O.
func newReplica(cfg Config, o options) (*replica, error) {
	rcfg := cfg
	// The replica's connections open as they are needed, so that an
	// unreachable replica does not hold up start-up.
	rcfg.MinPoolSize = 0
	rp, err := newPoolForURL(rcfg, o, cfg.ReadURL, EnvPrefix(o.name)+EnvReadURL)
	if err != nil {
		return nil, err
	}
	r := &replica{pool: rp, logger: rp.logger, stop: make(chan struct{}), done: make(chan struct{})}
	rp.replicaOf = r
	return r, nil
}

// start builds the read pool without waiting for the server, and watches
// it from then on. Until its first ping succeeds, Reader hands out the
// primary.
func (r *replica) start() error {
	rp := r.pool
	rp.mu.Lock()
	defer rp.mu.Unlock()
	pool, err := pgxpool.NewWithConfig(context.Background(), rp.poolConfig)
	if err != nil {
		close(r.done)
		return rp.scrub(fmt.Errorf("create postgres read pool for %s: %w", rp.target, err))
	}
	rp.started = true
	rp.Pool = pool
	rp.pool.Store(pool)
	rp.connected.Store(true)
	go r.watch()
	return nil
}

// watch pings the replica every replicaCheckInterval until stop.
func (r *replica) watch() {
	defer close(r.done)
	timeout := min(r.pool.cfg.ConnectionTimeout, 2*time.Second)
	ticker := time.NewTicker(replicaCheckInterval)
	defer ticker.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		err := r.pool.Ping(ctx)
		cancel()
		if err == nil {
			r.markUp()
		} else {
			r.markDown(err)
		}
		select {
		case <-r.stop:
			return
		case <-ticker.C:
		}
	}
}

// markUp records that the replica answered, logging the change from down.
func (r *replica) markUp() {
	if !r.up.Swap(true) {
		r.logger.Info("postgres read replica available", zap.String("target", r.pool.target))
	}
}

// markDown records that the replica could not be reached, by a ping or a
// query, logging the change from up once per outage.
func (r *replica) markDown(err error) {
	if r.up.Swap(false) {
		r.logger.Warn("postgres read replica unavailable; reads go to the primary",
			zap.String("target", r.pool.target), zap.Error(err))
	}
}

// shutdown stops the watch and closes the read pool within ctx.
func (r *replica) shutdown(ctx context.Context) error {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	r.up.Store(false)
	r.pool.mu.Lock()
	started := r.pool.started
	r.pool.mu.Unlock()
	if !started {
		return nil
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		return fmt.Errorf("stop watching postgres read replica: %w", ctx.Err())
	}
	return r.pool.Shutdown(ctx)
}

// Reader returns the pool for read-only work: the read replica of
// Config.ReadURL while it answers, else this pool. A replica counts as
// down from the moment a ping or a query through it fails to reach the
// server until a ping (one a second) succeeds again, so callers fall back
// to the primary within a second of an outage, without errors of their
// own beyond the query that found it.
//
// Replicas lag behind the primary; read what was just written from the
// primary. Without ReadURL, Reader returns p.
func (p *Pool) Reader() *Pool {
	if r := p.replica; r != nil && r.up.Load() && p.connected.Load() {
		return r.pool
	}
	return p
}

// noteConnectionError marks a read pool down when one of its queries
// could not reach the server.
func (p *Pool) noteConnectionError(err error) {
	if r := p.replicaOf; r != nil && err != nil && IsConnectionError(err) {
		r.markDown(err)
	}
}
