// Package sprocketspg gives Uber fx services a configured PostgreSQL
// connection pool built on pgx v5, ported from the Python library
// sprockets-postgres.
//
// Add Module to an application and take a *Pool in any constructor:
//
//	fx.New(
//		sprocketspg.Module,
//		fx.Invoke(func(db *sprocketspg.Pool) { ... }),
//	).Run()
//
// Module reads its Config from POSTGRES_* environment variables
// (LoadConfig); values set in code with fx.Decorate or fx.Replace win over
// the environment. The pool connects when the application starts and
// closes when it stops, so use it from start hooks, handlers and workers
// rather than while constructors run. Without fx, New builds and connects
// a Pool.
//
// Pool embeds *pgxpool.Pool, so all of pgx is at hand; Execute and
// Callproc add the original library's result shape (QueryResult), and
// Status its health report. Errors can be classified with
// IsUniqueViolation, IsForeignKeyViolation, IsQueryTimeout and
// IsConnectionError.
package sprocketspg
