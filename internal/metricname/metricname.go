// Package metricname turns the metric names of queries into label values
// with a bounded set of values, for the metrics sub-packages.
package metricname

import "sync"

// Limiter maps metric names to label values, letting through at most max
// distinct names, so that a name built from request data cannot create
// time series without bound. It is safe for concurrent use.
type Limiter struct {
	max            int
	unnamed, other string

	mu   sync.RWMutex
	seen map[string]struct{}
}

// NewLimiter returns a Limiter that lets through maxNames distinct names,
// labels a query without a name unnamed and every name past the limit
// other.
func NewLimiter(maxNames int, unnamed, other string) *Limiter {
	return &Limiter{max: maxNames, unnamed: unnamed, other: other, seen: make(map[string]struct{})}
}

// Label returns the label value for name.
func (l *Limiter) Label(name string) string {
	if name == "" {
		return l.unnamed
	}
	l.mu.RLock()
	_, ok := l.seen[name]
	l.mu.RUnlock()
	if ok {
		return name
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.seen[name]; ok {
		return name
	}
	if len(l.seen) >= l.max {
		return l.other
	}
	l.seen[name] = struct{}{}
	return name
}
