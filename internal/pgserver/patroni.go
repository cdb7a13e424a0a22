package pgserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvPatroni is the environment variable that names the patroni program,
// for a Patroni that is neither in PATH nor in /usr/bin.
const EnvPatroni = "PATRONI"

// EnvEtcd is the environment variable that names the etcd server binary,
// for an etcd that is neither in PATH nor in /usr/bin.
const EnvEtcd = "ETCD"

// patroniInstall says how to get everything StartPatroniCluster needs.
const patroniInstall = "apt-get install patroni etcd-server etcd-client python3-etcd"

// ErrNoPatroni is matched by the error StartPatroniCluster returns when
// something a Patroni cluster needs is missing: Patroni, its Python etcd
// client, etcd, pkill or the local PostgreSQL server binaries. The error
// names what is missing and how to install it.
var ErrNoPatroni = errors.New("cannot run a Patroni cluster")

// Timing of the cluster, written into Patroni's bootstrap DCS settings.
// Patroni needs loop_wait + 2*retry_timeout <= ttl. A leader that stops
// renewing its key loses it after ttl seconds, so ttl bounds how long a
// failover takes; below 6 seconds a busy machine (tests under -race on two
// cores) risks failovers nobody asked for.
const (
	patroniTTL          = 6
	patroniLoopWait     = 1
	patroniRetryTimeout = 2
)

// patroniSuperuser is the role the cluster's URLs connect as; pg_hba.conf
// trusts every connection from 127.0.0.1, so it needs no password.
const patroniSuperuser = "postgres"

// Timeouts of the cluster's housekeeping.
const (
	// patroniStopTimeout bounds how long Close waits for Patroni to stop
	// PostgreSQL cleanly before everything is killed.
	patroniStopTimeout = 5 * time.Second
	// restTimeout bounds one request to a node's REST API, so that a node
	// that hangs does not hold up a poll of the others.
	restTimeout = 2 * time.Second
	// switchoverTimeout bounds POST /switchover, which Patroni answers
	// only once the switchover is done or has failed (up to 20s).
	switchoverTimeout = 30 * time.Second
	// pollInterval is how often waits ask the REST APIs.
	pollInterval = 100 * time.Millisecond
)

// PatroniOption changes the cluster that StartPatroniCluster starts.
type PatroniOption func(*patroniConfig)

type patroniConfig struct {
	logf        func(format string, args ...any)
	synchronous bool
	// dcs are bootstrap DCS settings that replace or add to the defaults.
	dcs map[string]any
	// parameters are PostgreSQL settings that replace or add to the
	// defaults on every node.
	parameters map[string]string
	baseDirs   []string
}

// WithPatroniLogf sets a function that receives one line for each step
// worth knowing about: which binaries were found, where the nodes listen,
// and how long the start took. By default nothing is logged.
func WithPatroniLogf(logf func(format string, args ...any)) PatroniOption {
	return func(c *patroniConfig) { c.logf = logf }
}

// WithSynchronousMode turns on Patroni's synchronous_mode: the leader
// names one replica a synchronous standby, commits wait for it, and only
// it may take over. StartPatroniCluster then also waits until a
// synchronous standby is chosen.
func WithSynchronousMode() PatroniOption {
	return func(c *patroniConfig) { c.synchronous = true }
}

// WithPatroniDCS sets a bootstrap DCS setting of Patroni, such as ttl,
// maximum_lag_on_failover or synchronous_node_count, replacing the
// default. value is written as JSON. Mind that Patroni needs
// loop_wait + 2*retry_timeout <= ttl.
func WithPatroniDCS(name string, value any) PatroniOption {
	return func(c *patroniConfig) { c.dcs[name] = value }
}

// WithPatroniParameter sets a PostgreSQL setting, such as
// max_connections, on every node of the cluster, replacing the default.
// It is a DCS setting, so Patroni keeps it the same on all nodes, as
// settings such as max_connections must be for a hot standby.
func WithPatroniParameter(name, value string) PatroniOption {
	return func(c *patroniConfig) { c.parameters[name] = value }
}

// PatroniCluster is a running Patroni cluster: one etcd and Patroni nodes,
// each with its own PostgreSQL server and REST API on 127.0.0.1, all
// running as nobody when the caller is root, with their files in one run
// directory. Node indexes go from 0 to Nodes()-1. Its methods are safe for
// concurrent use.
type PatroniCluster struct {
	dir   string
	scope string
	user  runUser
	// synchronous says whether the cluster runs in synchronous_mode.
	synchronous bool
	binDir      string
	patroniBin  string
	etcdBin     string
	etcdPort    int
	etcdPeer    int
	etcdLogPath string
	logf        func(string, ...any)
	http        *http.Client

	mu     sync.Mutex
	nodes  []*patroniNode
	etcd   *process
	closed bool
	// reaper kills what is left of the cluster when this process dies
	// (see startReaper); closing reaperPipe makes it do so at once.
	reaper     *exec.Cmd
	reaperPipe *os.File
}

// patroniNode is one Patroni and its PostgreSQL.
type patroniNode struct {
	name       string
	dir        string
	dataDir    string
	configPath string
	logPath    string
	pgPort     int
	restPort   int
	// proc is the Patroni process; nil after Kill.
	proc *process
	// frozen lists the processes Freeze stopped; nil when not frozen.
	frozen []int
}

// StartPatroniCluster starts a Patroni cluster of nodes PostgreSQL servers
// (one leader, the others streaming replicas) and one etcd for Patroni to
// keep its state in, and returns it once a leader is elected and every
// replica streams from it (see WaitHealthy). The caller must Close it.
//
// The cluster fails over fast: a leader that stops renewing its lock in
// etcd loses it after 6 seconds (ttl) and Patroni looks every second
// (loop_wait). use_pg_rewind and wal_log_hints are on, so an old leader
// can come back as a replica, and every replica has a replication slot.
// pg_hba.conf trusts every connection from 127.0.0.1, and the superuser
// is postgres. PostgreSQL runs without fsync, its files on tmpfs when
// possible. Patroni talks to etcd through its v3 API, or through v2 for
// Patroni before 3.0.3, whose etcd3 code lets a thawed old leader take
// the lock back from the new one (see useEtcdV2).
//
// It needs Patroni with python3-etcd, etcd, pkill and the local
// PostgreSQL server binaries ($PG_BIN, pg_config or
// /usr/lib/postgresql/*/bin): the error matches ErrNoPatroni when one is
// missing and says how to install it. Otherwise an error says which node
// or etcd did not come up and quotes the end of its log.
//
// Patroni starts PostgreSQL as a daemon, out of reach of the kernel's
// parent-death signal, so each cluster has a reaper process that kills
// the cluster's processes and removes its files when the calling process
// dies without Close, even by SIGKILL.
func StartPatroniCluster(ctx context.Context, nodes int, opts ...PatroniOption) (_ *PatroniCluster, err error) {
	if nodes < 1 {
		return nil, fmt.Errorf("start a Patroni cluster of %d nodes: need at least one", nodes)
	}
	cfg := &patroniConfig{
		logf:       func(string, ...any) {},
		dcs:        map[string]any{},
		parameters: map[string]string{},
	}
	for _, o := range opts {
		o(cfg)
	}
	began := time.Now()
	deps, err := findPatroniDeps(ctx)
	if err != nil {
		return nil, err
	}
	cfg.logf("pgserver: patroni %s (%s), etcd %s (%s), PostgreSQL binaries in %s, DCS API %s",
		deps.patroniVersion, deps.patroni, deps.etcdVersion, deps.etcd, deps.binDir, deps.dcsAPI())

	u := serverUser()
	bases := cfg.baseDirs
	if bases == nil {
		bases = baseDirCandidates()
	}
	dir, err := makeRunDir(bases, u, cfg.logf)
	if err != nil {
		return nil, err
	}
	c := &PatroniCluster{
		dir:         dir,
		scope:       filepath.Base(dir),
		user:        u,
		synchronous: cfg.synchronous,
		binDir:      deps.binDir,
		patroniBin:  deps.patroni,
		etcdBin:     deps.etcd,
		etcdLogPath: filepath.Join(dir, "etcd.log"),
		logf:        cfg.logf,
		// No keep-alive: an idle connection would keep goroutines
		// alive after Close, and a frozen node would keep a dead one.
		http: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
	}
	if err := c.startReaper(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = c.Close()
		}
	}()

	ports, err := freePorts(2 + 2*nodes)
	if err != nil {
		return nil, err
	}
	c.etcdPort, c.etcdPeer = ports[0], ports[1]
	if err := c.startEtcd(ctx, deps.etcdV2); err != nil {
		return nil, err
	}
	for i := range nodes {
		nodeDir := filepath.Join(dir, "node"+strconv.Itoa(i))
		n := &patroniNode{
			name:       "node" + strconv.Itoa(i),
			dir:        nodeDir,
			dataDir:    filepath.Join(nodeDir, "data"),
			configPath: filepath.Join(nodeDir, "patroni.yml"),
			logPath:    filepath.Join(nodeDir, "patroni.log"),
			pgPort:     ports[2+2*i],
			restPort:   ports[3+2*i],
		}
		if err := os.Mkdir(nodeDir, 0o700); err != nil {
			return nil, fmt.Errorf("create directory of patroni node %d: %w", i, err)
		}
		if err := u.chown(nodeDir); err != nil {
			return nil, err
		}
		conf, err := json.MarshalIndent(c.patroniYAML(n, cfg, deps.etcdV2), "", "  ")
		if err != nil {
			return nil, fmt.Errorf("encode configuration of patroni node %d: %w", i, err)
		}
		// Patroni reads YAML, of which JSON is a subset.
		if err := writeOwned(n.configPath, string(conf)+"\n", u); err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, n)
	}
	for i, n := range c.nodes {
		if err := c.launchNode(n); err != nil {
			return nil, fmt.Errorf("start patroni node %d: %w", i, err)
		}
	}
	if err := c.WaitHealthy(ctx); err != nil {
		return nil, fmt.Errorf("start a Patroni cluster of %d nodes in %s: %w", nodes, dir, err)
	}
	leader, _ := c.Leader(ctx)
	cfg.logf("pgserver: patroni cluster %s of %d nodes up in %s, leader node %d, PostgreSQL on %s",
		c.scope, nodes, time.Since(began).Round(time.Millisecond), leader, strings.Join(c.Addresses(), ","))
	return c, nil
}

// patroniDeps are the programs a cluster runs.
type patroniDeps struct {
	binDir, patroni, etcd       string
	patroniVersion, etcdVersion string
	// etcdV2 says whether Patroni uses etcd's v2 API (see useEtcdV2).
	etcdV2 bool
}

func (d patroniDeps) dcsAPI() string {
	if d.etcdV2 {
		return "etcd v2"
	}
	return "etcd3"
}

// findPatroniDeps finds everything a cluster needs, so that a missing
// piece fails the start with a message saying how to install it, before
// anything is started.
func findPatroniDeps(ctx context.Context) (patroniDeps, error) {
	var d patroniDeps
	binDir, err := findBinDir()
	if err != nil {
		return d, fmt.Errorf("%w: it needs local PostgreSQL server binaries, since Patroni runs PostgreSQL "+
			"itself (Docker cannot be used): install them (e.g. apt-get install postgresql) "+
			"or set %s to the directory holding them: %w", ErrNoPatroni, EnvBinDir, err)
	}
	for _, name := range []string{"pg_ctl", "pg_basebackup", "pg_rewind"} {
		if _, err := os.Stat(filepath.Join(binDir, name)); err != nil {
			return d, fmt.Errorf("%w: Patroni needs %s next to postgres in %s: %w", ErrNoPatroni, name, binDir, err)
		}
	}
	d.binDir = binDir
	if d.patroni, err = findProgram(EnvPatroni, "patroni", "patroni"); err != nil {
		return d, err
	}
	if d.etcd, err = findProgram(EnvEtcd, "etcd", "etcd-server"); err != nil {
		return d, err
	}
	// The reaper finds the cluster's processes with pkill.
	if _, err := exec.LookPath("pkill"); err != nil {
		return d, fmt.Errorf("%w: pkill not found in PATH: install it (apt-get install procps)", ErrNoPatroni)
	}
	if d.patroniVersion, err = patroniVersion(ctx, d.patroni); err != nil {
		return d, err
	}
	if d.etcdVersion, err = etcdVersion(ctx, d.etcd); err != nil {
		return d, err
	}
	d.etcdV2 = useEtcdV2(d.patroniVersion, d.etcdVersion)
	return d, nil
}

// findProgram returns the path of a program: $env, else name in PATH,
// else /usr/bin/name. pkg is the Debian package that installs it.
func findProgram(env, name, pkg string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: %s=%s: %v; install %s (%s) or point %s at it", ErrNoPatroni, env, p, err, name, patroniInstall, env)
		}
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if p := filepath.Join("/usr/bin", name); fileExists(p) {
		return p, nil
	}
	return "", fmt.Errorf("%w: %s not found in PATH or /usr/bin: install it (%s installs package %s with the rest) or set %s to the binary",
		ErrNoPatroni, name, patroniInstall, pkg, env)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// patroniProbe imports what Patroni needs to talk to etcd, which
// `patroni --version` does not, and prints Patroni's version.
const patroniProbe = "import patroni.version, etcd; print(patroni.version.__version__)"

// patroniVersion returns Patroni's version, checking on the way that the
// Python that runs it has the etcd client (python3-etcd), which Debian's
// patroni package only recommends: without it every node would fail on
// its first look at etcd.
func patroniVersion(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var cmd *exec.Cmd
	if interp, arg, ok := readShebang(bin); ok {
		args := []string{}
		if arg != "" {
			args = append(args, arg)
		}
		cmd = exec.CommandContext(ctx, interp, append(args, "-c", patroniProbe)...)
	} else {
		// Not a script (a frozen binary, say): it carries its modules.
		cmd = exec.CommandContext(ctx, bin, "--version")
	}
	cmd.Env = patroniEnv("")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		}
		return "", fmt.Errorf("%w: %s cannot import Patroni and its etcd client (%v: %s): install them (%s)",
			ErrNoPatroni, bin, err, msg, patroniInstall)
	}
	v := strings.TrimSpace(string(out))
	v = strings.TrimSpace(strings.TrimPrefix(v, "patroni"))
	return v, nil
}

// readShebang returns the interpreter line of a script as the kernel
// reads it: the interpreter and at most one argument.
func readShebang(path string) (interp, arg string, ok bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", false
	}
	defer f.Close()
	line, err := bufio.NewReader(io.LimitReader(f, 256)).ReadString('\n')
	if err != nil && line == "" {
		return "", "", false
	}
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), "#!")
	if !ok {
		return "", "", false
	}
	interp, arg, _ = strings.Cut(strings.TrimSpace(rest), " ")
	return interp, strings.TrimSpace(arg), interp != ""
}

// etcdVersion returns what `etcd --version` says of the server version.
func etcdVersion(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%w: run %s --version: %v; install etcd (%s)", ErrNoPatroni, bin, err, patroniInstall)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "etcd Version:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("%w: %s --version does not say its version: %q", ErrNoPatroni, bin, out)
}

// useEtcdV2 says whether Patroni should keep its state through etcd's v2
// API rather than v3. Patroni before 3.0.3 (Debian 12 ships 3.0.2) has a
// bug in its etcd3 code (patroni/patroni#2689): a leader that was paused
// past its ttl creates a new lease and writes the leader key without
// checking that nobody took it meanwhile, so a thawed old primary throws
// out the new one, and what was written to the new one is rewound away.
// The v2 code compares and swaps. etcd 3.6 dropped the v2 API, so with it
// v3 is the only choice.
func useEtcdV2(patroniVersion, etcdVersion string) bool {
	return versionLess(patroniVersion, []int{3, 0, 3}) && versionLess(etcdVersion, []int{3, 6})
}

// versionLess reports whether the dotted version v is older than min;
// what cannot be parsed counts as new.
func versionLess(v string, min []int) bool {
	fields := strings.Split(v, ".")
	for i, m := range min {
		if i >= len(fields) {
			return true
		}
		// The leading digits: 2 of 2rc1.
		digits := fields[i]
		if j := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); j >= 0 {
			digits = digits[:j]
		}
		n, err := strconv.Atoi(digits)
		if err != nil {
			return false
		}
		if n != m {
			return n < m
		}
	}
	return false
}

// patroniEnv is the environment of Patroni and what it runs: childEnv,
// without Python settings of the caller that would make the system's
// Python load other modules, and with HOME in the node's directory, where
// Patroni and libpq may write.
func patroniEnv(home string) []string {
	var env []string
	for _, kv := range childEnv() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PYTHON") || name == "HOME" {
			continue
		}
		env = append(env, kv)
	}
	if home != "" {
		env = append(env, "HOME="+home)
	}
	return env
}

// freePorts returns n distinct loopback ports that nobody listened on a
// moment ago. All are held until all are found, so that none repeats.
func freePorts(n int) ([]int, error) {
	var (
		ports []int
		lns   []net.Listener
	)
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// reaperScript waits until its standard input, a pipe whose write end
// only the process that started the cluster holds, reaches end of file,
// which happens when that process closes it or dies however it dies. It
// then kills every process whose command line names the cluster, and
// removes the run directory. Every process of the cluster names it:
// Patroni in its configuration's path, etcd in its data directory, the
// postmaster in -D, and each of its children in the process title, which
// starts with cluster_name (the scope, the run directory's name) and,
// until a child sets it, is the postmaster's. The processes are stopped
// before they are killed, so that a postmaster cannot restart children.
// The tag comes from the environment so that the reaper's own command line
// does not match.
const reaperScript = `trap '' HUP INT TERM QUIT
while read -r _; do :; done
pat="$SPROCKETSPG_REAP_TAG([^0-9]|\$)"
for _ in 1 2 3 4 5 6 7 8 9 10; do
	pkill -STOP -f "$pat"
	pkill -KILL -f "$pat" || break
	sleep 0.1
done
rm -rf "$SPROCKETSPG_REAP_DIR"
`

// startReaper starts the cluster's reaper (see reaperScript). It runs in a
// session of its own and ignores the signals a terminal or go test sends,
// so that it outlives the test binary; it is not given the parent-death
// signal for the same reason.
func (c *PatroniCluster) startReaper() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start reaper of %s: %w", c.dir, err)
	}
	cmd := exec.Command("/bin/sh", "-c", reaperScript)
	cmd.Stdin = r
	cmd.Env = append(childEnv(), "SPROCKETSPG_REAP_TAG="+c.scope, "SPROCKETSPG_REAP_DIR="+c.dir)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	// The reaper has its own copy of the read end.
	_ = r.Close()
	if err != nil {
		_ = w.Close()
		return fmt.Errorf("start reaper of %s: %w", c.dir, err)
	}
	c.reaper, c.reaperPipe = cmd, w
	return nil
}

// startEtcd starts the cluster's etcd, a single member, and waits until it
// reports itself healthy.
func (c *PatroniCluster) startEtcd(ctx context.Context, v2 bool) error {
	dataDir := filepath.Join(c.dir, "etcd")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		return fmt.Errorf("create etcd data directory: %w", err)
	}
	if err := c.user.chown(dataDir); err != nil {
		return err
	}
	client := "http://127.0.0.1:" + strconv.Itoa(c.etcdPort)
	peer := "http://127.0.0.1:" + strconv.Itoa(c.etcdPeer)
	args := []string{
		"--name", "etcd0",
		"--data-dir", dataDir,
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "etcd0=" + peer,
		"--initial-cluster-state", "new",
		"--initial-cluster-token", c.scope,
		"--logger", "zap",
		"--log-outputs", "stderr",
		"--log-level", "warn",
	}
	if v2 {
		args = append(args, "--enable-v2=true")
	}
	logFile, err := os.OpenFile(c.etcdLogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open etcd log: %w", err)
	}
	cmd := exec.Command(c.etcdBin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = childEnv()
	cmd.Dir = c.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.user.cred}
	p, err := startProcess(cmd)
	_ = logFile.Close()
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	c.etcd = p
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		var health struct{ Health string }
		err := c.getJSON(wctx, client+"/health", &health)
		if err == nil && health.Health == "true" {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("health %q", health.Health)
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-p.done:
			t.Stop()
			return fmt.Errorf("start etcd on 127.0.0.1:%d: etcd exited: %v; etcd log:\n%s", c.etcdPort, p.err, logTail(c.etcdLogPath))
		case <-wctx.Done():
			t.Stop()
			return fmt.Errorf("start etcd on 127.0.0.1:%d: %w (last error: %v); etcd log:\n%s", c.etcdPort, wctx.Err(), err, logTail(c.etcdLogPath))
		case <-t.C:
		}
	}
}

// patroniYAML is the configuration of node n.
func (c *PatroniCluster) patroniYAML(n *patroniNode, cfg *patroniConfig, etcdV2 bool) map[string]any {
	dcsParams := map[string]any{
		"wal_level":             "replica",
		"hot_standby":           "on",
		"max_connections":       100,
		"max_wal_senders":       10,
		"max_replication_slots": 10,
		// pg_rewind needs hint bits in the WAL, or data checksums.
		"wal_log_hints": "on",
		// The WAL lives in memory, three times over; slots keep what a
		// replica still needs.
		"wal_keep_size": "16MB",
		"min_wal_size":  "4MB",
		"max_wal_size":  "64MB",
	}
	for k, v := range cfg.parameters {
		dcsParams[k] = v
	}
	dcs := map[string]any{
		"ttl":           patroniTTL,
		"loop_wait":     patroniLoopWait,
		"retry_timeout": patroniRetryTimeout,
		// A replica further behind than this may not take over; on
		// loopback replicas keep up, and a test that writes a lot just
		// before killing the leader should still see a failover.
		"maximum_lag_on_failover": 1 << 30,
		"synchronous_mode":        cfg.synchronous,
		"postgresql": map[string]any{
			"use_pg_rewind": true,
			"use_slots":     true,
			"parameters":    dcsParams,
		},
	}
	for k, v := range cfg.dcs {
		dcs[k] = v
	}
	etcdAddr := "127.0.0.1:" + strconv.Itoa(c.etcdPort)
	pgAddr := "127.0.0.1:" + strconv.Itoa(n.pgPort)
	restAddr := "127.0.0.1:" + strconv.Itoa(n.restPort)
	conf := map[string]any{
		"scope":     c.scope,
		"namespace": "/sprocketspg/",
		"name":      n.name,
		"log":       map[string]any{"level": "INFO"},
		"restapi":   map[string]any{"listen": restAddr, "connect_address": restAddr},
		"watchdog":  map[string]any{"mode": "off"},
		"bootstrap": map[string]any{
			"dcs": dcs,
			// As the local backend's initdbArgs: fixed encoding and locale,
			// no syncing, small WAL segments.
			"initdb": []any{
				map[string]any{"encoding": "UTF8"},
				map[string]any{"locale": "C"},
				"no-sync",
				map[string]any{"wal-segsize": "1"},
			},
		},
		"postgresql": map[string]any{
			"listen":          pgAddr,
			"connect_address": pgAddr,
			"data_dir":        n.dataDir,
			"bin_dir":         c.binDir,
			"pgpass":          filepath.Join(n.dir, "pgpass"),
			"authentication": map[string]any{
				"superuser":   map[string]any{"username": patroniSuperuser},
				"replication": map[string]any{"username": "replicator"},
			},
			"pg_hba": []string{
				"local all all trust",
				"host all all 127.0.0.1/32 trust",
				"host replication all 127.0.0.1/32 trust",
			},
			// A node whose history cannot be rewound is copied afresh
			// rather than left broken, so that a test's old leader
			// always comes back.
			"remove_data_directory_on_rewind_failure":     true,
			"remove_data_directory_on_diverged_timelines": true,
			"parameters": map[string]any{
				// The default, /var/run/postgresql, is not nobody's.
				"unix_socket_directories": n.dir,
				// As serverSettings: no durability, and dynamic shared
				// memory in the data directory, not in /dev/shm where a
				// killed server would leave it.
				"fsync":                      "off",
				"dynamic_shared_memory_type": "mmap",
				"shared_buffers":             "32MB",
				"jit":                        "off",
				// How long a replica that lost its primary waits before it
				// tries again, and (PostgreSQL 15) before it notices a
				// promotion; the default 5s would slow every failover.
				"wal_retrieve_retry_interval": "100ms",
			},
		},
	}
	if etcdV2 {
		conf["etcd"] = map[string]any{"host": etcdAddr}
	} else {
		conf["etcd3"] = map[string]any{"hosts": []string{etcdAddr}}
	}
	return conf
}

// launchNode starts n's Patroni, which starts (and first creates) its
// PostgreSQL.
func (c *PatroniCluster) launchNode(n *patroniNode) error {
	logFile, err := os.OpenFile(n.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open patroni log: %w", err)
	}
	if err := c.user.chown(n.logPath); err != nil {
		_ = logFile.Close()
		return err
	}
	cmd := exec.Command(c.patroniBin, n.configPath)
	// PostgreSQL inherits these and logs to them too.
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = patroniEnv(n.dir)
	cmd.Dir = n.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.user.cred}
	p, err := startProcess(cmd)
	_ = logFile.Close()
	if err != nil {
		return fmt.Errorf("run %s: %w", c.patroniBin, err)
	}
	n.proc = p
	return nil
}

// Nodes returns the number of nodes.
func (c *PatroniCluster) Nodes() int { return len(c.nodes) }

// Address returns node i's PostgreSQL address, such as 127.0.0.1:5433.
func (c *PatroniCluster) Address(i int) string {
	return "127.0.0.1:" + strconv.Itoa(c.nodes[i].pgPort)
}

// Addresses returns every node's PostgreSQL address, in node order.
func (c *PatroniCluster) Addresses() []string {
	a := make([]string, len(c.nodes))
	for i := range c.nodes {
		a[i] = c.Address(i)
	}
	return a
}

// RESTAddress returns node i's Patroni REST API address, such as
// 127.0.0.1:8008.
func (c *PatroniCluster) RESTAddress(i int) string {
	return "127.0.0.1:" + strconv.Itoa(c.nodes[i].restPort)
}

// Name returns node i's Patroni member name, as the REST API and
// application_name in pg_stat_replication call it.
func (c *PatroniCluster) Name(i int) string { return c.nodes[i].name }

// URL returns a connection URL of the superuser to database dbName that
// names every node, such as
// postgres://postgres@127.0.0.1:5433,127.0.0.1:5434/app?sslmode=disable.
// params are further query parameters as name=value, such as
// target_session_attrs=read-write, which makes a client connect to
// whichever node is the leader.
func (c *PatroniCluster) URL(dbName string, params ...string) string {
	return clusterURL(c.Addresses(), dbName, params)
}

// NodeURL returns a connection URL of the superuser to database dbName on
// node i alone, with params as for URL.
func (c *PatroniCluster) NodeURL(i int, dbName string, params ...string) string {
	return clusterURL([]string{c.Address(i)}, dbName, params)
}

func clusterURL(hosts []string, dbName string, params []string) string {
	q := "sslmode=disable"
	for _, p := range params {
		name, value, _ := strings.Cut(p, "=")
		q += "&" + url.QueryEscape(name) + "=" + url.QueryEscape(value)
	}
	return "postgres://" + patroniSuperuser + "@" + strings.Join(hosts, ",") + "/" + url.PathEscape(dbName) + "?" + q
}

// patroniStatus is what a node's REST API says of it (GET /patroni and
// the health endpoints, which return the same body).
type patroniStatus struct {
	State    string `json:"state"`
	Role     string `json:"role"`
	Timeline int    `json:"timeline"`
	// XLog is the leader's WAL position, or how far a replica received
	// and replayed WAL.
	XLog struct {
		Location         int64 `json:"location"`
		ReceivedLocation int64 `json:"received_location"`
		ReplayedLocation int64 `json:"replayed_location"`
	} `json:"xlog"`
	// Replication is the leader's pg_stat_replication.
	Replication []struct {
		ApplicationName string `json:"application_name"`
		State           string `json:"state"`
		SyncState       string `json:"sync_state"`
	} `json:"replication"`
}

// isPrimary reports whether the status is that of a running primary;
// Patroni 3.0 calls it master, later versions primary.
func (s patroniStatus) isPrimary() bool {
	return s.State == "running" && (s.Role == "master" || s.Role == "primary")
}

// nodeReport is one node's answer to GET /primary: code 200 means the node
// holds the leader lock and runs as primary.
type nodeReport struct {
	index  int
	code   int
	status patroniStatus
	err    error
}

func (r nodeReport) leader() bool {
	return r.err == nil && r.code == http.StatusOK && r.status.isPrimary()
}

// live returns the indexes of the nodes that are neither killed nor
// frozen: those whose REST API can answer.
func (c *PatroniCluster) live() ([]int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	var idx []int
	for i, n := range c.nodes {
		if n.proc != nil && n.frozen == nil {
			idx = append(idx, i)
		}
	}
	return idx, nil
}

// poll asks every live node's REST API at once.
func (c *PatroniCluster) poll(ctx context.Context) ([]nodeReport, error) {
	idx, err := c.live()
	if err != nil {
		return nil, err
	}
	reports := make([]nodeReport, len(idx))
	var wg sync.WaitGroup
	for k, i := range idx {
		wg.Go(func() {
			r := nodeReport{index: i}
			r.code, r.err = c.getStatus(ctx, "http://"+c.RESTAddress(i)+"/primary", &r.status)
			reports[k] = r
		})
	}
	wg.Wait()
	return reports, nil
}

// getStatus GETs u and decodes its JSON body into v whatever the status
// code, which it returns.
func (c *PatroniCluster) getStatus(ctx context.Context, u string, v any) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, restTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, fmt.Errorf("read GET %s: %w", u, err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return resp.StatusCode, fmt.Errorf("decode GET %s (%s): %w", u, resp.Status, err)
	}
	return resp.StatusCode, nil
}

func (c *PatroniCluster) getJSON(ctx context.Context, u string, v any) error {
	code, err := c.getStatus(ctx, u, v)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET %s: status %d", u, code)
	}
	return err
}

// leaderOf returns the one leader among reports, or -1 when there is none
// or, for a moment during a change of leader, more than one.
func leaderOf(reports []nodeReport, exclude []int) int {
	leader := -1
	for _, r := range reports {
		if !r.leader() {
			continue
		}
		if leader >= 0 {
			return -1
		}
		leader = r.index
	}
	for _, x := range exclude {
		if x == leader {
			return -1
		}
	}
	return leader
}

// Leader returns the index of the node that is the leader now, as the
// REST APIs of the live (neither killed nor frozen) nodes say: the one
// that holds the leader lock and runs as primary. It returns an error when
// no node is the leader at the moment.
func (c *PatroniCluster) Leader(ctx context.Context) (int, error) {
	reports, err := c.poll(ctx)
	if err != nil {
		return -1, err
	}
	if l := leaderOf(reports, nil); l >= 0 {
		return l, nil
	}
	return -1, fmt.Errorf("find the leader of patroni cluster %s: no live node is the leader: %s", c.scope, describe(reports))
}

// WaitLeader waits until a live node that is not in exclude is the leader
// (see Leader) and returns its index: after Kill or Freeze of the leader,
// pass its index to wait for the failover. It returns an error, quoting
// the nodes' logs, when ctx ends first.
func (c *PatroniCluster) WaitLeader(ctx context.Context, exclude ...int) (int, error) {
	var last []nodeReport
	for {
		reports, err := c.poll(ctx)
		if err != nil {
			return -1, err
		}
		last = reports
		if l := leaderOf(reports, exclude); l >= 0 {
			return l, nil
		}
		if err := sleepCtx(ctx, pollInterval); err != nil {
			return -1, fmt.Errorf("wait for a leader of patroni cluster %s (not %v): %w; nodes: %s%s",
				c.scope, exclude, err, describe(last), c.logTails())
		}
	}
}

// WaitHealthy waits until every live node runs PostgreSQL, one of them is
// the leader and every other streams from it (in synchronous mode, one of
// them synchronously) and has replayed all the WAL the leader had written,
// which is how StartPatroniCluster leaves the cluster. A test that kills,
// freezes, thaws or switches over calls it to leave the cluster as it
// found it for the next. It returns an error, quoting the nodes' logs,
// when ctx ends first.
//
// To know what all means, WaitHealthy commits an empty transaction on the
// leader (SELECT txid_current(), which uses up a transaction ID), flushing
// its WAL. That WAL matters: a record the leader has written but not yet
// flushed, and so not sent, can still reach a node that pg_rewind has
// just copied WAL files to; when the leader fails before sending it, a
// replica without the record is promoted and the node with it is left on
// a diverged timeline that PostgreSQL 15's pg_rewind does not repair (it
// finds "no rewind required"), a replica that never streams again.
func (c *PatroniCluster) WaitHealthy(ctx context.Context) error {
	var why string
	// target is the leader's flushed WAL position that replicas must
	// replay; it is fixed once per leader, so that a client writing all
	// the while does not keep the wait from ending.
	target, targetLeader := int64(-1), -1
	for {
		reports, err := c.poll(ctx)
		if err != nil {
			return err
		}
		why = c.unhealthy(reports)
		if why == "" {
			leader := leaderOf(reports, nil)
			if leader != targetLeader {
				target, targetLeader = -1, leader
			}
			if target < 0 {
				if target, err = c.flushWAL(ctx, leader); err != nil {
					why = err.Error()
					target = -1
				}
			}
			if target >= 0 {
				why = lagging(reports, leader, target)
				if why == "" {
					return nil
				}
			}
		}
		if err := c.exited(); err != nil {
			return fmt.Errorf("wait for patroni cluster %s: %w%s", c.scope, err, c.logTails())
		}
		if err := sleepCtx(ctx, pollInterval); err != nil {
			return fmt.Errorf("wait for patroni cluster %s to be healthy: %w: %s; nodes: %s%s",
				c.scope, err, why, describe(reports), c.logTails())
		}
	}
}

// flushWAL commits a transaction on node leader, which flushes its WAL,
// and returns the flushed position (see WaitHealthy).
func (c *PatroniCluster) flushWAL(ctx context.Context, leader int) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.NodeURL(leader, "postgres"))
	if err != nil {
		return -1, fmt.Errorf("flush WAL on leader node %d: %w", leader, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SELECT txid_current()"); err != nil {
		return -1, fmt.Errorf("flush WAL on leader node %d: %w", leader, err)
	}
	var lsn int64
	if err := conn.QueryRow(ctx, "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint").Scan(&lsn); err != nil {
		return -1, fmt.Errorf("flush WAL on leader node %d: %w", leader, err)
	}
	return lsn, nil
}

// lagging says which replica has not yet replayed the leader's WAL up to
// target, or returns "" when all have.
func lagging(reports []nodeReport, leader int, target int64) string {
	for _, r := range reports {
		if r.index != leader && r.status.XLog.ReplayedLocation < target {
			return fmt.Sprintf("node %d has replayed WAL up to %s of the leader's %s",
				r.index, formatLSN(r.status.XLog.ReplayedLocation), formatLSN(target))
		}
	}
	return ""
}

// formatLSN writes a WAL position as PostgreSQL does, such as 0/9457F8.
func formatLSN(lsn int64) string {
	return fmt.Sprintf("%X/%X", uint64(lsn)>>32, uint64(lsn)&0xFFFFFFFF)
}

// unhealthy says why reports do not show a healthy cluster, or returns ""
// when they do.
func (c *PatroniCluster) unhealthy(reports []nodeReport) string {
	if len(reports) == 0 {
		return "no live node"
	}
	leader := leaderOf(reports, nil)
	if leader < 0 {
		return "no leader"
	}
	var lr nodeReport
	for _, r := range reports {
		if r.index == leader {
			lr = r
		}
	}
	streaming := map[string]bool{}
	haveSync := false
	for _, s := range lr.status.Replication {
		if s.State == "streaming" {
			streaming[s.ApplicationName] = true
			if s.SyncState == "sync" || s.SyncState == "quorum" {
				haveSync = true
			}
		}
	}
	for _, r := range reports {
		if r.index == leader {
			continue
		}
		if r.err != nil {
			return fmt.Sprintf("node %d: %v", r.index, r.err)
		}
		if r.status.State != "running" || r.status.Role != "replica" {
			return fmt.Sprintf("node %d is %s %s", r.index, r.status.State, r.status.Role)
		}
		if !streaming[c.nodes[r.index].name] {
			return fmt.Sprintf("node %d does not stream from leader node %d", r.index, leader)
		}
	}
	if c.synchronous && len(reports) > 1 && !haveSync {
		return fmt.Sprintf("leader node %d has no synchronous standby", leader)
	}
	return ""
}

// exited returns an error when a Patroni or etcd that should run has
// exited, which no wait should sit out.
func (c *PatroniCluster) exited() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.etcd != nil && c.etcd.exited() {
		return fmt.Errorf("etcd exited: %v; etcd log:\n%s", c.etcd.err, logTail(c.etcdLogPath))
	}
	for i, n := range c.nodes {
		if n.proc != nil && n.proc.exited() {
			return fmt.Errorf("patroni of node %d exited: %v", i, n.proc.err)
		}
	}
	return nil
}

// describe sums up reports for an error.
func describe(reports []nodeReport) string {
	if len(reports) == 0 {
		return "(no live node)"
	}
	var parts []string
	for _, r := range reports {
		if r.err != nil {
			parts = append(parts, fmt.Sprintf("node %d: %v", r.index, r.err))
			continue
		}
		var repl []string
		for _, s := range r.status.Replication {
			repl = append(repl, s.ApplicationName+" "+s.State+" "+s.SyncState)
		}
		x := r.status.XLog
		parts = append(parts, fmt.Sprintf("node %d: %d %s %s timeline %d WAL %s received %s replayed %s replication [%s]",
			r.index, r.code, r.status.State, r.status.Role, r.status.Timeline,
			formatLSN(x.Location), formatLSN(x.ReceivedLocation), formatLSN(x.ReplayedLocation), strings.Join(repl, ", ")))
	}
	return strings.Join(parts, "; ")
}

// logTails returns the end of every node's log, and of etcd's, for an
// error.
func (c *PatroniCluster) logTails() string {
	var sb strings.Builder
	for i, n := range c.nodes {
		fmt.Fprintf(&sb, "\n--- node %d log (%s):\n%s", i, n.logPath, logTailN(n.logPath, 3000))
	}
	fmt.Fprintf(&sb, "\n--- etcd log:\n%s", logTailN(c.etcdLogPath, 500))
	return sb.String()
}

// Logs returns the end of every node's log (Patroni's and PostgreSQL's
// messages) and of etcd's, for a test that failed to show what the
// cluster did. The run directory, and so the logs, go with Close.
func (c *PatroniCluster) Logs() string {
	return strings.TrimPrefix(c.logTails(), "\n")
}

// logTail returns the end of the log at path.
func logTail(path string) string { return (&localServer{logPath: path}).logTail(0) }

// heartbeats are the lines that Patroni logs every loop_wait, a second,
// when nothing happens; left in, they would crowd out what matters.
var heartbeats = []string{"INFO: no action. ", "INFO: Lock owner: "}

// logTailN returns the last lines of the log at path, at most n bytes,
// without Patroni's heartbeats.
func logTailN(path string, n int) string {
	const window = 256 << 10
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	from := max(0, fi.Size()-window)
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if from > 0 && len(lines) > 0 {
		lines = lines[1:] // begins mid-line
	}
	var kept []string
	size := 0
	for i := len(lines) - 1; i >= 0 && size < n; i-- {
		if slices.ContainsFunc(heartbeats, func(h string) bool { return strings.Contains(lines[i], h) }) {
			continue
		}
		kept = append(kept, lines[i])
		size += len(lines[i]) + 1
	}
	if len(kept) == 0 {
		return "(empty)"
	}
	slices.Reverse(kept)
	return strings.Join(kept, "\n")
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// node returns node i, checking i and that the cluster is open; call with
// c.mu held.
func (c *PatroniCluster) node(op string, i int) (*patroniNode, error) {
	if c.closed {
		return nil, ErrClosed
	}
	if i < 0 || i >= len(c.nodes) {
		return nil, fmt.Errorf("%s node %d of patroni cluster %s: no such node (0 to %d)", op, i, c.scope, len(c.nodes)-1)
	}
	return c.nodes[i], nil
}

// Kill kills node i as a host that dies would: Patroni, its PostgreSQL
// (the postmaster and every child of it) and anything else Patroni runs
// for the node are sent SIGKILL, without a chance to hand over the leader
// lock or shut down cleanly. The node's data stays for Restart. Kill
// returns once all of them have exited, or with ctx's error. Killing a
// killed node does nothing; a frozen node is killed as it is.
func (c *PatroniCluster) Kill(ctx context.Context, i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.node("kill", i)
	if err != nil {
		return err
	}
	if n.proc == nil {
		return nil
	}
	pids, err := c.stopNode(n)
	if err != nil {
		return fmt.Errorf("kill node %d: %w", i, err)
	}
	signalAll(pids, syscall.SIGKILL)
	p := n.proc
	n.proc, n.frozen = nil, nil
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("kill node %d: wait for patroni to exit: %w", i, ctx.Err())
	}
	if err := waitGone(ctx, pids); err != nil {
		return fmt.Errorf("kill node %d: %w", i, err)
	}
	return nil
}

// Freeze stops node i with SIGSTOP, Patroni, its postmaster and every
// child of it, as a virtual machine that is paused: its connections stay
// open, but nothing on it answers, and its leader lock expires. Thaw
// resumes it. Freezing a frozen node does nothing; a killed node cannot
// be frozen.
func (c *PatroniCluster) Freeze(ctx context.Context, i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.node("freeze", i)
	if err != nil {
		return err
	}
	if n.proc == nil {
		return fmt.Errorf("freeze node %d of patroni cluster %s: node is killed", i, c.scope)
	}
	if n.frozen != nil {
		return nil
	}
	pids, err := c.stopNode(n)
	if err != nil {
		signalAll(pids, syscall.SIGCONT)
		return fmt.Errorf("freeze node %d: %w", i, err)
	}
	n.frozen = pids
	// SIGSTOP takes effect asynchronously; a caller that measures from
	// here must not count the moment before it does.
	for {
		if allStopped(pids) {
			return nil
		}
		if err := sleepCtx(ctx, time.Millisecond); err != nil {
			return fmt.Errorf("freeze node %d: wait for its processes to stop: %w", i, err)
		}
	}
}

// Thaw resumes the processes Freeze stopped on node i, which then find
// out what happened while they were stopped: a leader that lost its lock
// demotes itself and, once pg_rewind has fixed its history, follows the
// new leader. Call WaitHealthy to wait for that. Thawing a node that is
// not frozen does nothing.
func (c *PatroniCluster) Thaw(ctx context.Context, i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.node("thaw", i)
	if err != nil {
		return err
	}
	if n.frozen == nil {
		return nil
	}
	c.thaw(n)
	return nil
}

// thaw sends SIGCONT to what Freeze stopped, and to whatever else belongs
// to n now, which can only be stopped if Freeze stopped it.
func (c *PatroniCluster) thaw(n *patroniNode) {
	signalAll(n.frozen, syscall.SIGCONT)
	if procs, err := readProcs(); err == nil {
		signalAll(c.nodeProcs(n, procs), syscall.SIGCONT)
	}
	n.frozen = nil
}

// stopNode sends SIGSTOP to every process of n until no new one appears,
// so that none can start another behind the caller's back, and returns
// them all.
func (c *PatroniCluster) stopNode(n *patroniNode) ([]int, error) {
	stopped := map[int]bool{}
	var all []int
	for range 20 {
		procs, err := readProcs()
		if err != nil {
			return all, err
		}
		added := false
		for _, pid := range c.nodeProcs(n, procs) {
			if stopped[pid] {
				continue
			}
			_ = syscall.Kill(pid, syscall.SIGSTOP)
			stopped[pid] = true
			all = append(all, pid)
			added = true
		}
		if !added {
			return all, nil
		}
	}
	return all, fmt.Errorf("processes of %s keep appearing", n.dir)
}

// nodeProcs returns the processes of n among procs: its Patroni, its
// postmaster (named by postmaster.pid), whatever names the node's
// directory on its command line (the postmaster, pg_ctl, pg_basebackup,
// pg_rewind), and all their descendants. The postmaster's children must be
// found by parent: Patroni starts the postmaster in a session of its own
// and every backend starts another.
func (c *PatroniCluster) nodeProcs(n *patroniNode, procs []procInfo) []int {
	roots := map[int]bool{}
	if n.proc != nil {
		roots[n.proc.cmd.Process.Pid] = true
	}
	if pm := postmasterPID(n.dataDir); pm > 0 {
		for _, p := range procs {
			if p.pid == pm && strings.Contains(p.cmdline, n.dir+"/") {
				roots[pm] = true
			}
		}
	}
	for _, p := range procs {
		if strings.Contains(p.cmdline, n.dir+"/") {
			roots[p.pid] = true
		}
	}
	return descendants(procs, roots)
}

// descendants returns roots and every process below them among procs.
func descendants(procs []procInfo, roots map[int]bool) []int {
	in := map[int]bool{}
	for pid := range roots {
		in[pid] = true
	}
	for changed := true; changed; {
		changed = false
		for _, p := range procs {
			if !in[p.pid] && in[p.ppid] {
				in[p.pid] = true
				changed = true
			}
		}
	}
	pids := make([]int, 0, len(in))
	for pid := range in {
		if pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids
}

// postmasterPID returns the PID on the first line of dataDir's
// postmaster.pid, or 0.
func postmasterPID(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0
	}
	return pid
}

// Restart starts node i's Patroni again after Kill and waits until the
// node has rejoined the cluster, streaming from the leader (or being the
// leader itself when no other node is), and then until the cluster is
// healthy (WaitHealthy). Patroni runs crash recovery and, if the node's
// history diverged from the leader's, pg_rewind.
// Restart returns an error for a node that is not killed, and one quoting
// the nodes' logs when ctx ends first.
func (c *PatroniCluster) Restart(ctx context.Context, i int) error {
	c.mu.Lock()
	n, err := c.node("restart", i)
	if err == nil && n.proc != nil {
		err = fmt.Errorf("restart node %d of patroni cluster %s: node is running (Kill it first)", i, c.scope)
	}
	if err == nil {
		err = c.launchNode(n)
	}
	c.mu.Unlock()
	if err != nil {
		return err
	}
	var last []nodeReport
	for {
		reports, err := c.poll(ctx)
		if err != nil {
			return err
		}
		last = reports
		if c.rejoined(reports, i) {
			// The node may hold WAL that pg_rewind copied from the
			// leader and the other replicas lack (see WaitHealthy).
			return c.WaitHealthy(ctx)
		}
		if err := c.exited(); err != nil {
			return fmt.Errorf("restart node %d: %w%s", i, err, c.logTails())
		}
		if err := sleepCtx(ctx, pollInterval); err != nil {
			return fmt.Errorf("restart node %d: wait for it to rejoin: %w; nodes: %s%s", i, err, describe(last), c.logTails())
		}
	}
}

// rejoined reports whether node i runs as the leader or as a replica the
// leader sees streaming.
func (c *PatroniCluster) rejoined(reports []nodeReport, i int) bool {
	leader := leaderOf(reports, nil)
	if leader < 0 {
		return false
	}
	for _, r := range reports {
		if r.index == i && r.leader() {
			return true
		}
		if r.index == leader {
			for _, s := range r.status.Replication {
				if s.ApplicationName == c.nodes[i].name && s.State == "streaming" {
					return true
				}
			}
		}
	}
	return false
}

// Switchover asks Patroni to hand the leadership over to node candidate,
// or with candidate -1 to whichever replica Patroni picks, as an operator
// does before maintenance: the leader stops cleanly, the candidate is
// promoted and the old leader follows it. Patroni answers once the leader
// lock has moved; Switchover then waits until the new leader runs as
// primary and returns its index. It returns Patroni's answer as an error
// when Patroni refuses or the switchover fails.
func (c *PatroniCluster) Switchover(ctx context.Context, candidate int) (int, error) {
	if candidate < -1 || candidate >= len(c.nodes) {
		return -1, fmt.Errorf("switchover of patroni cluster %s to node %d: no such node", c.scope, candidate)
	}
	leader, err := c.Leader(ctx)
	if err != nil {
		return -1, fmt.Errorf("switchover: %w", err)
	}
	if candidate == leader {
		return -1, fmt.Errorf("switchover of patroni cluster %s to node %d: it is the leader already", c.scope, candidate)
	}
	body := map[string]string{"leader": c.nodes[leader].name}
	if candidate >= 0 {
		body["candidate"] = c.nodes[candidate].name
	}
	b, err := json.Marshal(body)
	if err != nil {
		return -1, fmt.Errorf("switchover: encode request: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, switchoverTimeout)
	defer cancel()
	u := "http://" + c.RESTAddress(leader) + "/switchover"
	var answer []byte
	for {
		req, err := http.NewRequestWithContext(pctx, http.MethodPost, u, bytes.NewReader(b))
		if err != nil {
			return -1, fmt.Errorf("switchover: %w", err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.http.Do(req)
		if err != nil {
			return -1, fmt.Errorf("switchover from node %d: POST %s: %w", leader, u, err)
		}
		answer, _ = io.ReadAll(io.LimitReader(resp.Body, 4096))
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
		// In synchronous mode Patroni refuses a switchover until the
		// leader has written its synchronous standby to the DCS, a moment
		// after the standby streams synchronously (what WaitHealthy
		// checks): ask again until it has.
		if resp.StatusCode == http.StatusPreconditionFailed && strings.Contains(string(answer), "sync_standby") {
			if err := sleepCtx(pctx, pollInterval); err == nil {
				continue
			}
		}
		return -1, fmt.Errorf("switchover from node %d to %d: POST %s: %s: %s", leader, candidate, u, resp.Status, strings.TrimSpace(string(answer)))
	}
	c.logf("pgserver: patroni switchover from node %d: %s", leader, strings.TrimSpace(string(answer)))
	for {
		reports, err := c.poll(ctx)
		if err != nil {
			return -1, err
		}
		l := leaderOf(reports, []int{leader})
		if l >= 0 && (candidate < 0 || l == candidate) {
			return l, nil
		}
		if l >= 0 {
			return l, fmt.Errorf("switchover from node %d to %d: node %d became the leader instead", leader, candidate, l)
		}
		if err := sleepCtx(ctx, pollInterval); err != nil {
			return -1, fmt.Errorf("switchover from node %d: wait for the new leader: %w; nodes: %s%s", leader, err, describe(reports), c.logTails())
		}
	}
}

// Close stops the cluster and removes its files: frozen nodes are thawed,
// every Patroni gets SIGTERM and a moment to stop PostgreSQL cleanly, and
// then every process of the cluster that is left is killed, etcd among
// them. Closing a closed cluster does nothing.
func (c *PatroniCluster) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	var running []*process
	for _, n := range c.nodes {
		if n.frozen != nil {
			c.thaw(n)
		}
		if n.proc != nil {
			_ = n.proc.cmd.Process.Signal(syscall.SIGTERM)
			running = append(running, n.proc)
		}
	}
	deadline := time.NewTimer(patroniStopTimeout)
	for _, p := range running {
		select {
		case <-p.done:
		case <-deadline.C:
		}
	}
	deadline.Stop()
	shm := c.sharedMemoryIDs()
	if c.etcd != nil {
		_ = c.etcd.cmd.Process.Kill()
		<-c.etcd.done
	}
	if err := killMentioning(c.scope); err != nil {
		errs = append(errs, err)
	}
	for _, n := range c.nodes {
		if n.proc != nil {
			<-n.proc.done
			n.proc = nil
		}
	}
	removeSharedMemory(shm)
	c.http.CloseIdleConnections()
	if c.reaper != nil {
		// Nothing is left for the reaper to kill; on end of file it
		// removes the run directory and exits.
		_ = c.reaperPipe.Close()
		_ = c.reaper.Wait()
	}
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", c.dir, err))
	}
	return errors.Join(errs...)
}

// sharedMemoryIDs returns the System V shared memory segments that the
// nodes' postmasters registered in postmaster.pid. A postmaster that shuts
// down removes its segment and the file; one that was killed leaves both.
func (c *PatroniCluster) sharedMemoryIDs() []string {
	var ids []string
	for _, n := range c.nodes {
		if id := sharedMemoryID(n.dataDir); id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

// sharedMemoryID returns the ID of the segment in dataDir's
// postmaster.pid, or "".
func sharedMemoryID(dataDir string) string {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return ""
	}
	// Line 7 holds the segment's key and ID.
	lines := strings.Split(string(b), "\n")
	if len(lines) < 7 {
		return ""
	}
	f := strings.Fields(lines[6])
	if len(f) != 2 {
		return ""
	}
	if _, err := strconv.Atoi(f[1]); err != nil {
		return ""
	}
	return f[1]
}

// removeSharedMemory removes the segments of killed postmasters, which
// the kernel would otherwise keep until the next boot; only ipcrm can, the
// syscall package not offering shmctl everywhere. It is best effort: a
// segment that is gone or in use stays as it is.
func removeSharedMemory(ids []string) {
	if len(ids) == 0 {
		return
	}
	bin, err := exec.LookPath("ipcrm")
	if err != nil {
		return
	}
	for _, id := range ids {
		// A segment still attached is marked, and goes when detached;
		// but every process that could attach it is dead by now.
		_ = exec.Command(bin, "-m", id).Run()
	}
}

// procInfo is a process as /proc shows it.
type procInfo struct {
	pid, ppid int
	state     byte
	// cmdline is the command line, arguments separated by spaces.
	cmdline string
}

// readProcs lists the processes in /proc. Processes that exit while it
// reads are left out.
func readProcs() ([]procInfo, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var procs []procInfo
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The fields after the command name, which is in parentheses and
		// may itself hold spaces and parentheses: state, ppid, ...
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		procs = append(procs, procInfo{
			pid:     pid,
			ppid:    ppid,
			state:   f[0][0],
			cmdline: strings.TrimRight(strings.ReplaceAll(string(cmdline), "\x00", " "), " "),
		})
	}
	return procs, nil
}

// mentions reports whether cmdline names tag, a run directory's name,
// followed by anything but a digit: so that the tag of
// sprocketspg-pg-1-2 does not match the processes of sprocketspg-pg-1-23.
func mentions(cmdline, tag string) bool {
	for rest := cmdline; ; {
		i := strings.Index(rest, tag)
		if i < 0 {
			return false
		}
		rest = rest[i+len(tag):]
		if rest == "" || rest[0] < '0' || rest[0] > '9' {
			return true
		}
	}
}

// killMentioning kills every process whose command line names tag (see
// mentions), stopping each first, until none is left. Without /proc it
// does nothing.
func killMentioning(tag string) error {
	for range 20 {
		procs, err := readProcs()
		if err != nil {
			return nil
		}
		var pids []int
		for _, p := range procs {
			if p.pid != os.Getpid() && p.state != 'Z' && mentions(p.cmdline, tag) {
				pids = append(pids, p.pid)
			}
		}
		if len(pids) == 0 {
			return nil
		}
		signalAll(pids, syscall.SIGSTOP)
		signalAll(pids, syscall.SIGKILL)
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("kill the processes of %s: they keep appearing", tag)
}

func signalAll(pids []int, sig syscall.Signal) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, sig)
	}
}

// allStopped reports whether every process of pids that still runs is
// stopped.
func allStopped(pids []int) bool {
	for _, pid := range pids {
		stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil {
			continue
		}
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i >= 0 && i+2 < len(s) && s[i+2] != 'T' && s[i+2] != 't' && s[i+2] != 'Z' && s[i+2] != 'X' {
			return false
		}
	}
	return true
}

// waitGone waits until none of pids runs.
func waitGone(ctx context.Context, pids []int) error {
	for {
		var alive []int
		for _, pid := range pids {
			if processAlive(pid) {
				alive = append(alive, pid)
			}
		}
		if len(alive) == 0 {
			return nil
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return fmt.Errorf("wait for processes %v to exit: %w", alive, err)
		}
	}
}
