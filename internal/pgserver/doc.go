// Package pgserver starts a throwaway PostgreSQL server for tests and
// examples.
//
// Start picks the first backend that works:
//
//  1. the server named by the SPROCKETSPG_TEST_POSTGRES_URL environment
//     variable, used as it is (BackendURL);
//  2. local server binaries from $PG_BIN, `pg_config --bindir` or the newest
//     /usr/lib/postgresql/*/bin, run as a child process (BackendLocal);
//  3. a container started through a Docker engine that answers a ping
//     (BackendDocker).
//
// A local server keeps its data on tmpfs (/dev/shm) when it can, runs
// without durability (fsync, synchronous_commit and full_page_writes are
// off) and, when the caller is root, as the user nobody because PostgreSQL
// refuses to run as root. On Linux it is killed by the kernel when the
// process that started it dies, even by SIGKILL. Its cluster is initialised once per
// server version and user and cached under os.UserCacheDir; later starts
// copy the cached cluster instead of running initdb.
//
// StartStandby starts a hot standby of a local server, copied with
// pg_basebackup and streaming from it, and Server.Promote makes a standby
// a primary. StartPgBouncer runs PgBouncer in front of a server. Both run
// like a local server: as nobody when the caller is root, dying with the
// caller, in run directories of their own. StartPatroniCluster runs etcd
// and Patroni nodes the same way; Patroni's PostgreSQL, which Patroni
// starts detached, is stopped by a reaper process when the caller dies.
//
// WithTLS turns TLS on in a local server, and NewCA makes a CA that issues
// the server and client certificates a test needs, in Go.
//
// Files of servers whose owning process died without Close are removed by
// the next Start.
package pgserver
