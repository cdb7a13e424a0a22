package health

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// WithDrainDelay sets how long Drain keeps the readiness gate closed while
// the service still serves, before it returns and the rest of the service
// stops: long enough for every load balancer and orchestrator probing
// /readyz to see the 503 and send traffic elsewhere (a few probe periods,
// e.g. 5s to 15s behind a Kubernetes Service). The default is zero: Drain
// closes the gate and returns at once. A negative d counts as zero.
func WithDrainDelay(d time.Duration) Option {
	return optionFunc(func(o *options) { o.drainDelay = max(d, 0) })
}

// DrainDelay returns the delay Drain waits, from WithDrainDelay; for a
// Checker from Combine, the longest of the Checkers combined.
func (c *Checker) DrainDelay() time.Duration { return c.drainDelay }

// Drain closes the readiness gate, so that /readyz and /status answer 503,
// and then waits for the drain delay (WithDrainDelay) while the caller
// keeps serving, so that traffic moves away before anything stops. Call it
// first in the stop hook of the HTTP server that serves the probes, before
// that server's Shutdown:
//
//	OnStop: func(ctx context.Context) error {
//		if err := checker.Drain(ctx); err != nil {
//			return err
//		}
//		return srv.Shutdown(ctx)
//	}
//
// Drain returns nil once the delay has passed, and ctx's error, wrapped,
// when ctx ends first; the gate stays closed either way. A second call
// waits only for what is left of the first call's delay. On a Checker
// from Combine it closes that Checker's own gate, not those of the
// Checkers combined, whose owners close them as their pools stop.
func (c *Checker) Drain(ctx context.Context) error {
	c.mu.Lock()
	if c.drainUntil.IsZero() {
		c.drainUntil = time.Now().Add(c.drainDelay)
		if c.drainDelay > 0 {
			c.logger.Info("readiness now fails; draining before the service stops",
				zap.Duration("drain_delay", c.drainDelay))
		}
	}
	until := c.drainUntil
	c.mu.Unlock()
	c.SetReady(false)

	left := time.Until(until)
	if left <= 0 {
		return nil
	}
	timer := time.NewTimer(left)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("drain for %s before stopping: %w", c.drainDelay, ctx.Err())
	}
}
