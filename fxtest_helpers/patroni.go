package fxtest_helpers

import (
	"context"
	"testing"
	"time"

	"github.com/sprockets/sprocketspg/internal/pgserver"
)

// Timeouts of the Patroni helpers. A start includes initdb and a base
// backup per replica; a failover takes the leader lock's ttl (6s) and a
// little more, and a thawed old leader may need pg_rewind first.
const (
	patroniStartTimeout = 2 * time.Minute
	patroniOpTimeout    = time.Minute
)

// PatroniOption changes the cluster that StartPatroniCluster starts.
type PatroniOption func(*[]pgserver.PatroniOption)

// WithSynchronousMode turns on Patroni's synchronous_mode: the leader
// names one replica its synchronous standby, commits wait for it, and
// only it may take over. StartPatroniCluster then also waits until the
// standby is chosen.
func WithSynchronousMode() PatroniOption {
	return func(o *[]pgserver.PatroniOption) { *o = append(*o, pgserver.WithSynchronousMode()) }
}

// WithPatroniDCS sets one of Patroni's bootstrap DCS settings, such as
// ttl (6 by default), loop_wait (1), retry_timeout (2),
// maximum_lag_on_failover or synchronous_node_count; value is written as
// JSON. Patroni needs loop_wait + 2*retry_timeout <= ttl.
func WithPatroniDCS(name string, value any) PatroniOption {
	return func(o *[]pgserver.PatroniOption) { *o = append(*o, pgserver.WithPatroniDCS(name, value)) }
}

// WithPatroniParameter sets a PostgreSQL setting, such as
// max_connections, on every node, replacing the helpers' default.
func WithPatroniParameter(name, value string) PatroniOption {
	return func(o *[]pgserver.PatroniOption) { *o = append(*o, pgserver.WithPatroniParameter(name, value)) }
}

// PatroniCluster is a Patroni HA cluster started by StartPatroniCluster.
// Node indexes go from 0 to Nodes()-1. Each method that acts on the
// cluster takes the test it acts for, which it fails (tb.Fatalf) when the
// action fails, so that subtests can share one cluster; the methods are
// safe for concurrent use.
type PatroniCluster struct {
	c *pgserver.PatroniCluster
}

// StartPatroniCluster starts a Patroni cluster of nodes PostgreSQL
// servers, one leader and streaming replicas, with an etcd of its own, for
// tests of failover, switchover and a frozen primary: what a pool sees
// when the leader's host dies (Kill), when it hangs (Freeze), and when an
// operator moves the leader (Switchover). It returns once a leader is
// elected and every replica streams from it, a matter of seconds, and
// stops the cluster and removes its files when tb ends.
//
// Every node listens on a port of 127.0.0.1; URL names them all, so that
// a client with target_session_attrs=read-write finds the leader. The
// superuser postgres connects without a password. The leader lock's ttl
// is 6 seconds, so a failover takes 6 to 10; use_pg_rewind is on, so an
// old leader comes back as a replica. The cluster is independent of the
// server NewDatabase uses.
//
// It needs Patroni with python3-etcd and etcd (apt-get install patroni
// etcd-server etcd-client python3-etcd), pkill (procps) and local
// PostgreSQL server binaries: Patroni runs PostgreSQL itself, so neither
// Docker nor SPROCKETSPG_TEST_POSTGRES_URL can stand in. StartPatroniCluster
// fails tb, saying what to install, when one is missing, and quoting the
// nodes' logs when the cluster does not come up; when tb fails later, the
// end of the nodes' logs is logged before the cluster is stopped.
func StartPatroniCluster(tb testing.TB, nodes int, opts ...PatroniOption) *PatroniCluster {
	tb.Helper()
	pgOpts := []pgserver.PatroniOption{pgserver.WithPatroniLogf(tb.Logf)}
	for _, o := range opts {
		o(&pgOpts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), patroniStartTimeout)
	defer cancel()
	c, err := pgserver.StartPatroniCluster(ctx, nodes, pgOpts...)
	if err != nil {
		tb.Fatalf("fxtest_helpers: start Patroni cluster: %v", err)
	}
	tb.Cleanup(func() {
		// The logs go with the cluster's files; a failed test shows what
		// the nodes did first.
		if tb.Failed() {
			tb.Logf("fxtest_helpers: Patroni cluster logs, as the test failed:\n%s", c.Logs())
		}
		if err := c.Close(); err != nil {
			tb.Errorf("fxtest_helpers: stop Patroni cluster: %v", err)
		}
	})
	return &PatroniCluster{c: c}
}

// Nodes returns the number of nodes.
func (p *PatroniCluster) Nodes() int { return p.c.Nodes() }

// URL returns a connection URL of the superuser to database dbName that
// names every node, such as
// postgres://postgres@127.0.0.1:5433,127.0.0.1:5434/postgres?sslmode=disable.
// params are further query parameters as name=value:
// target_session_attrs=read-write makes a client connect to the leader,
// and connect_timeout=2 keeps a frozen node from holding a connection
// attempt up.
func (p *PatroniCluster) URL(dbName string, params ...string) string {
	return p.c.URL(dbName, params...)
}

// NodeURL returns a connection URL of the superuser to database dbName on
// node i alone, with params as for URL.
func (p *PatroniCluster) NodeURL(i int, dbName string, params ...string) string {
	return p.c.NodeURL(i, dbName, params...)
}

// Address returns node i's PostgreSQL address, such as 127.0.0.1:5433.
func (p *PatroniCluster) Address(i int) string { return p.c.Address(i) }

// RESTAddress returns the address of node i's Patroni REST API, such as
// 127.0.0.1:8008, for tests that ask Patroni themselves.
func (p *PatroniCluster) RESTAddress(i int) string { return p.c.RESTAddress(i) }

// Name returns node i's Patroni member name, which is also its
// application_name in the leader's pg_stat_replication.
func (p *PatroniCluster) Name(i int) string { return p.c.Name(i) }

// Leader returns the index of the node that is the leader now, as
// Patroni's REST API says; it fails tb when no node is.
func (p *PatroniCluster) Leader(tb testing.TB) int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patroniOpTimeout)
	defer cancel()
	l, err := p.c.Leader(ctx)
	if err != nil {
		tb.Fatalf("fxtest_helpers: %v", err)
	}
	return l
}

// WaitLeader waits until a node that is not in exclude, and neither
// killed nor frozen, is the leader, and returns its index: after Kill or
// Freeze of the leader, pass its index to wait for the failover.
func (p *PatroniCluster) WaitLeader(tb testing.TB, exclude ...int) int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patroniOpTimeout)
	defer cancel()
	l, err := p.c.WaitLeader(ctx, exclude...)
	if err != nil {
		tb.Fatalf("fxtest_helpers: %v", err)
	}
	return l
}

// WaitHealthy waits until every node that is neither killed nor frozen
// runs, one is the leader and the others stream from it and have replayed
// all its WAL, as StartPatroniCluster leaves the cluster: call it after
// Thaw or Switchover to hand a healthy cluster to the next test, and
// before Kill or Freeze of a leader that took over a moment ago. To flush
// the leader's WAL it commits an empty transaction there, which uses up a
// transaction ID.
func (p *PatroniCluster) WaitHealthy(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patroniOpTimeout)
	defer cancel()
	if err := p.c.WaitHealthy(ctx); err != nil {
		tb.Fatalf("fxtest_helpers: %v", err)
	}
}

// Kill kills node i as a host that dies would: SIGKILL to Patroni, the
// postmaster and every backend, with no clean shutdown and no handing
// over of the leader lock. Clients connected to it see their connections
// fail. Restart brings it back.
func (p *PatroniCluster) Kill(tb testing.TB, i int) {
	tb.Helper()
	p.do(tb, func(ctx context.Context) error { return p.c.Kill(ctx, i) })
}

// Restart starts node i again after Kill and waits until it has rejoined
// the cluster, normally as a streaming replica, and the cluster is healthy
// (see WaitHealthy).
func (p *PatroniCluster) Restart(tb testing.TB, i int) {
	tb.Helper()
	p.do(tb, func(ctx context.Context) error { return p.c.Restart(ctx, i) })
}

// Freeze stops node i with SIGSTOP, Patroni and all of PostgreSQL, as a
// virtual machine that is paused: connections to it stay open but nothing
// answers, and when it was the leader another node takes over after the
// lock's ttl. Thaw resumes it.
func (p *PatroniCluster) Freeze(tb testing.TB, i int) {
	tb.Helper()
	p.do(tb, func(ctx context.Context) error { return p.c.Freeze(ctx, i) })
}

// Thaw resumes node i after Freeze. An old leader finds it lost the lock,
// demotes itself and follows the new leader, after pg_rewind when needed;
// WaitHealthy waits for that.
func (p *PatroniCluster) Thaw(tb testing.TB, i int) {
	tb.Helper()
	p.do(tb, func(ctx context.Context) error { return p.c.Thaw(ctx, i) })
}

// Switchover asks Patroni to hand leadership over to node candidate, or
// with -1 to a replica Patroni picks, and returns the index of the new
// leader once it runs as primary. The old leader stops cleanly, so its
// clients' connections end, and it follows the new leader.
func (p *PatroniCluster) Switchover(tb testing.TB, candidate int) int {
	tb.Helper()
	var l int
	p.do(tb, func(ctx context.Context) (err error) {
		l, err = p.c.Switchover(ctx, candidate)
		return err
	})
	return l
}

func (p *PatroniCluster) do(tb testing.TB, op func(context.Context) error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patroniOpTimeout)
	defer cancel()
	if err := op(ctx); err != nil {
		tb.Fatalf("fxtest_helpers: %v", err)
	}
}
