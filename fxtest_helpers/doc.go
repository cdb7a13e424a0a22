// Package fxtest_helpers gives tests a real PostgreSQL server and databases
// of their own on it, and fx applications wired to them.
//
// The server is started once per test binary, by the first test that asks
// for it (see internal/pgserver for where it comes from: the server named by
// SPROCKETSPG_TEST_POSTGRES_URL, local server binaries, or Docker). If no
// server can be started, every test that asks fails with a message saying
// how to provide one; none is skipped silently.
//
// NewDatabase returns the URL of a fresh database cloned from a template,
// which WithSchema fills once per distinct schema. A database is dropped
// when its test passes and kept, with its URL logged, when it fails.
//
// A test binary may call Shutdown from TestMain after m.Run to stop the
// server and remove its files at once. Without it a local server dies with
// the test binary and the next run removes its files.
package fxtest_helpers
