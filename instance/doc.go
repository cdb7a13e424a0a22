// Package instance is how packages that add to a database instance of
// sprocketspg, such as migrate, attach to it without importing the root
// package: the instance shows itself to them as a Handle, and each of them
// gives it an Extension whose Start runs once the instance's pool has
// connected and before the application's readiness opens, and whose Stop
// runs before the pool closes.
//
// Applications do not use this package directly; the packages that extend
// an instance take care of it, with fx or without:
//
//	m, err := migrate.New(migrations.FS)
//	pool, err := sprocketspg.New(ctx, cfg, sprocketspg.WithExtension(m.Extension()))
package instance
