// Package listen delivers PostgreSQL notifications (LISTEN/NOTIFY) to
// handlers, for each database instance of a sprocketspg application, and
// keeps doing so across lost connections.
//
//	fx.New(sprocketspg.Module, listen.Notifications(),
//		fx.Invoke(func(l *listen.Listener, cache *Cache) error {
//			return l.Handle("prices", listen.HandlerFunc(cache.invalidate))
//		}))
//
// The listener holds a connection of its own, made with the instance's
// settings and not counted by the pool. When that connection is lost it
// reconnects with capped backoff, listens again, and runs each channel's
// BacklogHandler so that the application can catch up on what it missed;
// the outage is logged once, counted, and shown as warn by the readiness
// check "postgres:listener". Each channel's notifications go to its
// handler in order, on a goroutine of its own, through a bounded queue:
// a slow handler delays only its channel, and what overflows is dropped,
// counted and logged. A panicking handler is recovered and logged.
//
// Send with the pool's Notify (sprocketspg.Pool.Notify), or with a
// transaction's, which PostgreSQL delivers only on commit.
//
// The package does not import sprocketspg: it attaches to an instance
// through package instance. Without fx, give New's Listener to
// sprocketspg.New with sprocketspg.WithExtension(l.Extension()).
package listen
