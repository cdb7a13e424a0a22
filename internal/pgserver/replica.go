package pgserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNotSupported is returned by StartStandby and Server.Promote for a
// backend that cannot do what was asked: replication needs the data
// directories and binaries of local servers, which the Docker backend does
// not expose.
var ErrNotSupported = errors.New("not supported by this pgserver backend")

// promoteTimeout bounds the wait for a promotion when ctx has no deadline.
const promoteTimeout = 60 * time.Second

// StartStandby starts a hot standby of primary, a server of the local
// backend, and returns it once it accepts read-only connections and
// streams WAL from primary. The standby is a Server of its own, on its own
// port and in its own run directory, copied from primary with
// pg_basebackup; Stop and Start keep it a standby until Promote. The
// caller must Close it; closing primary first leaves the standby running,
// waiting for a primary that will not come back.
//
// StartStandby returns ErrNotControlled when primary is BackendURL,
// an error matching ErrNotSupported when it is BackendDocker and
// ErrClosed when it is closed; otherwise an error says which step failed
// and quotes what pg_basebackup or the standby logged.
func StartStandby(ctx context.Context, primary *Server, opts ...Option) (_ *Server, err error) {
	primary.mu.Lock()
	closed, b := primary.closed, primary.b
	primary.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	var p *localServer
	switch b := b.(type) {
	case *localServer:
		p = b
	case *urlServer:
		return nil, ErrNotControlled
	default:
		return nil, fmt.Errorf("start a standby of a %s server: %w (a standby needs local PostgreSQL server binaries)", primary.kind, ErrNotSupported)
	}
	cfg := newConfig(opts)
	// The standby runs as the primary's user: the cluster's files are
	// owned by it and replication connections come from it.
	dir, err := cfg.runDir(p.user)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	l := &localServer{
		binDir:  p.binDir,
		user:    p.user,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		sockDir: filepath.Join(dir, "sock"),
		logPath: filepath.Join(dir, "postgres.log"),
		logf:    cfg.logf,
		// A standby that lost its primary sleeps this long between
		// attempts to fetch WAL, and PostgreSQL 15 notices a promotion
		// only when it wakes: with the default of 5s a failover took 5s.
		settings: []string{"wal_retrieve_retry_interval=100ms"},
	}
	if err := os.Mkdir(l.sockDir, 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := p.user.chown(l.sockDir); err != nil {
		return nil, err
	}
	if err := l.baseBackup(ctx, p.port); err != nil {
		return nil, err
	}
	if err := l.launchOnFreePort(ctx); err != nil {
		return nil, err
	}
	if err := l.waitStreaming(ctx); err != nil {
		_ = l.stop(context.Background())
		return nil, err
	}
	cfg.logf("pgserver: standby of 127.0.0.1:%d listens on 127.0.0.1:%d", p.port, l.port)
	return &Server{kind: BackendLocal, b: l}, nil
}

// baseBackup fills l.dataDir with a copy of the server on primaryPort,
// configured (-R) to follow it as a standby.
func (l *localServer) baseBackup(ctx context.Context, primaryPort int) error {
	bin := filepath.Join(l.binDir, "pg_basebackup")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("start a standby: find pg_basebackup: %w", err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin,
		"-D", l.dataDir,
		"-d", fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable", primaryPort),
		// WAL written during the copy comes along, so the standby is
		// consistent as soon as it has replayed it.
		"-X", "stream",
		"-R",
		// The default spread checkpoint would hold the copy for minutes.
		"--checkpoint=fast",
		// The servers run with fsync off; syncing the copy buys nothing.
		"--no-sync",
	)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Env = childEnv()
	cmd.Dir = l.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: l.user.cred}
	p, err := startProcess(cmd)
	if err != nil {
		return fmt.Errorf("run pg_basebackup: %w", err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("run pg_basebackup from 127.0.0.1:%d: %w", primaryPort, ctx.Err())
	}
	if p.err != nil {
		return fmt.Errorf("run pg_basebackup from 127.0.0.1:%d: %w: %s", primaryPort, p.err, strings.TrimSpace(out.String()))
	}
	return nil
}

// waitStreaming waits until the standby's WAL receiver streams from the
// primary, so that what the primary commits from then on reaches it
// without a caller having to wait for the connection first.
func (l *localServer) waitStreaming(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, l.url())
	if err != nil {
		return fmt.Errorf("connect to standby on port %d: %w", l.port, err)
	}
	defer conn.Close(context.Background())
	for {
		var status string
		err := conn.QueryRow(ctx, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), '')").Scan(&status)
		if err != nil {
			return fmt.Errorf("wait for standby on port %d to stream: %w", l.port, err)
		}
		if status == "streaming" {
			return nil
		}
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for standby on port %d to stream (WAL receiver %q): %w; server log:\n%s",
				l.port, status, ctx.Err(), l.logTail(0))
		case <-t.C:
		}
	}
}

// Promote turns a standby started by StartStandby into a primary and
// returns once it accepts writes, or when ctx ends. It returns an error
// for a server that is not a standby or is stopped, ErrNotControlled for
// BackendURL, an error matching ErrNotSupported for BackendDocker and
// ErrClosed after Close. It needs PostgreSQL 12 or later (pg_promote).
func (s *Server) Promote(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	switch b := s.b.(type) {
	case *localServer:
		return b.promote(ctx)
	case *urlServer:
		return ErrNotControlled
	default:
		return fmt.Errorf("promote a %s server: %w", s.kind, ErrNotSupported)
	}
}

func (l *localServer) promote(ctx context.Context) error {
	if l.proc == nil || l.proc.exited() {
		return fmt.Errorf("promote server on port %d: server is stopped", l.port)
	}
	wait := promoteTimeout
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl)
	}
	conn, err := pgx.Connect(ctx, l.url())
	if err != nil {
		return fmt.Errorf("promote server on port %d: %w", l.port, err)
	}
	defer conn.Close(context.Background())
	// pg_promote with wait returns once the server has left recovery,
	// which is when sessions begin to accept writes.
	var promoted bool
	err = conn.QueryRow(ctx, "SELECT pg_promote(true, $1)", max(1, int(wait/time.Second))).Scan(&promoted)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55000" {
		// object_not_in_prerequisite_state: recovery is not in progress.
		return fmt.Errorf("promote server on port %d: not a standby: %w", l.port, err)
	}
	if err != nil {
		return fmt.Errorf("promote server on port %d: %w", l.port, err)
	}
	if !promoted {
		return fmt.Errorf("promote server on port %d: still in recovery after %s; server log:\n%s", l.port, wait, l.logTail(0))
	}
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return fmt.Errorf("promote server on port %d: %w", l.port, err)
	}
	if inRecovery {
		return fmt.Errorf("promote server on port %d: still in recovery after pg_promote", l.port)
	}
	return nil
}
