package listen

import (
	"context"
	"runtime/debug"
	"sync/atomic"

	"go.uber.org/zap"
)

// channel is one channel's handler and the queue that feeds it.
type channel struct {
	l     *Listener
	name  string
	h     Handler
	queue chan *Notification
	// backlog asks the goroutine to run the backlog handler before the
	// notifications that follow; it holds at most one request.
	backlog chan struct{}
	stop    chan struct{}
	// busy is true while the handler runs, for Stop's error.
	busy atomic.Bool
	// dropping is true from the first notification dropped until one is
	// queued again, so that an overflow is logged once.
	dropping atomic.Bool

	received, delivered, dropped, failed, panicked, backlogs atomic.Uint64
}

func newChannel(l *Listener, name string, h Handler) *channel {
	return &channel{
		l:       l,
		name:    name,
		h:       h,
		queue:   make(chan *Notification, l.queueSize),
		backlog: make(chan struct{}, 1),
		stop:    make(chan struct{}),
	}
}

// enqueue queues n for the handler without waiting: when the queue is
// full, n is dropped, counted, and the overflow logged once.
func (c *channel) enqueue(n *Notification) {
	c.received.Add(1)
	select {
	case c.queue <- n:
		if c.dropping.Swap(false) {
			c.l.logger.Info("postgres notifications queued again", zap.String("channel", c.name),
				zap.Uint64("dropped_total", c.dropped.Load()))
		}
	default:
		c.dropped.Add(1)
		if !c.dropping.Swap(true) {
			c.l.logger.Warn("postgres notification queue full; dropping notifications until the handler catches up",
				zap.String("channel", c.name), zap.Int("queue_size", cap(c.queue)))
		}
	}
}

// requestBacklog asks for the backlog handler to run, if there is one.
func (c *channel) requestBacklog() {
	if _, ok := c.h.(BacklogHandler); !ok {
		return
	}
	select {
	case c.backlog <- struct{}{}:
	default: // one is asked for already
	}
}

// deliver runs the handler until stop: a requested backlog first, then
// the queued notifications in order.
func (c *channel) deliver(ctx context.Context) {
	for {
		select {
		case <-c.backlog:
			c.runBacklog(ctx)
			continue
		default:
		}
		select {
		case <-c.stop:
			return
		case <-c.backlog:
			c.runBacklog(ctx)
		case n := <-c.queue:
			c.handle(ctx, n)
		}
	}
}

func (c *channel) runBacklog(ctx context.Context) {
	c.backlogs.Add(1)
	bh := c.h.(BacklogHandler)
	err := c.call(func() error { return bh.HandleBacklog(ctx, c.name) })
	if err != nil && ctx.Err() == nil {
		c.failed.Add(1)
		c.l.logger.Warn("postgres notification backlog handler failed", zap.String("channel", c.name), zap.Error(err))
	}
}

func (c *channel) handle(ctx context.Context, n *Notification) {
	err := c.call(func() error { return c.h.HandleNotification(ctx, n) })
	c.delivered.Add(1)
	if err != nil && ctx.Err() == nil {
		c.failed.Add(1)
		c.l.logger.Warn("postgres notification handler failed", zap.String("channel", c.name), zap.Error(err))
	}
}

// call runs fn, turning a panic into a logged, counted error, so that one
// bad notification does not stop the channel's delivery.
func (c *channel) call(fn func() error) (err error) {
	c.busy.Store(true)
	defer c.busy.Store(false)
	defer func() {
		if v := recover(); v != nil {
			c.panicked.Add(1)
			c.l.logger.Error("postgres notification handler panicked", zap.String("channel", c.name),
				zap.Any("panic", v), zap.ByteString("stack", debug.Stack()))
			// Counted as a panic, not as a failure as well.
			err = nil
		}
	}()
	return fn()
}
