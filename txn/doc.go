// Package txn runs PostgreSQL transactions on pgx: it begins one, runs a
// function in it, and commits, or rolls back on an error, a panic or the
// end of the context, so the connection always goes back clean.
//
// Options add a per-transaction statement_timeout that costs no round
// trip (it travels in the same message as BEGIN), the isolation level,
// read-only and deferrable modes, and retries of transactions that fail
// with a serialization failure or a deadlock. Run on a pgx.Tx makes a
// savepoint, for a part of a transaction that may fail on its own.
//
// The package does not depend on the rest of sprocketspg: anything that
// can Begin a pgx.Tx will do, such as *pgxpool.Pool, *pgx.Conn or pgx.Tx.
package txn
