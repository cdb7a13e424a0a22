// Package migrate applies schema migrations when a sprocketspg database
// instance starts, with pressly/goose v3: SQL files with -- +goose Up and
// -- +goose Down sections, Go migrations, and an embed.FS to ship them in
// the binary.
//
//	//go:embed migrations/*.sql
//	var migrations embed.FS
//
//	sub, _ := fs.Sub(migrations, "migrations")
//	fx.New(sprocketspg.Module, migrate.Migrations(sub), ...)
//
// The migrations run after the instance's pool has connected and before
// the application's readiness opens. Processes that start together take
// goose's lock, so each migration is applied once: the session lock (a
// PostgreSQL advisory lock) by default, the table lock behind PgBouncer in
// transaction mode. Each migration runs in its own transaction, so a
// failing one leaves nothing of itself behind, and fails start with an
// error that names its file and the server's SQLSTATE and message.
//
// POSTGRES_MIGRATE chooses the mode: up (the default) applies and serves,
// off never migrates, only applies and exits, for a Kubernetes Job or
// init container. Without fx, New makes a Migrator whose Apply migrates a
// *sql.DB, or whose Extension goes to sprocketspg.WithExtension.
//
// The package does not import sprocketspg: it attaches to an instance
// through package instance, and sprocketspg does not import goose.
package migrate
