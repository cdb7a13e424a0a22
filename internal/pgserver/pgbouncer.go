package pgserver

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sprockets/sprocketspg/internal/redact"
)

// EnvPgBouncer is the environment variable that names the pgbouncer
// binary, for a PgBouncer that is neither in PATH nor in /usr/sbin.
const EnvPgBouncer = "PGBOUNCER"

// ErrNoPgBouncer is matched by the error StartPgBouncer returns when no
// pgbouncer binary can be found.
var ErrNoPgBouncer = errors.New("pgbouncer not found: install it (apt-get install pgbouncer) or set " + EnvPgBouncer + " to the binary")

// DefaultPgBouncerSettings returns the [pgbouncer] settings StartPgBouncer
// uses unless told otherwise: transaction pooling with two server
// connections per database and user, so that clients share server
// connections as they do in production; and the startup parameters pgx
// or sprocketspg send that PgBouncer does not know ignored, because
// PgBouncer refuses a client that sends one (pgx sends statement_timeout
// when a pool sets it as a runtime parameter, as sprocketspg does; some
// drivers send extra_float_digits). The map is the caller's to change.
func DefaultPgBouncerSettings() map[string]string {
	return map[string]string{
		"pool_mode":                 "transaction",
		"default_pool_size":         "2",
		"max_client_conn":           "200",
		"ignore_startup_parameters": "extra_float_digits,statement_timeout",
	}
}

// pgBouncerStopTimeout bounds how long Close waits for PgBouncer to exit
// before it kills it.
const pgBouncerStopTimeout = 2 * time.Second

// PgBouncer is a running PgBouncer in front of a PostgreSQL server,
// listening on a loopback port. Its methods are safe for concurrent use.
type PgBouncer struct {
	dir     string
	port    int
	user    string
	logPath string

	mu     sync.Mutex
	proc   *process
	closed bool
}

// StartPgBouncer starts PgBouncer in front of the server at serverURL (a
// postgres:// URL such as Server.URL returns) and returns it once it
// accepts connections. Every database of that server is reachable through
// it under its own name, as the URL's user, with no client password.
// settings are [pgbouncer] settings that replace or add to
// DefaultPgBouncerSettings; an empty value removes a default.
//
// The binary is $PGBOUNCER, else pgbouncer in PATH, else
// /usr/sbin/pgbouncer. Like a local server it runs as nobody when the
// caller is root, dies with the calling process on Linux, and keeps its
// files in a run directory that Close removes. The caller must Close it.
//
// StartPgBouncer returns an error matching ErrNoPgBouncer when there is
// no binary, and one quoting PgBouncer's log when it does not come up.
func StartPgBouncer(ctx context.Context, serverURL string, settings map[string]string, opts ...Option) (_ *PgBouncer, err error) {
	bin, err := findPgBouncer()
	if err != nil {
		return nil, err
	}
	target, err := parseTarget(serverURL)
	if err != nil {
		return nil, err
	}
	cfg := newConfig(opts)
	u := serverUser()
	dir, err := cfg.runDir(u)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	b := &PgBouncer{dir: dir, user: target.user, logPath: filepath.Join(dir, "pgbouncer.log")}
	authFile := filepath.Join(dir, "userlist.txt")
	if err := writeOwned(authFile, target.authLine(), u); err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		if b.port, err = freePort(); err != nil {
			return nil, err
		}
		iniPath := filepath.Join(dir, "pgbouncer.ini")
		if err := writeOwned(iniPath, pgBouncerINI(target, b.port, authFile, settings), u); err != nil {
			return nil, err
		}
		err = b.launch(ctx, bin, iniPath, u)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortInUse) || attempt == 3 {
			return nil, err
		}
	}
	cfg.logf("pgbouncer: listening on 127.0.0.1:%d in front of %s", b.port, redact.ConnString(serverURL))
	return b, nil
}

// findPgBouncer returns the path of the pgbouncer binary.
func findPgBouncer() (string, error) {
	if p := os.Getenv(EnvPgBouncer); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: %s=%s: %v", ErrNoPgBouncer, EnvPgBouncer, p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	// Debian installs it in /usr/sbin, which a non-root PATH often lacks.
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer", nil
	}
	return "", fmt.Errorf("%w (looked in PATH and /usr/sbin)", ErrNoPgBouncer)
}

// pgTarget is where PgBouncer connects to, and as whom.
type pgTarget struct {
	host, port, user, password, sslmode string
}

func parseTarget(serverURL string) (pgTarget, error) {
	u, err := url.Parse(serverURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Hostname() == "" || strings.Contains(u.Host, ",") {
		return pgTarget{}, fmt.Errorf("start pgbouncer: server URL %s is not a postgres:// URL of one host", redact.ConnString(serverURL))
	}
	t := pgTarget{host: u.Hostname(), port: u.Port(), user: u.User.Username(), sslmode: u.Query().Get("sslmode")}
	t.password, _ = u.User.Password()
	if t.port == "" {
		t.port = "5432"
	}
	if t.user == "" {
		t.user = "postgres"
	}
	return t, nil
}

// authLine is the auth_file entry of the one user clients log in as.
// With auth_type trust PgBouncer checks no password, but the user must be
// listed.
func (t pgTarget) authLine() string {
	return fmt.Sprintf("%q \"\"\n", t.user)
}

// pgBouncerINI builds the configuration file. The wildcard database
// forwards any database name to the server, so one PgBouncer serves every
// database a test creates.
func pgBouncerINI(t pgTarget, port int, authFile string, settings map[string]string) string {
	conn := fmt.Sprintf("host=%s port=%s user=%s", t.host, t.port, t.user)
	if t.password != "" {
		conn += " password=" + quoteINIValue(t.password)
	}
	all := map[string]string{
		"listen_addr": "127.0.0.1",
		"listen_port": strconv.Itoa(port),
		// No Unix socket: nothing to leave behind, and tests connect over
		// TCP like the services they stand for.
		"unix_socket_dir": "",
		"auth_type":       "trust",
		"auth_file":       authFile,
		"admin_users":     t.user,
		"logfile":         "",
		"pidfile":         "",
	}
	if t.sslmode != "" {
		all["server_tls_sslmode"] = t.sslmode
	}
	for k, v := range DefaultPgBouncerSettings() {
		all[k] = v
	}
	for k, v := range settings {
		all[k] = v
	}
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sb strings.Builder
	sb.WriteString("[databases]\n* = " + conn + "\n\n[pgbouncer]\n")
	for _, k := range keys {
		if v := all[k]; v != "" || k == "unix_socket_dir" || k == "logfile" || k == "pidfile" {
			fmt.Fprintf(&sb, "%s = %s\n", k, v)
		}
	}
	return sb.String()
}

// quoteINIValue quotes a connection-string value for PgBouncer's
// [databases] section.
func quoteINIValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// writeOwned writes a file readable only by u, who runs PgBouncer.
func writeOwned(path, content string, u runUser) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return u.chown(path)
}

// launch runs PgBouncer in the foreground, so that it stays a child whose
// exit is seen and which dies with its parent, and waits until its admin
// console answers.
func (b *PgBouncer) launch(ctx context.Context, bin, iniPath string, u runUser) error {
	logFile, err := os.OpenFile(b.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open pgbouncer log: %w", err)
	}
	var logStart int64
	if fi, err := logFile.Stat(); err == nil {
		logStart = fi.Size()
	}
	cmd := exec.Command(bin, iniPath)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = childEnv()
	cmd.Dir = b.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.cred}
	p, err := startProcess(cmd)
	_ = logFile.Close()
	if err != nil {
		return fmt.Errorf("start pgbouncer: %w", err)
	}
	if err := b.waitReady(ctx, p.done); err != nil {
		_ = cmd.Process.Kill()
		<-p.done
		tail := (&localServer{logPath: b.logPath}).logTail(logStart)
		if strings.Contains(tail, "Address already in use") {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		return fmt.Errorf("start pgbouncer on port %d: %w; pgbouncer log:\n%s", b.port, err, tail)
	}
	b.proc = p
	return nil
}

// waitReady runs SHOW VERSION on the admin console until it answers,
// which proves that the port is PgBouncer's and not someone else's.
func (b *PgBouncer) waitReady(ctx context.Context, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	admin := b.URL("pgbouncer")
	delay := 2 * time.Millisecond
	for {
		err := func() error {
			actx, acancel := context.WithTimeout(ctx, 2*time.Second)
			defer acancel()
			conn, err := pgx.Connect(actx, admin)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			// The console speaks only the simple query protocol.
			_, err = conn.PgConn().Exec(actx, "SHOW VERSION").ReadAll()
			return err
		}()
		if err == nil {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-exited:
			t.Stop()
			return errors.New("pgbouncer exited")
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for pgbouncer: %w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
		delay = min(delay*2, 50*time.Millisecond)
	}
}

// URL returns a connection URL of the database dbName through PgBouncer,
// such as postgres://postgres@127.0.0.1:6543/app?sslmode=disable. The
// database "pgbouncer" is PgBouncer's admin console, which speaks only the
// simple query protocol.
func (b *PgBouncer) URL(dbName string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(b.user),
		Host:     "127.0.0.1:" + strconv.Itoa(b.port),
		Path:     "/" + dbName,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port returns the loopback TCP port PgBouncer listens on.
func (b *PgBouncer) Port() int { return b.port }

// Close stops PgBouncer, which drops every client and server connection,
// and removes its files. Closing a closed PgBouncer does nothing.
func (b *PgBouncer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if p := b.proc; p != nil && !p.exited() {
		// PgBouncer keeps no state worth a clean shutdown, and newer
		// versions make SIGTERM wait for clients, so it gets a moment
		// and is then killed.
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(pgBouncerStopTimeout):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if err := os.RemoveAll(b.dir); err != nil {
		return fmt.Errorf("remove %s: %w", b.dir, err)
	}
	return nil
}
