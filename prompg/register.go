package prompg

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrPoolCollectorConflict is matched (errors.Is) by the error Register
// returns when another pool's PoolCollector with the same labels is
// already registered: two pools of one instance name (two applications
// sharing a registry, say), or pools whose pool label WithConstLabels
// fixed to one value. Give each instance its own name (sprocketspg.Named,
// sprocketspg.WithName) or each application its own labels with
// WithConstLabels.
var ErrPoolCollectorConflict = errors.New("another pool's statistics are already registered with the same labels")

// Register registers collectors with reg and returns a function that
// unregisters those this call registered. It never panics on a collector
// that is already registered:
//
//   - the same collector registered again is left as it is, and the
//     returned function does not unregister it;
//   - a QueryObserver whose histogram (same name and labels) is already
//     registered, by another QueryObserver or as a
//     *prometheus.HistogramVec, records into that histogram from then on;
//   - another PoolCollector (or ListenerCollector) with the same labels
//     is an error matching ErrPoolCollectorConflict, since two pools'
//     statistics cannot share one set of series.
//
// On any error, Register unregisters what it had registered and returns an
// error naming the collector; the returned function is then nil.
func Register(reg prometheus.Registerer, collectors ...prometheus.Collector) (unregister func(), err error) {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	var registered []prometheus.Collector
	undo := func() {
		for _, c := range registered {
			reg.Unregister(c)
		}
	}
	for _, c := range collectors {
		if c == nil {
			continue
		}
		err := reg.Register(c)
		if err == nil {
			registered = append(registered, c)
			continue
		}
		if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			if alreadyRegistered(c, are.ExistingCollector) {
				continue
			}
			switch c.(type) {
			case *PoolCollector, *ListenerCollector:
				err = fmt.Errorf("%w: %w", ErrPoolCollectorConflict, err)
			}
		}
		undo()
		return nil, fmt.Errorf("register %T with prometheus: %w", c, err)
	}
	return undo, nil
}

// alreadyRegistered reports whether c's metrics are already served by
// existing, adopting existing's histogram when c is a QueryObserver.
func alreadyRegistered(c, existing prometheus.Collector) bool {
	if c == existing {
		return true
	}
	if q, ok := c.(*QueryObserver); ok {
		return q.adopt(existing)
	}
	return false
}
