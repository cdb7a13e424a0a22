package sprocketspg

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/fx"
	"go.uber.org/zap"
)

// ObserversGroup is the fx value group of Observers that Module gives the
// pool. Add to it with AsObserver.
const ObserversGroup = "sprocketspg_observers"

// observerBuffer is how many events may wait for slow observers before
// new ones are dropped.
const observerBuffer = 1024

// Operation names what a QueryEvent describes.
type Operation string

// The operations a Pool reports to its observers.
const (
	OperationExecute     Operation = "execute"
	OperationCallproc    Operation = "callproc"
	OperationTransaction Operation = "transaction"
)

// QueryEvent describes one finished Execute, Callproc or Transaction, as
// the Python original's on_postgres_timing did, with more detail.
type QueryEvent struct {
	// Context is the caller's context, for its values (trace span,
	// request ID). It may have ended by the time an observer runs, since
	// observers run after the call has returned.
	Context context.Context
	// Instance is the name of the instance whose pool ran it (Named,
	// WithName); "" for the default instance.
	Instance string
	// Operation is what ran.
	Operation Operation
	// MetricName is the name from WithMetricName (or txn.MetricName for a
	// transaction); "" when none was given.
	MetricName string
	// SQL is the statement sent; for Callproc the statement built from the
	// routine name, for a transaction "".
	SQL string
	// Start is when the operation began.
	Start time.Time
	// Duration is how long it took, retries included.
	Duration time.Duration
	// RowCount is QueryResult.RowCount; 0 for a transaction.
	RowCount int64
	// Err is the error the caller got, nil on success.
	Err error
}

// An Observer is told about every Execute, Callproc and Transaction of a
// Pool after it finishes: for timing metrics, logs or audits.
//
// Observers run on a goroutine of their own, never on the query's: a slow
// observer delays only other observers, and when more than 1024 events are
// waiting, new ones are dropped (and counted, see
// Pool.DroppedObservations) instead of stalling queries. A panic in an
// observer is recovered and logged. Events reach each observer in the
// order queries finished.
type Observer interface {
	ObserveQuery(ev QueryEvent)
}

// ObserverFunc is an Observer made of a function.
type ObserverFunc func(ev QueryEvent)

// ObserveQuery calls f(ev).
func (f ObserverFunc) ObserveQuery(ev QueryEvent) { f(ev) }

// WithObserver adds o to the pool's observers. With none, the pool logs
// each operation's metric name and duration at debug level, as the
// original's default on_postgres_timing did.
func WithObserver(o Observer) Option {
	return optionFunc(func(opts *options) {
		if o != nil {
			opts.observers = append(opts.observers, o)
		}
	})
}

// AsObserver annotates constructor, a function returning a type that
// implements Observer, so that its result joins ObserversGroup:
//
//	fx.Provide(sprocketspg.AsObserver(newTimingObserver))
func AsObserver(constructor any) any {
	return fx.Annotate(constructor,
		fx.As(new(Observer)),
		fx.ResultTags(`group:"`+ObserversGroup+`"`))
}

// dispatcher hands events to observers on its own goroutine.
type dispatcher struct {
	observers []Observer
	logger    *zap.Logger
	events    chan QueryEvent
	dropped   atomic.Int64

	startOnce sync.Once
	stopOnce  sync.Once
	stop      chan struct{}
	done      chan struct{}
}

func newDispatcher(observers []Observer, logger *zap.Logger) *dispatcher {
	return &dispatcher{
		observers: observers,
		logger:    logger,
		events:    make(chan QueryEvent, observerBuffer),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
}

func (d *dispatcher) start() {
	d.startOnce.Do(func() { go d.run() })
}

// send queues ev without ever blocking the query path.
func (d *dispatcher) send(ev QueryEvent) {
	select {
	case d.events <- ev:
	default:
		if d.dropped.Add(1) == 1 {
			d.logger.Warn("postgres observers are too slow; dropping query events",
				zap.Int("buffer", observerBuffer))
		}
	}
}

func (d *dispatcher) run() {
	defer close(d.done)
	for {
		select {
		case ev := <-d.events:
			d.deliver(ev)
		case <-d.stop:
			// Deliver what was queued before the stop, then end.
			for {
				select {
				case ev := <-d.events:
					d.deliver(ev)
				default:
					return
				}
			}
		}
	}
}

func (d *dispatcher) deliver(ev QueryEvent) {
	for _, o := range d.observers {
		d.observe(o, ev)
	}
}

func (d *dispatcher) observe(o Observer, ev QueryEvent) {
	defer func() {
		if r := recover(); r != nil {
			d.logger.Error("postgres observer panicked",
				zap.String("observer", fmt.Sprintf("%T", o)),
				zap.String("metric_name", ev.MetricName),
				zap.Any("panic", r))
		}
	}()
	o.ObserveQuery(ev)
}

// signalStop tells the goroutine to deliver what is queued and end.
func (d *dispatcher) signalStop() {
	d.stopOnce.Do(func() { close(d.stop) })
}

// close delivers the queued events and ends the goroutine, or gives up
// when ctx ends. Events sent afterwards are never delivered.
func (d *dispatcher) close(ctx context.Context) error {
	d.signalStop()
	d.startOnce.Do(func() { close(d.done) }) // never started: nothing to wait for
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("deliver queued query events to postgres observers: %w", ctx.Err())
	}
}

// DroppedObservations returns how many query events were not delivered to
// observers because they fell more than 1024 events behind.
func (p *Pool) DroppedObservations() int64 {
	if p.dispatch == nil {
		return 0
	}
	return p.dispatch.dropped.Load()
}

// startTime is when a call begins, for its event or its debug log: the
// zero time when neither would be written, which spares the call a read
// of the clock.
func (p *Pool) startTime() time.Time {
	if p.dispatch == nil && !p.logger.Core().Enabled(zap.DebugLevel) {
		return time.Time{}
	}
	return time.Now()
}

// since is how long ago began was; 0 for the zero time of startTime.
func since(began time.Time) time.Duration {
	if began.IsZero() {
		return 0
	}
	return time.Since(began)
}

// observe reports a finished operation: to the observers when there are
// any, else as a debug log line.
func (p *Pool) observe(ctx context.Context, op Operation, metricName, sql string, began time.Time, rows int64, err error) {
	if p.dispatch != nil {
		p.dispatch.send(QueryEvent{
			Context:    ctx,
			Instance:   p.name,
			Operation:  op,
			MetricName: metricName,
			SQL:        sql,
			Start:      began,
			Duration:   since(began),
			RowCount:   rows,
			Err:        p.scrub(err),
		})
		return
	}
	if ce := p.logger.Check(zap.DebugLevel, "postgres query"); ce != nil {
		ce.Write(
			zap.String("metric_name", metricName),
			zap.String("operation", string(op)),
			zap.Duration("duration", since(began)),
			zap.Int64("row_count", rows),
			zap.Error(p.scrub(err)),
		)
	}
}
