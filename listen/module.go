package listen

import (
	"fmt"

	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg/instance"
)

// ListenersGroup is the fx value group that holds every Listener of an
// application, for plug-ins that serve them all, such as prompg.
const ListenersGroup = "listen_listeners"

// Notifications gives a database instance of the application a Listener:
// sprocketspg.Module's, or the Named one that ForInstance names. It
// provides the *Listener, tagged `name:"<instance>"` for a Named instance,
// for constructors to Handle their channels with, and adds it to
// ListenersGroup. The listener connects when its instance starts, after
// the pool and before readiness opens, stops at the beginning of the
// instance's stop, before the pool closes, and adds the readiness check
// "postgres:listener" ("postgres-<instance>:listener"). fx.New fails when
// the instance is not in the application or has two listeners.
func Notifications(opts ...Option) fx.Option {
	var probe Listener
	for _, opt := range opts {
		opt.apply(&probe)
	}
	name := probe.instName
	tag := instance.Tag(name)
	return fx.Module(instance.ModuleName("listen", name),
		fx.Provide(fx.Annotate(
			func() (*Listener, *Listener) {
				l := New(opts...)
				return l, l
			},
			fx.ResultTags(tag, `group:"`+ListenersGroup+`"`))),
		fx.Invoke(fx.Annotate(func(l *Listener, handles []instance.Handle) error {
			h, err := instance.Find(handles, name)
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			return h.Attach(l.Extension())
		}, fx.ParamTags(tag, `group:"`+instance.HandlesGroup+`"`))),
	)
}
