package fxtest_helpers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sprockets/sprocketspg/internal/redact"
)

// hbaTimeout bounds SetHBA's statements.
const hbaTimeout = 30 * time.Second

// SetHBA replaces the server's pg_hba.conf with lines and reloads the
// server's configuration, for tests of authentication: a password that is
// checked (scram-sha-256), a role or database with no entry, TLS-only
// access (hostssl). The helpers' servers trust every local connection
// until then. The superuser's own access (AdminURL) keeps working only if
// lines allow it, so include a line such as
//
//	host all postgres 127.0.0.1/32 trust
//
// SetHBA needs write access to the server's files, so it works on servers
// started from local binaries (StartServer, StartReplicaSet) and returns an
// error for others. Use it on a server of the test's own (StartServer),
// since every test sharing a server would see the change. It returns an
// error when the server refuses the new file; the old one is then put
// back.
func (t *TestServer) SetHBA(ctx context.Context, lines ...string) error {
	ctx, cancel := context.WithTimeout(ctx, hbaTimeout)
	defer cancel()
	url := t.AdminURL()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return redact.Error(fmt.Errorf("set pg_hba.conf: connect to %s: %w", redact.ConnString(url), err), redact.Password(url))
	}
	defer func() { _ = conn.Close(context.Background()) }()
	var path string
	if err := conn.QueryRow(ctx, "SHOW hba_file").Scan(&path); err != nil {
		return fmt.Errorf("set pg_hba.conf: find it: %w", err)
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("set pg_hba.conf: the server's %s is not readable here "+
			"(SetHBA needs a server started from local binaries): %w", path, err)
	}
	// Writing in place keeps the file's owner, the server's own user.
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0); err != nil {
		return fmt.Errorf("set pg_hba.conf: write %s: %w", path, err)
	}
	var loaded time.Time
	if err := conn.QueryRow(ctx, "SELECT pg_conf_load_time()").Scan(&loaded); err != nil {
		return fmt.Errorf("set pg_hba.conf: read the configuration's load time: %w", err)
	}
	if err := reloadHBA(ctx, conn); err != nil {
		// The server keeps its previous rules when a reload fails; the
		// file goes back to them too, so the next reload is not broken.
		_ = os.WriteFile(path, old, 0)
		return err
	}
	return waitReloaded(ctx, url, loaded)
}

// waitReloaded returns once new connections get the configuration loaded
// after before: the postmaster reloads on a signal, a moment after
// pg_reload_conf returns, and new sessions inherit what it has loaded.
func waitReloaded(ctx context.Context, url string, before time.Time) error {
	for {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("set pg_hba.conf: wait for the reload: %w", ctx.Err())
			}
			// The new rules may shut the superuser out; that they apply is
			// all this wanted to see.
			return nil
		}
		var loaded time.Time
		err = conn.QueryRow(ctx, "SELECT pg_conf_load_time()").Scan(&loaded)
		_ = conn.Close(context.Background())
		if err == nil && loaded.After(before) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("set pg_hba.conf: wait for the reload: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// reloadHBA reloads the configuration and checks that the new pg_hba.conf
// was taken: a file with an error is ignored by the reload and only shows
// in pg_hba_file_rules.
func reloadHBA(ctx context.Context, conn *pgx.Conn) error {
	var problems []string
	rows, err := conn.Query(ctx, "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL")
	if err != nil {
		return fmt.Errorf("set pg_hba.conf: check it: %w", err)
	}
	for rows.Next() {
		var line int
		var msg string
		if err := rows.Scan(&line, &msg); err != nil {
			rows.Close()
			return fmt.Errorf("set pg_hba.conf: check it: %w", err)
		}
		problems = append(problems, fmt.Sprintf("line %d: %s", line, msg))
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("set pg_hba.conf: check it: %w", err)
	}
	if len(problems) > 0 {
		return errors.New("set pg_hba.conf: the server refuses it: " + strings.Join(problems, "; "))
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_reload_conf()").Scan(&ok); err != nil || !ok {
		return fmt.Errorf("set pg_hba.conf: reload the server's configuration: %v", err)
	}
	return nil
}
