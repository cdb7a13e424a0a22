package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

const (
	defaultTimeout    = 2 * time.Second
	defaultServer     = "127.0.0.1:53"
	resolvConfPath    = "/etc/resolv.conf"
	ednsBufferSize    = 4096
	defaultServerPort = "53"
)

// Record is one SRV record: the target host and port, and the priority and
// weight that order it among its siblings.
type Record struct {
	// Target is the host name (or IP address) of the server.
	Target string
	// Port is the TCP port of the server.
	Port uint16
	// Priority orders records: lower values are tried first.
	Priority uint16
	// Weight orders records of the same priority: higher values are tried
	// first.
	Weight uint16
}

// Answer is the result of an SRV lookup.
type Answer struct {
	// Records are the SRV records in the order the server sent them.
	Records []Record
	// TTL is the smallest TTL among the SRV records.
	TTL time.Duration
}

// Resolver looks up SRV records. Implementations must be safe for concurrent
// use.
type Resolver interface {
	// LookupSRV returns the SRV records of name, which is looked up as given
	// (no search domains). A name without records should give an error
	// wrapping ErrNoRecords.
	LookupSRV(ctx context.Context, name string) (Answer, error)
}

// DNSResolver is a Resolver that asks DNS servers directly over UDP, and over
// TCP when the UDP answer is truncated. It is safe for concurrent use.
type DNSResolver struct {
	timeout time.Duration

	serversOnce sync.Once
	servers     []string
}

var _ Resolver = (*DNSResolver)(nil)

// DNSOption configures a DNSResolver.
type DNSOption interface {
	apply(*DNSResolver)
}

type dnsOptionFunc func(*DNSResolver)

func (f dnsOptionFunc) apply(r *DNSResolver) { f(r) }

// WithServer adds a DNS server address such as "127.0.0.1:5353"; port 53 is
// assumed when addr has none. Several calls add several servers, which are
// tried in order. Without this option the servers come from /etc/resolv.conf.
func WithServer(addr string) DNSOption {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), defaultServerPort)
	}
	return dnsOptionFunc(func(r *DNSResolver) {
		r.servers = append(r.servers, addr)
	})
}

// WithTimeout sets how long one exchange with one server may take, 2s by
// default. A value of zero or less keeps the default.
func WithTimeout(d time.Duration) DNSOption {
	return dnsOptionFunc(func(r *DNSResolver) {
		if d > 0 {
			r.timeout = d
		}
	})
}

// NewDNSResolver returns a DNSResolver. It does no I/O: when no WithServer
// option is given, /etc/resolv.conf is read on the first lookup, and
// 127.0.0.1:53 is used if that file cannot be read or names no server.
func NewDNSResolver(opts ...DNSOption) *DNSResolver {
	r := &DNSResolver{timeout: defaultTimeout}
	for _, o := range opts {
		o.apply(r)
	}
	if len(r.servers) > 0 {
		// Mark the servers as loaded so resolv.conf is never consulted.
		r.serversOnce.Do(func() {})
	}
	return r
}

func (r *DNSResolver) serverList() []string {
	r.serversOnce.Do(func() {
		r.servers = systemServers()
	})
	return r.servers
}

func systemServers() []string {
	cfg, err := dns.ClientConfigFromFile(resolvConfPath)
	if err != nil || len(cfg.Servers) == 0 {
		return []string{defaultServer}
	}
	servers := make([]string, 0, len(cfg.Servers))
	for _, s := range cfg.Servers {
		servers = append(servers, net.JoinHostPort(s, cfg.Port))
	}
	return servers
}

// LookupSRV queries the SRV records of the absolute name name, trying each
// server in turn until one answers. It returns a *LookupError naming name on
// failure: wrapping ErrNoRecords for NXDOMAIN or an answer without SRV
// records, the context's error when ctx ends, and otherwise the last server's
// failure: a timeout (wrapping context.DeadlineExceeded), a network error, a
// malformed answer or an error rcode such as SERVFAIL.
func (r *DNSResolver) LookupSRV(ctx context.Context, name string) (Answer, error) {
	msg := new(dns.Msg)
	msg.SetQuestion(dns.Fqdn(name), dns.TypeSRV)
	msg.SetEdns0(ednsBufferSize, false)

	var lastErr error
	for _, server := range r.serverList() {
		resp, err := r.exchange(ctx, msg, server)
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return Answer{}, &LookupError{Name: name, Err: ctxErr}
			}
			lastErr = err
			continue
		}
		switch resp.Rcode {
		case dns.RcodeSuccess:
			return answerOf(name, resp)
		case dns.RcodeNameError:
			// The name does not exist; another server would say the same.
			return Answer{}, &LookupError{Name: name, Err: fmt.Errorf("%w: NXDOMAIN", ErrNoRecords)}
		default:
			lastErr = fmt.Errorf("server %s answered %s", server, rcodeName(resp.Rcode))
		}
	}
	if lastErr == nil {
		lastErr = errors.New("no DNS server configured")
	}
	return Answer{}, &LookupError{Name: name, Err: lastErr}
}

// exchange sends msg to server over UDP and again over TCP when the UDP
// answer is truncated.
func (r *DNSResolver) exchange(ctx context.Context, msg *dns.Msg, server string) (*dns.Msg, error) {
	resp, err := r.exchangeNet(ctx, "udp", msg, server)
	if err != nil {
		return nil, err
	}
	if resp.Truncated {
		return r.exchangeNet(ctx, "tcp", msg, server)
	}
	return resp, nil
}

func (r *DNSResolver) exchangeNet(ctx context.Context, network string, msg *dns.Msg, server string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()

	client := &dns.Client{Net: network, Timeout: r.timeout}
	conn, err := client.DialContext(ctx, server)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", network, server, err)
	}
	defer func() { _ = conn.Close() }()
	// The client applies only the context's deadline, not its
	// cancellation: closing the connection stops the read when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()

	resp, _, err := client.ExchangeWithConnContext(ctx, msg, conn)
	if err != nil {
		// The connection's deadline and the context's may fire in either
		// order; report both the same way.
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%s %s: no answer within %v: %w", network, server, r.timeout, context.DeadlineExceeded)
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = ctxErr
		}
		return nil, fmt.Errorf("%s %s: %w", network, server, err)
	}
	return resp, nil
}

// answerOf collects the SRV records of resp. CNAME and other records that
// may accompany them are skipped.
func answerOf(name string, resp *dns.Msg) (Answer, error) {
	var (
		ans    Answer
		minTTL uint32
	)
	for _, rr := range resp.Answer {
		srv, ok := rr.(*dns.SRV)
		if !ok {
			continue
		}
		if len(ans.Records) == 0 || srv.Hdr.Ttl < minTTL {
			minTTL = srv.Hdr.Ttl
		}
		ans.Records = append(ans.Records, Record{
			Target:   srv.Target,
			Port:     srv.Port,
			Priority: srv.Priority,
			Weight:   srv.Weight,
		})
	}
	if len(ans.Records) == 0 {
		return Answer{}, &LookupError{Name: name, Err: ErrNoRecords}
	}
	ans.TTL = time.Duration(minTTL) * time.Second
	return ans, nil
}

func rcodeName(rcode int) string {
	if s, ok := dns.RcodeToString[rcode]; ok {
		return s
	}
	return fmt.Sprintf("rcode %d", rcode)
}
