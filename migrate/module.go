package migrate

import (
	"fmt"
	"io/fs"

	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg/instance"
)

// migratorsGroup holds every Migrator of an application, so that ModeOnly
// waits for all of them.
const migratorsGroup = "migrate_migrators"

// Migrations applies the migrations in fsys to a database instance of the
// application when it starts: sprocketspg.Module's, or the Named one that
// ForInstance names. They run in the instance's start, once its pool has
// connected and before the application's readiness opens, so that /readyz
// turns 200 only over a migrated schema; a failing migration fails start.
// Several processes starting together apply each migration once: one
// holds the lock (Config.Lock) and the others wait for it, then find
// nothing to do.
//
// The Config comes from the environment, with the instance's prefix
// (LoadConfig), then WithConfig: POSTGRES_MIGRATE (up, off, only),
// POSTGRES_MIGRATION_URL, POSTGRES_MIGRATION_LOCK (session, table),
// POSTGRES_MIGRATION_LOCK_TIMEOUT and POSTGRES_MIGRATION_TIMEOUT. The
// start context bounds the migrations too: raise fx.StartTimeout (15 s by
// default) above the Timeout.
//
// Migrations provides the *Migrator, tagged `name:"<instance>"` for a
// Named instance, for its Version and Applied, and adds the readiness
// check "postgres:schemaVersion" ("postgres-<instance>:schemaVersion") to
// the instance's health checks. fx.New fails when fsys holds no valid
// migrations, when a variable is bad, when the instance is not in the
// application, and when the same instance has two Migrations.
func Migrations(fsys fs.FS, opts ...Option) fx.Option {
	var probe Migrator
	for _, opt := range opts {
		opt.apply(&probe)
	}
	name := probe.instName
	tag := instance.Tag(name)
	return fx.Module(instance.ModuleName("migrate", name),
		fx.Provide(fx.Annotate(
			func() (*Migrator, *Migrator, error) {
				prefix := instance.EnvPrefix(name)
				cfg, err := LoadConfig(prefix)
				if err != nil {
					return nil, nil, err
				}
				m, err := newMigrator(fsys, cfg, opts)
				if err != nil {
					return nil, nil, fmt.Errorf("migrations of %s: %w", describeInstance(name), err)
				}
				return m, m, nil
			},
			fx.ResultTags(tag, `group:"`+migratorsGroup+`"`))),
		fx.Invoke(fx.Annotate(attach,
			fx.ParamTags(tag, `group:"`+migratorsGroup+`"`, `group:"`+instance.HandlesGroup+`"`))),
	)
}

// attach gives m to its instance, and shares one onlyRun among all the
// Migrators of the application.
func attach(m *Migrator, all []*Migrator, handles []instance.Handle) error {
	h, err := instance.Find(handles, m.instName)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var run *onlyRun
	for _, other := range all {
		if len(other.run.members) == len(all) {
			run = other.run
		}
	}
	if run == nil {
		run = &onlyRun{members: all}
		for _, other := range all {
			other.run = run
		}
	}
	return h.Attach(m.Extension())
}

func describeInstance(name string) string {
	if name == "" {
		return "default database instance"
	}
	return fmt.Sprintf("database instance %q", name)
}
