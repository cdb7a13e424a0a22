package listen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg/health"
	"github.com/sprockets/sprocketspg/instance"
	"github.com/sprockets/sprocketspg/internal/pgchannel"
)

// Defaults of the options.
const (
	DefaultQueueSize  = 4096
	DefaultMinBackoff = 50 * time.Millisecond
	DefaultMaxBackoff = time.Second
)

// ComponentName is the name of the readiness check of an instance's
// listener: "postgres:listener", "postgres-orders:listener".
const ComponentName = "listener"

// closeTimeout bounds the goodbye to the server of a connection the
// listener is done with.
const closeTimeout = time.Second

// stopLead is how long before its context's deadline Stop gives up
// waiting for handlers (at most a tenth of the time left): longer than
// the pool's own lead, so that the pool's close, which comes after, still
// has time.
const stopLead = 100 * time.Millisecond

var (
	// ErrInvalidChannel is matched by the error of Handle for a channel
	// name PostgreSQL would not keep as written: empty, longer than 63
	// bytes, not UTF-8 or holding a NUL. It is
	// sprocketspg.ErrInvalidNotification.
	ErrInvalidChannel = pgchannel.ErrInvalid
	// ErrDuplicateChannel is matched by the error of a second Handle of
	// the same channel.
	ErrDuplicateChannel = errors.New("channel already has a handler")
	// ErrStopped is matched by the error of Handle once the listener has
	// stopped.
	ErrStopped = errors.New("listener stopped")
)

// Notification is a notification as PostgreSQL delivers it: the sending
// backend's PID, the channel and the payload.
type Notification = pgconn.Notification

// Handler handles the notifications of one channel. The listener calls it
// on a goroutine of the channel's own, one notification at a time, in the
// order the server sent them; a slow Handler delays its own channel only.
// ctx ends when the listener stops. An error is logged and counted.
type Handler interface {
	HandleNotification(ctx context.Context, n *Notification) error
}

// HandlerFunc is a function as a Handler.
type HandlerFunc func(ctx context.Context, n *Notification) error

// HandleNotification calls f.
func (f HandlerFunc) HandleNotification(ctx context.Context, n *Notification) error { return f(ctx, n) }

// BacklogHandler is a Handler that also catches up on what it may have
// missed: the listener calls HandleBacklog each time it has (again) begun
// to listen to the channel (when it starts, and after every reconnect),
// before the notifications received from then on, on the channel's
// goroutine. Since it listens first, a notification may be both in the
// backlog and delivered; a BacklogHandler must take that in its stride,
// as a cache that is invalidated twice does.
type BacklogHandler interface {
	Handler
	HandleBacklog(ctx context.Context, channel string) error
}

// Listener delivers the notifications of an instance's database to
// handlers, over a connection of its own that the pool does not count,
// made with the instance's settings (SRV hosts, credentials, TLS files,
// application name). It reconnects after the connection is lost, with
// capped backoff, listens again and runs the backlog handlers. Its
// methods are safe for concurrent use.
type Listener struct {
	instName   string
	queueSize  int
	minBackoff time.Duration
	maxBackoff time.Duration
	logger     *zap.Logger
	loggerSet  bool
	// loggerNamed is true once logger carries the component field.
	loggerNamed bool

	mu       sync.Mutex
	channels map[string]*channel
	// pending are channels handled since the connection last listened.
	pending    []*channel
	handle     instance.Handle
	started    bool
	stopped    bool
	waitCancel context.CancelFunc // interrupts the wait, to listen to pending channels

	connected  atomic.Bool
	reconnects atomic.Uint64
	downSince  atomic.Pointer[outage]

	runCtx    context.Context
	runCancel context.CancelFunc
	// handlerCtx is the ctx of the handlers; it ends when Stop begins.
	handlerCtx    context.Context
	handlerCancel context.CancelFunc
	done          chan struct{} // closed when the connection's loop has ended
	workers       sync.WaitGroup
}

// outage is when and why the connection was lost.
type outage struct {
	since time.Time
	err   error
}

// Option changes how New makes a Listener.
type Option interface{ apply(*Listener) }

type optionFunc func(*Listener)

func (f optionFunc) apply(l *Listener) { f(l) }

// ForInstance makes the listener that of the Named instance called name;
// without it, it is the default instance's (sprocketspg.Module). Only
// Notifications reads it.
func ForInstance(name string) Option {
	return optionFunc(func(l *Listener) { l.instName = name })
}

// WithQueueSize sets how many notifications of a channel may wait for its
// handler; more are dropped (and counted). The default is
// DefaultQueueSize; zero or less keeps it.
func WithQueueSize(n int) Option {
	return optionFunc(func(l *Listener) {
		if n > 0 {
			l.queueSize = n
		}
	})
}

// WithReconnectBackoff sets the first wait before a reconnect attempt and
// the longest; each failed attempt doubles the wait up to longest, with
// jitter. The defaults are DefaultMinBackoff and DefaultMaxBackoff.
// Values of zero or less keep them.
func WithReconnectBackoff(first, longest time.Duration) Option {
	return optionFunc(func(l *Listener) {
		if first > 0 {
			l.minBackoff = first
		}
		if longest > 0 {
			l.maxBackoff = longest
		}
	})
}

// WithLogger sends the listener's logs to logger; without it they go to
// the instance's logger once the listener starts.
func WithLogger(logger *zap.Logger) Option {
	return optionFunc(func(l *Listener) {
		if logger != nil {
			l.logger, l.loggerSet = logger, true
		}
	})
}

// New returns a Listener with no channels. Give it to an instance with
// Extension (sprocketspg.WithExtension), or use Notifications with fx.
func New(opts ...Option) *Listener {
	l := &Listener{
		queueSize:  DefaultQueueSize,
		minBackoff: DefaultMinBackoff,
		maxBackoff: DefaultMaxBackoff,
		logger:     zap.NewNop(),
		channels:   map[string]*channel{},
	}
	for _, opt := range opts {
		opt.apply(l)
	}
	l.maxBackoff = max(l.maxBackoff, l.minBackoff)
	return l
}

// Handle delivers the notifications of channel to h, from the moment the
// listener listens to it: at start for a channel handled before, within a
// moment for one handled after. channel is the name as written (LISTEN
// quotes it, so case and every character count), as Notify takes it. It
// fails for an invalid name (ErrInvalidChannel), a channel that has a
// handler already (ErrDuplicateChannel), a nil h, and after Stop
// (ErrStopped).
func (l *Listener) Handle(channel string, h Handler) error {
	if err := pgchannel.Validate(channel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if h == nil {
		return fmt.Errorf("listen: channel %q: nil handler", channel)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.stopped:
		return fmt.Errorf("listen: channel %q: %w", channel, ErrStopped)
	case l.channels[channel] != nil:
		return fmt.Errorf("listen: channel %q: %w", channel, ErrDuplicateChannel)
	}
	c := newChannel(l, channel, h)
	l.channels[channel] = c
	l.pending = append(l.pending, c)
	if l.started {
		l.startWorker(c)
		if l.waitCancel != nil {
			l.waitCancel()
		}
	}
	return nil
}

// Listening reports whether the listener listens to every channel handled
// so far: its connection is up and has sent their LISTEN, or it has
// started with no channel at all.
func (l *Listener) Listening() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.listeningLocked()
}

// listeningLocked is Listening with l.mu held: the connection is up with
// nothing left to listen to, or the listener has started with no channel
// (and so needs no connection).
func (l *Listener) listeningLocked() bool {
	if l.started && !l.stopped && len(l.channels) == 0 {
		return true
	}
	return l.connected.Load() && len(l.pending) == 0
}

// Extension returns the Listener as an extension of a sprocketspg
// instance: its Start connects and listens to the channels handled so
// far (failing start when it cannot), its Stop ends the connection and
// the handlers before the pool closes, and its readiness check reports
// the connection: pass while it listens, warn while it reconnects.
func (l *Listener) Extension() instance.Extension {
	return instance.Extension{
		Name:       "listener",
		Start:      l.start,
		Stop:       l.stop,
		Components: []health.Component{{Name: ComponentName, Check: l.check}},
	}
}

// start is the Extension's Start: the first connection is made within
// ctx, so that readiness opens with the listener listening.
func (l *Listener) start(ctx context.Context, h instance.Handle) error {
	l.mu.Lock()
	if l.started || l.stopped {
		l.mu.Unlock()
		return errors.New("listen: the listener has already started; give each instance a Listener of its own")
	}
	if l.instName != "" && l.instName != h.Name() {
		l.mu.Unlock()
		return fmt.Errorf("listen: the listener of instance %q cannot listen for instance %q", l.instName, h.Name())
	}
	l.handle = h
	l.instName = h.Name()
	if !l.loggerSet {
		l.logger = h.Logger()
	}
	if !l.loggerNamed {
		// Once, should a failed start be retried.
		l.logger = l.logger.With(zap.String("component", "listener"))
		l.loggerNamed = true
	}
	l.mu.Unlock()

	var conn *pgx.Conn
	if l.hasChannels() {
		var err error
		if conn, err = l.connect(ctx); err != nil {
			return err
		}
		l.connected.Store(true)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.started = true
	l.runCtx, l.runCancel = context.WithCancel(context.Background())
	l.handlerCtx, l.handlerCancel = context.WithCancel(context.Background())
	l.done = make(chan struct{})
	for _, c := range l.channels {
		l.startWorker(c)
	}
	go l.run(conn)
	return nil
}

func (l *Listener) hasChannels() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.channels) > 0
}

// startWorker starts the delivery goroutine of c. Called with l.mu held.
func (l *Listener) startWorker(c *channel) {
	l.workers.Add(1)
	go func() {
		defer l.workers.Done()
		c.deliver(l.handlerCtx)
	}()
}

// stop is the Extension's Stop: it ends the connection's loop, then the
// handlers, within ctx.
func (l *Listener) stop(ctx context.Context) error {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return nil
	}
	l.stopped = true
	started := l.started
	l.mu.Unlock()
	if !started {
		return nil
	}
	// Give up a moment before ctx's deadline, as the pool's close does: fx
	// reports its own context error once the deadline has passed, and
	// which channels were still busy would be lost; the pool's close,
	// after this, gets the rest.
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline.Add(-min(stopLead, left/10)))
		defer cancel()
	}
	l.runCancel()
	l.handlerCancel()
	select {
	case <-l.done:
	case <-ctx.Done():
		return fmt.Errorf("listen: stop: the connection did not close in time: %w", ctx.Err())
	}
	l.mu.Lock()
	for _, c := range l.channels {
		close(c.stop)
	}
	l.mu.Unlock()
	workersDone := make(chan struct{})
	go func() {
		l.workers.Wait()
		close(workersDone)
	}()
	select {
	case <-workersDone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("listen: stop: handlers of %s still running when the stop context ended: %w", l.busyChannels(), ctx.Err())
	}
}

// busyChannels names the channels whose handler is running.
func (l *Listener) busyChannels() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var names []string
	for name, c := range l.channels {
		if c.busy.Load() {
			names = append(names, fmt.Sprintf("%q", name))
		}
	}
	slices.Sort(names)
	if len(names) == 0 {
		return "no channel"
	}
	return fmt.Sprint(names)
}

// connect makes a connection with the instance's settings and listens to
// every channel on it; the channels then run their backlog.
func (l *Listener) connect(ctx context.Context) (*pgx.Conn, error) {
	cc, err := l.handle.ConnConfig(ctx, "", "")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	// An ended wait must leave the connection usable, so that a channel
	// handled later can be listened to on it: a deadline does that, where
	// the pool's cancel request would wait for nothing to cancel.
	cc.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: pc.Conn()}
	}
	if cc.ConnectTimeout > 0 {
		// The instance's connection timeout bounds the LISTEN too: a
		// server that accepts and then stops answering must not hold the
		// listener for ever.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cc.ConnectTimeout)
		defer cancel()
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("listen: connect: %w", err)
	}
	l.mu.Lock()
	channels := make([]*channel, 0, len(l.channels))
	for _, c := range l.channels {
		channels = append(channels, c)
	}
	l.pending = nil
	l.mu.Unlock()
	if err := l.listen(ctx, conn, channels); err != nil {
		closeConn(conn)
		return nil, err
	}
	return conn, nil
}

// listen sends LISTEN for channels on conn, in one round trip, and has
// each run its backlog.
func (l *Listener) listen(ctx context.Context, conn *pgx.Conn, channels []*channel) error {
	if len(channels) == 0 {
		return nil
	}
	var sql string
	for _, c := range channels {
		sql += "LISTEN " + pgx.Identifier{c.name}.Sanitize() + ";"
	}
	if _, err := conn.PgConn().Exec(ctx, sql).ReadAll(); err != nil {
		// The connection is given up; the next one listens to every
		// channel.
		return fmt.Errorf("listen: LISTEN %d channels: %w", len(channels), err)
	}
	for _, c := range channels {
		c.requestBacklog()
	}
	return nil
}

// run is the connection's loop: it waits for notifications and hands them
// to their channels until the connection is lost, then reconnects, until
// Stop.
func (l *Listener) run(conn *pgx.Conn) {
	defer close(l.done)
	defer l.connected.Store(false)
	ctx := l.runCtx
	for {
		if conn == nil {
			// No channel yet, or the connection was lost.
			if conn = l.awaitConnection(ctx); conn == nil {
				return
			}
		}
		err := l.serve(ctx, conn)
		closeConn(conn)
		conn = nil
		if ctx.Err() != nil {
			return
		}
		l.markDown(err)
	}
}

// awaitConnection waits for a first channel if there is none, then
// connects with capped, jittered backoff until it listens or ctx ends.
func (l *Listener) awaitConnection(ctx context.Context) *pgx.Conn {
	for !l.hasChannels() {
		wake, cancel := context.WithCancel(ctx)
		l.mu.Lock()
		l.waitCancel = cancel
		l.mu.Unlock()
		if !l.hasChannels() {
			<-wake.Done()
		}
		cancel()
		if ctx.Err() != nil {
			return nil
		}
	}
	backoff := l.minBackoff
	for {
		conn, err := l.connect(ctx)
		if err == nil {
			l.markUp()
			return conn
		}
		if ctx.Err() != nil {
			return nil
		}
		l.markDown(err)
		wait := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(backoff*2, l.maxBackoff)
	}
}

// serve waits for notifications on conn until it fails or ctx ends.
func (l *Listener) serve(ctx context.Context, conn *pgx.Conn) error {
	for {
		l.mu.Lock()
		pending := slices.Clone(l.pending)
		l.mu.Unlock()
		if err := l.listen(ctx, conn, pending); err != nil {
			return err
		}
		waitCtx, cancel := context.WithCancel(ctx)
		l.mu.Lock()
		// Only now are they listened to: Listening stays false until then.
		l.pending = l.pending[len(pending):]
		l.waitCancel = cancel
		woken := len(l.pending) > 0
		l.mu.Unlock()
		if woken {
			cancel()
			continue
		}
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && waitCtx.Err() != nil && !conn.IsClosed() {
				continue // woken to listen to a new channel
			}
			return err
		}
		l.mu.Lock()
		c := l.channels[n.Channel]
		l.mu.Unlock()
		if c != nil {
			c.enqueue(n)
		}
	}
}

// markDown records that the connection is lost, logging once per outage.
func (l *Listener) markDown(err error) {
	if l.connected.Swap(false) || l.downSince.Load() == nil {
		l.downSince.Store(&outage{since: time.Now(), err: err})
		l.logger.Warn("postgres listener lost its connection; reconnecting", zap.Error(err))
		return
	}
	prev := l.downSince.Load()
	l.downSince.Store(&outage{since: prev.since, err: err})
}

// markUp records that the connection listens again.
func (l *Listener) markUp() {
	l.connected.Store(true)
	if down := l.downSince.Swap(nil); down != nil {
		l.reconnects.Add(1)
		l.logger.Info("postgres listener listening again", zap.Duration("outage", time.Since(down.since)),
			zap.Uint64("reconnects", l.reconnects.Load()))
	}
}

// check is the readiness check of the listener.
func (l *Listener) check(context.Context) health.ComponentReport {
	l.mu.Lock()
	started, stopped, n := l.started, l.stopped, len(l.channels)
	l.mu.Unlock()
	switch {
	case !started || stopped:
		return health.ComponentReport{Status: health.StatusWarn, Output: "listener not running"}
	case n == 0:
		return health.ComponentReport{Status: health.StatusPass, ObservedValue: 0, ObservedUnit: "channels"}
	case !l.connected.Load():
		r := health.ComponentReport{Status: health.StatusWarn, ObservedValue: n, ObservedUnit: "channels", Output: "listener reconnecting"}
		if down := l.downSince.Load(); down != nil {
			r.Output = fmt.Sprintf("listener reconnecting since %s: %v", down.since.UTC().Format(time.RFC3339), down.err)
		}
		return r
	}
	return health.ComponentReport{Status: health.StatusPass, ObservedValue: n, ObservedUnit: "channels"}
}

// closeConn says goodbye to the server, briefly.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = conn.Close(ctx)
}
