// Package health reports whether a service's PostgreSQL pools can serve
// queries, and answers HTTP probes with the result.
//
// A Checker pings the database through the application's own pool, so a
// probe sees what queries see: the same connections, the same limits. It
// serves three endpoints (Register mounts them):
//
//	GET /livez    200 while the process runs; never touches the database
//	GET /readyz   200 when the service is ready and its databases answer,
//	              503 otherwise; application/health+json in the shape of
//	              the IETF health check draft (draft-inadarei-api-health-check)
//	GET /status   the sprockets-postgres status document: application,
//	              environment, postgres{pool_free,pool_size}, status ok or
//	              unavailable, version, and instances{...} for the other
//	              databases when there are several; 503 when unavailable
//
// Results are reused for a short window (WithCacheWindow) and concurrent
// checks share one ping, so probes from many sources cost the database
// at most one round trip per window. A saturated pool is reported as
// "warn" without waiting for a connection: waiting would fail readiness,
// and take the instance out of service, exactly when it is busiest.
//
// Readiness also has a gate, SetReady, that the owner of the pool opens
// once the pool has connected and closes before it begins to shut down,
// so load balancers stop sending traffic while in-flight work drains.
// Drain, called first in the stop hook of the HTTP server, closes the gate
// and waits for a drain delay (WithDrainDelay) while the server still
// answers, so that probes see the 503 before the listener goes away.
//
// An application with several PostgreSQL instances checks them all in one
// Checker: WithName names the main database, WithInstance adds the others,
// and Combine joins Checkers built separately, one per instance. Each
// database has its own check names ("postgres:..." for the unnamed,
// default one, "postgres-orders:..." for one named orders), and all are
// pinged concurrently. Readiness fails when any database fails, unless
// OptionalInstance marked it optional: then the verdict is warn and the
// service stays ready. The status document keeps the original's keys for
// the main database and lists the others under "instances".
//
// The package needs only the Database interface; FromPgxpool adapts a
// *pgxpool.Pool for services that use pgx without the rest of the module.
package health
