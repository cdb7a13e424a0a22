// Package fxtest_helpers gives tests a real PostgreSQL server and databases
// of their own on it, and fx applications wired to them.
//
// The server is started once per test binary, by the first test that asks
// for it. It is, first that works:
//
//  1. the existing server named by SPROCKETSPG_TEST_POSTGRES_URL, a
//     postgres:// URL of a role that may create databases;
//  2. a server run from local binaries found in $PG_BIN, by
//     `pg_config --bindir` or in the newest /usr/lib/postgresql/*/bin, with
//     its data on tmpfs and run as nobody when the tests run as root;
//  3. a container, when a Docker engine answers.
//
// If none can be started, every test that asks fails with a message saying
// how to provide one; none is skipped silently.
//
// NewDatabase returns the URL of a fresh database cloned from a template,
// which WithSchema fills once per distinct schema. A database is dropped
// when its test passes and kept, with its URL logged, when it fails.
// Server returns a handle that stops and starts the server, for tests of
// outages.
//
// StartReplicaSet starts a primary and a streaming hot standby of their
// own, for tests of failover (stop the primary, Promote the standby) and
// of reads from a standby. StartPgBouncer puts PgBouncer, in transaction
// pooling mode, in front of a server, for tests of the pool behind a
// connection pooler. StartTLSServer starts a server with TLS on, with a CA,
// a server certificate and a client certificate made in the test, and
// pg_hba.conf asking every role but the superuser for a client
// certificate over TLS, for tests of sslmode, certificate checks and
// certificate rotation. StartPatroniCluster starts etcd and a Patroni
// cluster of several nodes, with operations that kill, freeze, restart
// and switch over a node, for tests of failover under an HA manager.
//
// A test binary may call Shutdown from TestMain after m.Run to stop the
// server and remove its files at once, before checking for leaked
// goroutines: a local server is watched by a goroutine while it runs.
// Without Shutdown a local server dies with the test binary and the next
// run removes its files.
package fxtest_helpers
