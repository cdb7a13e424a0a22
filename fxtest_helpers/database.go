package fxtest_helpers

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/sprockets/sprocketspg/internal/redact"
	"github.com/sprockets/sprocketspg/migrate"
)

// dbTimeout bounds each database operation of the helpers.
const dbTimeout = 2 * time.Minute

// maxIdentLen is PostgreSQL's limit on identifiers (NAMEDATALEN - 1).
const maxIdentLen = 63

// DatabaseOption changes the database NewDatabase creates.
type DatabaseOption func(*dbOptions)

type dbOptions struct {
	// fill builds the template's content; nil for an empty database.
	fill *templateFill
}

// templateFill is how a template database is filled: key names the
// template (a hash of everything that decides its content), build fills
// the database at url, and err is an error of the option itself.
type templateFill struct {
	key   []byte
	build func(ctx context.Context, url string) error
	err   error
}

// WithSchema fills the database with sql, any number of statements run as
// one simple-protocol batch. The SQL runs once per distinct text, into a
// template database shared by every test that passes the same text, even
// from other test binaries using the same server; each database is a
// copy of it. Build the schema only from the SQL: the template is named by
// a hash of sql, so state it reads from elsewhere is not part of the key.
func WithSchema(sql string) DatabaseOption {
	return func(o *dbOptions) {
		o.fill = &templateFill{
			key: []byte(sql),
			build: func(ctx context.Context, url string) error {
				if err := applySchema(ctx, url, sql); err != nil {
					return fmt.Errorf("apply schema: %w", err)
				}
				return nil
			},
		}
	}
}

// WithMigrations fills the database with the goose migrations in fsys, as
// migrate.Migrations applies them to a service's database: the test's
// database has the schema and version table the service would find. They
// are applied once per distinct set of files, into a template database
// named by a hash of the files' names and contents, so each later test
// gets its database in the time of a copy. Migrations written in Go are
// not part of the hash and are not applied.
func WithMigrations(fsys fs.FS) DatabaseOption {
	return func(o *dbOptions) {
		key, err := migrationsKey(fsys)
		var m *migrate.Migrator
		if err == nil {
			// Bad migrations fail here, before any template is made.
			if m, err = migrate.New(fsys); err != nil {
				err = fmt.Errorf("WithMigrations: %w", err)
			}
		}
		o.fill = &templateFill{key: key, err: err, build: func(ctx context.Context, url string) error {
			if err := applyMigrations(ctx, url, m); err != nil {
				return fmt.Errorf("apply migrations: %w", err)
			}
			return nil
		}}
	}
}

// migrationsKey hashes the name and content of every file in fsys.
func migrationsKey(fsys fs.FS) ([]byte, error) {
	if fsys == nil {
		return nil, errors.New("WithMigrations: nil fs.FS")
	}
	h := sha256.New()
	h.Write([]byte("goose migrations\x00"))
	err := fs.WalkDir(fsys, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("WithMigrations: read migrations: %w", err)
	}
	return h.Sum(nil), nil
}

// applyMigrations applies m's migrations to the database at url.
func applyMigrations(ctx context.Context, url string, m *migrate.Migrator) error {
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		return redact.Error(fmt.Errorf("parse %s: %w", redact.ConnString(url), err), redact.Password(url))
	}
	db := stdlib.OpenDB(*cc)
	_, err = m.Apply(ctx, db)
	// Every session must be gone before the database becomes a template.
	if cerr := db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close: %w", cerr)
	}
	return err
}

// NewDatabase creates a database for tb alone on the test binary's server
// and returns its URL (postgres://.../name?sslmode=disable for a server the
// helpers start). The database is empty unless an option such as
// WithSchema fills it.
//
// When tb passes the database is dropped; when it fails the database is
// kept and its URL logged, for a look at what the test left. NewDatabase
// fails tb if the server cannot be started or the database not created.
func NewDatabase(tb testing.TB, opts ...DatabaseOption) string {
	tb.Helper()
	return shared.newDatabase(tb, opts...)
}

func (s *sharedServer) newDatabase(tb testing.TB, opts ...DatabaseOption) string {
	tb.Helper()
	srv := s.get(tb)
	var o dbOptions
	for _, opt := range opts {
		opt(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dbTimeout)
	defer cancel()

	// template0 is never connected to, so cloning it cannot fail because
	// someone is using it, and it is as fast to copy as an empty template
	// of our own.
	tmpl := "template0"
	if o.fill != nil {
		if o.fill.err != nil {
			tb.Fatalf("fxtest_helpers: %v", o.fill.err)
		}
		var err error
		if tmpl, err = s.template(ctx, srv, o.fill); err != nil {
			tb.Fatalf("fxtest_helpers: %v", err)
		}
	}
	name, err := s.createDatabase(ctx, srv, tb.Name(), tmpl)
	if err != nil {
		tb.Fatalf("fxtest_helpers: %v", err)
	}
	dbURL, err := databaseURL(srv.URL(), name)
	if err != nil {
		tb.Fatalf("fxtest_helpers: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("fxtest_helpers: kept database %s of the failed test: %s", name, redact.ConnString(dbURL))
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), dbTimeout)
		defer cancel()
		// A failed drop is logged, not failed: it is no fault of the test
		// and leaves only clutter on a throwaway server.
		if err := s.dropDatabase(ctx, srv, name); err != nil {
			tb.Logf("fxtest_helpers: %v", err)
		}
	})
	return dbURL
}

// createDatabase clones tmpl under a new name made from testName.
func (s *sharedServer) createDatabase(ctx context.Context, srv server, testName, tmpl string) (string, error) {
	conn, err := s.adminConn(ctx, srv)
	if err != nil {
		return "", err
	}
	for {
		name := databaseName(testName, os.Getpid(), s.counter.Add(1))
		_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+
			" TEMPLATE "+pgx.Identifier{tmpl}.Sanitize()+s.strategy())
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P04" {
			// duplicate_database: left by an earlier process with this
			// PID on a server that outlives test runs.
			continue
		}
		s.release(conn, err)
		if err != nil {
			return "", fmt.Errorf("create database %s from %s: %w", name, tmpl, err)
		}
		return name, nil
	}
}

// strategy returns the CREATE DATABASE clause that copies the template's
// files directly: much faster than the WAL_LOG default of PostgreSQL 15 for
// small databases, at the price of checkpoints that cost little on a test
// server. Older servers have only that way and no clause.
func (s *sharedServer) strategy() string {
	if s.versionNum >= 150000 {
		return " STRATEGY FILE_COPY"
	}
	return ""
}

func (s *sharedServer) dropDatabase(ctx context.Context, srv server, name string) error {
	conn, err := s.adminConn(ctx, srv)
	if err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+s.force())
	s.release(conn, err)
	if err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// force ends the sessions a test left open so that DROP DATABASE does not
// fail on them (PostgreSQL 13 and later).
func (s *sharedServer) force() string {
	if s.versionNum >= 130000 {
		return " WITH (FORCE)"
	}
	return ""
}

// databaseName builds a valid, unique name that says which test owns the
// database: t_<test name>_<pid>_<n>, the test name shortened to fit.
func databaseName(testName string, pid int, n int64) string {
	suffix := "_" + strconv.Itoa(pid) + "_" + strconv.FormatInt(n, 10)
	var b strings.Builder
	underscore := false
	for _, r := range strings.ToLower(testName) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			underscore = false
		} else if !underscore {
			b.WriteByte('_')
			underscore = true
		}
	}
	mid := strings.Trim(b.String(), "_")
	if room := maxIdentLen - len("t_") - len(suffix); len(mid) > room {
		mid = strings.TrimRight(mid[:room], "_")
	}
	return "t_" + mid + suffix
}

// databaseURL returns adminURL pointing at database name.
func databaseURL(adminURL, name string) (string, error) {
	u, err := url.Parse(adminURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("build URL of database %s: server URL %s is not a postgres:// URL", name, redact.ConnString(adminURL))
	}
	u.Path = "/" + name
	u.RawPath = ""
	q := u.Query()
	if q.Get("sslmode") == "" {
		q.Set("sslmode", "disable")
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// template is a template database built from one schema.
type template struct {
	mu    sync.Mutex
	built bool
}

// template returns the name of the template database that fill fills,
// building it if this process has not yet. A failed build is retried by
// the next caller, so a server outage during one test does not fail the
// rest.
func (s *sharedServer) template(ctx context.Context, srv server, fill *templateFill) (string, error) {
	name, lockKey := templateName(fill.key)
	v, _ := s.templates.LoadOrStore(name, &template{})
	t := v.(*template)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.built {
		return name, nil
	}
	if err := s.buildTemplate(ctx, srv, name, fill.build, lockKey); err != nil {
		return "", err
	}
	t.built = true
	return name, nil
}

// templateName names the template of key, tmpl_ and 16 hex digits of
// its SHA-256, and returns the same bits as the key of its advisory lock.
func templateName(key []byte) (string, int64) {
	sum := sha256.Sum256(key)
	return "tmpl_" + hex.EncodeToString(sum[:8]), int64(binary.BigEndian.Uint64(sum[:8]))
}

// buildTemplate makes the template database name from schema unless a
// complete one exists. Test binaries sharing a server may race to build
// the same template, so the work happens under an advisory lock keyed by
// the schema's hash, held by a session of its own so that a crash of the
// builder releases it. A template is complete once marked IS_TEMPLATE,
// which happens last; an unmarked one was left by a builder that died and
// is rebuilt.
func (s *sharedServer) buildTemplate(ctx context.Context, srv server, name string, build func(context.Context, string) error, lockKey int64) (err error) {
	conn, err := pgx.Connect(ctx, srv.URL())
	if err != nil {
		return redact.Error(fmt.Errorf("build template %s: connect to %s: %w", name, redact.ConnString(srv.URL()), err), redact.Password(srv.URL()))
	}
	// Closing the session also releases the advisory lock.
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return fmt.Errorf("build template %s: lock: %w", name, err)
	}

	var isTemplate bool
	err = conn.QueryRow(ctx, "SELECT datistemplate FROM pg_database WHERE datname = $1", name).Scan(&isTemplate)
	switch {
	case err == nil && isTemplate:
		return nil
	case err == nil:
		if _, err := conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+s.force()); err != nil {
			return fmt.Errorf("build template %s: drop incomplete leftover: %w", name, err)
		}
	case !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("build template %s: look for it: %w", name, err)
	}

	ident := pgx.Identifier{name}.Sanitize()
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+ident+" TEMPLATE template0"+s.strategy()); err != nil {
		return fmt.Errorf("build template %s: create: %w", name, err)
	}
	defer func() {
		if err != nil {
			_, _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+ident+s.force())
		}
	}()
	tmplURL, err := databaseURL(srv.URL(), name)
	if err != nil {
		return err
	}
	if err := build(ctx, tmplURL); err != nil {
		return fmt.Errorf("build template %s: %w", name, err)
	}
	// Connections are refused from now on: a session left on a template
	// makes every clone of it fail.
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+ident+" WITH ALLOW_CONNECTIONS false IS_TEMPLATE true"); err != nil {
		return fmt.Errorf("build template %s: mark complete: %w", name, err)
	}
	return nil
}

// applySchema runs schema on the database at dbURL.
func applySchema(ctx context.Context, dbURL, schema string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return redact.Error(fmt.Errorf("connect: %w", err), redact.Password(dbURL))
	}
	// The simple protocol runs a script of many statements in one round
	// trip and in one implicit transaction.
	_, err = conn.PgConn().Exec(ctx, schema).ReadAll()
	if cerr := conn.Close(ctx); err == nil && cerr != nil {
		err = fmt.Errorf("close: %w", cerr)
	}
	return err
}
