package sprocketspg

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/multitracer"
	"github.com/jackc/pgx/v5/tracelog"
	"go.uber.org/zap"
)

// WithTracer adds t to the pgx tracers of the pool's connections. Several
// tracers run together (through pgx's multitracer), with the statement
// logger of Config.LogQueries and any tracer set with WithPoolConfig: an
// OpenTelemetry tracer and a log tracer need not choose.
func WithTracer(t pgx.QueryTracer) Option {
	return optionFunc(func(o *options) {
		if t != nil {
			o.tracers = append(o.tracers, t)
		}
	})
}

// WithInstanceTracer adds to the pool's tracers the one newTracer returns
// for the name of the pool's instance ("" for the default; see Named and
// WithName), or none when it returns nil. It is for an option shared by
// every instance of an application, from OptionsGroup, whose tracer should
// say which instance it traced. newTracer is called once per pool, after
// all of its options have been applied.
func WithInstanceTracer(newTracer func(instance string) pgx.QueryTracer) Option {
	return optionFunc(func(o *options) {
		if newTracer != nil {
			o.instanceTracers = append(o.instanceTracers, newTracer)
		}
	})
}

// combineTracers returns the one tracer pgx allows per connection: nil
// for none, the tracer itself for one, a multitracer for several.
func combineTracers(tracers []pgx.QueryTracer) pgx.QueryTracer {
	switch len(tracers) {
	case 0:
		return nil
	case 1:
		return tracers[0]
	}
	return multitracer.New(tracers...)
}

// queryLogTracer returns pgx's tracelog writing to logger, as Config asks,
// or nil when neither statement logs nor slow-query logs are on: with no
// tracer a query pays nothing for logging.
func queryLogTracer(cfg Config, logger *zap.Logger) pgx.QueryTracer {
	if !cfg.LogQueries && cfg.SlowQueryThreshold <= 0 {
		return nil
	}
	return &tracelog.TraceLog{
		Logger: zapTraceLogger{
			logger: logger.With(zap.String("component", "pgx")),
			all:    cfg.LogQueries,
			args:   cfg.LogQueryArgs,
			slow:   cfg.SlowQueryThreshold,
		},
		// tracelog reports successful statements at info and failures at
		// error; asking for info gets both, and the adapter decides.
		LogLevel: tracelog.LogLevelInfo,
		Config:   &tracelog.TraceLogConfig{TimeKey: traceTimeKey},
	}
}

// traceTimeKey is where tracelog puts a statement's duration.
const traceTimeKey = "duration"

// zapTraceLogger adapts tracelog to zap. It logs every statement at info
// when all is set, and a statement slower than slow at warn, and leaves
// out the arguments unless args is set.
type zapTraceLogger struct {
	logger *zap.Logger
	all    bool
	args   bool
	slow   time.Duration
}

func (z zapTraceLogger) Log(_ context.Context, _ tracelog.LogLevel, msg string, data map[string]any) {
	duration, _ := data[traceTimeKey].(time.Duration)
	slow := z.slow > 0 && duration >= z.slow
	if !z.all && !slow {
		return
	}
	zlevel := zap.InfoLevel
	message := "postgres " + msg
	if slow {
		zlevel = zap.WarnLevel
		message = "slow postgres " + msg
	}
	ce := z.logger.Check(zlevel, message)
	if ce == nil {
		return
	}
	fields := make([]zap.Field, 0, len(data))
	for k, v := range data {
		switch k {
		case "args":
			if !z.args {
				continue
			}
			fields = append(fields, zap.Any(k, v))
		case "err":
			if err, ok := v.(error); ok {
				fields = append(fields, zap.Error(err))
				continue
			}
			fields = append(fields, zap.Any(k, v))
		default:
			fields = append(fields, zap.Any(k, v))
		}
	}
	ce.Write(fields...)
}
