package sprocketspg

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
	"weak"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

// ErrServerNotResponding is matched by the error of a statement whose
// server stopped answering: its host did not answer the pool's probe
// within Config.HostConnectTimeout while the statement waited (a frozen
// host: a paused VM, a hung disk, a SIGSTOPped postmaster, whose sockets
// still look open), or no answer came within the response deadline
// (Config.QueryTimeout plus Config.ConnectionTimeout). IsConnectionError
// reports true for it; ClassifyError answers 503.
var ErrServerNotResponding = errors.New("postgres server stopped answering")

// hostWatch notices a server host that stops answering while statements
// wait on it, so that they fail within a few HostConnectTimeouts instead
// of waiting out the response deadline, and so that new connections stop
// trying that host first.
//
// Silence alone cannot tell a frozen server from a slow query, so a
// statement that has waited longer than the timeout only makes the watch
// ask the statement's host whether it still answers at all: it opens a
// connection and sends the 8-byte SSLRequest, which the server answers
// with one byte before any login, so the probe needs no credentials and
// costs the server a short-lived backend. A live server answers within
// milliseconds however busy its sessions are; a frozen one, whose kernel
// still completes the TCP handshake, says nothing. Only then are the
// host's connections given up: the waiting ones by a read deadline in the
// past (their statements fail at once), the idle ones when pgxpool next
// hands them out (ShouldPing). A host that answers a connection again is
// forgiven.
//
// The watch also remembers the host of the newest connection, so that
// new connections try it first: after a failover the host that answered
// last as the primary is the one to ask, not the first of the URL, which
// may be the frozen old primary.
type hostWatch struct {
	timeout time.Duration
	// tick is how often waiting statements are looked at.
	tick   time.Duration
	base   time.Time // the responseDeadline's, for busySince
	logger *zap.Logger
	// dial opens the probe's connection, with the pool's DialFunc.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	mu sync.Mutex
	// conns holds the connections open to any host; weak, so that a
	// connection that leaves the pool without BeforeClose (Hijack) is
	// not kept alive by the watch.
	conns map[*connDeadline]weak.Pointer[connDeadline]
	// silent holds the addresses that did not answer a probe since they
	// last accepted a connection.
	silent map[string]bool
	// probing holds the addresses being probed, and answered when each
	// last answered one, so that a host is asked at most once a timeout.
	probing  map[string]bool
	answered map[string]time.Time
	// lastGood is the address of the newest connection.
	lastGood string
	// resolved maps a host name of the URL to the addresses its last
	// lookup gave, so that a name can be ranked by the addresses the
	// other fields hold.
	resolved map[string][]string

	running bool
	closed  bool
	stop    chan struct{}
	done    chan struct{}
}

// sslRequest is the SSLRequest message: length 8, code 80877103.
var sslRequest = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

func newHostWatch(cfg Config, base time.Time, logger *zap.Logger, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *hostWatch {
	timeout := cfg.hostConnectTimeout()
	return &hostWatch{
		timeout:  timeout,
		tick:     min(max(timeout/4, 10*time.Millisecond), time.Second),
		base:     base,
		logger:   logger,
		dial:     dial,
		conns:    map[*connDeadline]weak.Pointer[connDeadline]{},
		silent:   map[string]bool{},
		probing:  map[string]bool{},
		answered: map[string]time.Time{},
		resolved: map[string][]string{},
	}
}

// add watches the connection of st, which the server at its remote
// address just accepted.
func (w *hostWatch) add(st *connDeadline) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.conns[st] = weak.Make(st)
	if st.addr != "" {
		w.lastGood = st.addr
		delete(w.silent, st.addr)
	}
	if !w.running {
		w.running = true
		w.stop = make(chan struct{})
		w.done = make(chan struct{})
		go w.loop(w.stop, w.done)
	}
}

// forget stops watching the connection of st.
func (w *hostWatch) forget(st *connDeadline) {
	w.mu.Lock()
	delete(w.conns, st)
	w.mu.Unlock()
}

// close stops the watch for good and waits for its goroutine.
func (w *hostWatch) close() {
	w.mu.Lock()
	w.closed = true
	running, stop, done := w.running, w.stop, w.done
	w.running = false
	w.mu.Unlock()
	if running {
		close(stop)
		<-done
	}
}

// loop looks at the waiting statements every tick, while any connection
// is open.
func (w *hostWatch) loop(stop, done chan struct{}) {
	defer close(done)
	ticker := time.NewTicker(w.tick)
	defer ticker.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ticker.C:
		}
		if !w.check() {
			return
		}
	}
}

// check starts a probe of every host a statement has waited on for
// longer than the timeout. It returns false, having marked the loop
// stopped, when no connection is left to watch.
func (w *hostWatch) check() bool {
	now := time.Since(w.base)
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.conns) == 0 {
		w.running = false
		return false
	}
	for key, ref := range w.conns {
		st := ref.Value()
		if st == nil {
			delete(w.conns, key)
			continue
		}
		since := st.busySince.Load()
		if since == 0 || time.Duration(int64(now)-since) < w.timeout || st.addr == "" {
			continue
		}
		if w.probing[st.addr] || time.Since(w.answered[st.addr]) < w.timeout {
			continue
		}
		w.probing[st.addr] = true
		go w.probe(st.network, st.addr)
	}
	return true
}

// probe asks the server at addr whether it answers, and gives up its
// connections when it does not.
func (w *hostWatch) probe(network, addr string) {
	answered := w.answers(network, addr)
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.probing, addr)
	if answered {
		w.answered[addr] = time.Now()
		return
	}
	if w.closed {
		return
	}
	if !w.silent[addr] {
		w.logger.Warn("postgres server stopped answering; dropping its connections",
			zap.String("address", addr), zap.Duration("probe_timeout", w.timeout))
	}
	w.silent[addr] = true
	now := time.Now()
	for key, ref := range w.conns {
		st := ref.Value()
		if st == nil {
			delete(w.conns, key)
			continue
		}
		if st.addr != addr {
			continue
		}
		st.doomed.Store(true)
		if st.busySince.Load() != 0 {
			// The waiting read returns at once, as a timeout; pgconn then
			// closes the connection and the statement fails.
			st.until.Store(0)
			_ = st.netConn.SetReadDeadline(now)
		}
	}
}

// answers reports whether the server at addr answers an SSLRequest within
// the timeout.
func (w *hostWatch) answers(network, addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
	defer cancel()
	conn, err := w.dial(ctx, network, addr)
	if err != nil {
		return false
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	if _, err := conn.Write(sslRequest); err != nil {
		return false
	}
	var b [1]byte
	_, err = io.ReadFull(conn, b[:])
	return err == nil
}

// shouldDrop reports whether the idle connection conn must not be handed
// out: its host stopped answering.
func (w *hostWatch) shouldDrop(conn *pgx.Conn) bool {
	st, _ := conn.PgConn().CustomData()[connDeadlineKey].(*connDeadline)
	return st != nil && st.doomed.Load()
}

// noteLookup remembers the addresses host resolved to.
func (w *hostWatch) noteLookup(host string, addrs []string) {
	w.mu.Lock()
	w.resolved[host] = addrs
	w.mu.Unlock()
}

// orderHosts is a BeforeConnect hook: it puts the host of the newest
// connection first among cc's hosts and those that stopped answering
// last, keeping the URL's order otherwise.
func (w *hostWatch) orderHosts(_ context.Context, cc *pgx.ConnConfig) error {
	if len(cc.Fallbacks) == 0 {
		return nil
	}
	hosts := make([]*pgconn.FallbackConfig, 0, len(cc.Fallbacks)+1)
	hosts = append(hosts, &pgconn.FallbackConfig{Host: cc.Host, Port: cc.Port, TLSConfig: cc.TLSConfig})
	hosts = append(hosts, cc.Fallbacks...)
	w.mu.Lock()
	rank := func(h *pgconn.FallbackConfig) int {
		port := strconv.Itoa(int(h.Port))
		addrs := []string{net.JoinHostPort(h.Host, port)}
		for _, ip := range w.resolved[h.Host] {
			addrs = append(addrs, net.JoinHostPort(ip, port))
		}
		switch {
		case slices.Contains(addrs, w.lastGood):
			return 0
		case slices.ContainsFunc(addrs, func(a string) bool { return w.silent[a] }):
			return 2
		}
		return 1
	}
	ranks := make(map[*pgconn.FallbackConfig]int, len(hosts))
	for _, h := range hosts {
		ranks[h] = rank(h)
	}
	w.mu.Unlock()
	slices.SortStableFunc(hosts, func(a, b *pgconn.FallbackConfig) int { return ranks[a] - ranks[b] })
	cc.Host, cc.Port, cc.TLSConfig = hosts[0].Host, hosts[0].Port, hosts[0].TLSConfig
	cc.Fallbacks = hosts[1:]
	return nil
}

// installHostWatch wires w into pc, after every other hook is in place:
// the lookups it learns names from wrap pc's LookupFunc, and the dials it
// bounds wrap pc's DialFunc, whoever set them.
func installHostWatch(pc *pgxpool.Config, w *hostWatch) {
	dial := pc.ConnConfig.DialFunc
	pc.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err == nil && w.isSilent(addr) {
			// pgconn closes a broken connection by first sending a cancel
			// request over a new one and waiting up to 15 s for the
			// server to close it, and the pool's slot stays taken until
			// then; a host that stopped answering never does. A new
			// connection's own reads are bounded by its context, and the
			// first statement sets the response deadline over this one.
			_ = conn.SetReadDeadline(time.Now().Add(w.timeout))
		}
		return conn, err
	}
	lookup := pc.ConnConfig.LookupFunc
	if lookup == nil {
		lookup = net.DefaultResolver.LookupHost
	}
	pc.ConnConfig.LookupFunc = func(ctx context.Context, host string) ([]string, error) {
		addrs, err := lookup(ctx, host)
		if err == nil {
			w.noteLookup(host, addrs)
		}
		return addrs, err
	}
}

// afterConnect is an AfterConnect hook: the new connection is watched,
// and its host is the one to try first from now on.
func (w *hostWatch) afterConnect(_ context.Context, conn *pgx.Conn) error {
	if st := stateOf(conn); st != nil {
		w.add(st)
	}
	return nil
}

// beforeClose is a BeforeClose hook. The socket of a connection to a
// host that stopped answering is closed outright: pgconn's close would
// otherwise wait up to 15 s for the server to close it, holding the
// pool's slot.
func (w *hostWatch) beforeClose(conn *pgx.Conn) {
	if st := stateOf(conn); st != nil {
		w.forget(st)
		if st.doomed.Load() && st.netConn != nil {
			_ = st.netConn.Close()
		}
	}
}

// isSilent reports whether the host at addr did not answer a probe since
// it last accepted a connection.
func (w *hostWatch) isSilent(addr string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.silent[addr]
}

// requiresPrimary reports whether a pool on connString must write: its
// target_session_attrs (or PGTARGETSESSIONATTRS) is read-write or
// primary.
func requiresPrimary(connString string) bool {
	attrs := os.Getenv("PGTARGETSESSIONATTRS")
	if params, _, _, err := connParams(connString); err == nil {
		for _, p := range params {
			if p.key == "target_session_attrs" {
				attrs = p.value
			}
		}
	}
	return attrs == "read-write" || attrs == "primary"
}
