package fxtest_helpers

import (
	"context"
	"fmt"
	"net/url"
	"testing"

	"github.com/sprockets/sprocketspg/internal/pgserver"
)

// StartReplicaSet starts a primary and a hot standby that streams from it,
// for tests of failover and of reads from a standby. Both are servers of
// their own, independent of the one NewDatabase uses, at two addresses on
// 127.0.0.1, and are closed, their files removed, when tb ends.
//
// The standby returns once it streams WAL from the primary; it is read
// only, so NewDatabase on it fails until it is promoted (Promote). A
// database created on the primary reaches the standby, as does everything
// else the primary writes, moments later. Stop the primary and Promote
// the standby to simulate a failover.
//
// A standby needs local PostgreSQL server binaries (pg_basebackup among
// them): StartReplicaSet fails tb, saying how to install them, when the
// helpers would otherwise run PostgreSQL in Docker, and whenever either
// server cannot be started.
func StartReplicaSet(tb testing.TB) (primary, standby *TestServer) {
	tb.Helper()
	// The primary comes from pgserver rather than the public throwaway
	// package, since StartStandby needs pgserver's own handle on it.
	ps := newSharedServer(func(ctx context.Context, logf func(string, ...any)) (*pgserver.Server, error) {
		return pgserver.Start(ctx, pgserver.WithLogf(logf), pgserver.WithOwnServer())
	})
	primary = &TestServer{s: ps, srv: ps.get(tb)}
	tb.Cleanup(func() {
		if err := ps.shutdown(); err != nil {
			tb.Errorf("fxtest_helpers: %v", err)
		}
	})
	if b := primary.Backend(); b != pgserver.BackendLocal {
		tb.Fatalf("fxtest_helpers: a standby needs local PostgreSQL server binaries, "+
			"but the server runs on the %s backend: install them (e.g. apt-get install postgresql) "+
			"or set %s to the directory holding initdb, postgres and pg_basebackup", b, pgserver.EnvBinDir)
	}
	s := newSharedServer(func(ctx context.Context, logf func(string, ...any)) (*pgserver.Server, error) {
		return pgserver.StartStandby(ctx, primary.srv.(*pgserver.Server), pgserver.WithLogf(logf))
	})
	srv := s.get(tb)
	// Registered after the primary's cleanup, so it runs first: the
	// standby goes before the server it follows.
	tb.Cleanup(func() {
		if err := s.shutdown(); err != nil {
			tb.Errorf("fxtest_helpers: %v", err)
		}
	})
	return primary, &TestServer{s: s, srv: srv}
}

// Promote turns a standby from StartReplicaSet into a primary and returns
// once it accepts writes, or with ctx's error when ctx ends first.
// Clients connected to it stay connected; their sessions can write from
// then on. Promote returns an error for a server that is not a standby,
// is stopped, or was not started from local binaries.
func (t *TestServer) Promote(ctx context.Context) error {
	t.s.closeIdle()
	p, ok := t.srv.(interface{ Promote(context.Context) error })
	if !ok {
		return fmt.Errorf("promote server at %s: not a standby (only StartReplicaSet's standby can be promoted): %w",
			t.Address(), pgserver.ErrNotSupported)
	}
	return p.Promote(ctx)
}

// Address returns the server's host:port, such as 127.0.0.1:5433, for
// building URLs that name several servers (postgres://u@h1:p1,h2:p2/db).
func (t *TestServer) Address() string {
	u, err := url.Parse(t.srv.URL())
	if err != nil {
		return ""
	}
	return u.Host
}
