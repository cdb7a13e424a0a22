package fxtest_helpers

import (
	"context"
	"testing"
	"time"

	"github.com/sprockets/sprocketspg/internal/pgserver"
)

// pgBouncerStartTimeout bounds the start of a PgBouncer.
const pgBouncerStartTimeout = 30 * time.Second

// PgBouncerOption changes the PgBouncer that StartPgBouncer starts.
type PgBouncerOption func(settings map[string]string)

// WithPgBouncerSetting sets a [pgbouncer] setting of pgbouncer.ini, such
// as default_pool_size or pool_mode, replacing the helpers' default; an
// empty value removes the default. The defaults are transaction pooling,
// two server connections per database and user, and
// ignore_startup_parameters = extra_float_digits,statement_timeout,
// without which PgBouncer refuses every connection of a sprocketspg pool
// (it sends statement_timeout when connecting).
func WithPgBouncerSetting(name, value string) PgBouncerOption {
	return func(s map[string]string) { s[name] = value }
}

// StartPgBouncer starts PgBouncer in front of server and returns the URL
// of database dbName through it. PgBouncer listens on a free port of
// 127.0.0.1, forwards any database name to server and lets the server's
// user in without a password. It runs until tb ends, when it is stopped
// and its files removed; register it after the database it serves, so
// that it goes first.
//
// A query ended by the caller's deadline makes the pool send PgBouncer a
// cancel request; PgBouncer 1.18, the version Debian 12 ships, can crash
// on it (pgbouncer/pgbouncer#801, fixed in 1.19.1), so a test that cancels
// that way needs a newer PgBouncer.
//
// The binary is $PGBOUNCER, pgbouncer in PATH or /usr/sbin/pgbouncer.
// StartPgBouncer fails tb when there is none, saying how to install it
// (apt-get install pgbouncer), or when PgBouncer does not start.
func StartPgBouncer(tb testing.TB, server *TestServer, dbName string, opts ...PgBouncerOption) string {
	tb.Helper()
	settings := map[string]string{}
	for _, o := range opts {
		o(settings)
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgBouncerStartTimeout)
	defer cancel()
	b, err := pgserver.StartPgBouncer(ctx, server.AdminURL(), settings, pgserver.WithLogf(tb.Logf))
	if err != nil {
		tb.Fatalf("fxtest_helpers: start PgBouncer: %v", err)
	}
	tb.Cleanup(func() {
		if err := b.Close(); err != nil {
			tb.Errorf("fxtest_helpers: stop PgBouncer: %v", err)
		}
	})
	return b.URL(dbName)
}
