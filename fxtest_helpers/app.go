package fxtest_helpers

import (
	"testing"

	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/fx/fxtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg"
)

// NewApp returns a started fxtest.App holding sprocketspg.Module connected
// to a fresh database of the test's own (NewDatabase), with a zaptest
// logger as the *zap.Logger and as fx's event logger. The app is stopped
// when the test ends, before its database is dropped.
//
// opts are added to the application; a Config decorated or replaced in
// opts keeps its other settings, but its URL is always the test
// database's. Use NewAppWithDatabase to start from a database built with
// options such as WithSchema.
func NewApp(tb testing.TB, opts ...fx.Option) *fxtest.App {
	tb.Helper()
	return NewAppWithDatabase(tb, NewDatabase(tb), opts...)
}

// NewAppWithDatabase is NewApp connected to the database at url, typically
// one returned by NewDatabase with options.
func NewAppWithDatabase(tb testing.TB, url string, opts ...fx.Option) *fxtest.App {
	tb.Helper()
	logger := zaptest.NewLogger(tb, zaptest.Level(zap.DebugLevel))
	all := []fx.Option{
		fx.Supply(logger),
		fx.WithLogger(func() fxevent.Logger { return &fxevent.ZapLogger{Logger: logger} }),
		// The URL decorator sits in a module of its own so that a caller's
		// fx.Decorate of Config at the root still composes with it.
		fx.Module("fxtest_helpers",
			sprocketspg.Module,
			fx.Decorate(func(c sprocketspg.Config) sprocketspg.Config {
				c.URL = url
				return c
			}),
		),
	}
	app := fxtest.New(tb, append(all, opts...)...)
	app.RequireStart()
	tb.Cleanup(app.RequireStop)
	return app
}

// NamedDatabase adds the instance sprocketspg.Named(name) to an app of
// NewApp or NewAppWithDatabase, connected to a fresh database of tb's own
// (NewDatabase with opts), for tests of applications with several
// databases:
//
//	fxtest_helpers.NewApp(t,
//		fxtest_helpers.NamedDatabase(t, "orders", fxtest_helpers.WithSchema(ordersSQL)),
//		fx.Populate(&pools), // a struct with `name:"orders"` fields, say
//	)
//
// As with NewApp's own database, a Config decorated elsewhere keeps its
// other settings but the instance's URL is always the test database's. It
// fails tb when the database cannot be created.
func NamedDatabase(tb testing.TB, name string, opts ...DatabaseOption) fx.Option {
	tb.Helper()
	url := NewDatabase(tb, opts...)
	tag := `name:"` + name + `"`
	// A module of its own, as NewApp's decorator: a caller's decorator of
	// the named Config at the root composes with it.
	return fx.Module("fxtest_helpers_"+name,
		sprocketspg.Named(name),
		fx.Decorate(fx.Annotate(func(c sprocketspg.Config) sprocketspg.Config {
			c.URL = url
			return c
		}, fx.ParamTags(tag), fx.ResultTags(tag))),
	)
}
