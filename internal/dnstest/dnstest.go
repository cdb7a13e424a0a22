// Package dnstest runs a small authoritative DNS server on the loopback
// interface for tests. It answers SRV questions from records the test sets,
// over UDP and TCP on the same port, and truncates UDP answers that do not
// fit the size the client advertised, as a real server does.
//
//	srv := dnstest.Start(t)
//	srv.SetSRV("_db._postgresql.example.com", 60,
//		dnstest.SRV{Target: "127.0.0.1", Port: 5432})
//	r := discovery.NewDNSResolver(discovery.WithServer(srv.Addr()))
//
// Names are matched without regard to case or a trailing dot.
package dnstest

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const (
	listenAttempts  = 20
	shutdownTimeout = 5 * time.Second
	classicUDPSize  = 512
)

// SRV is one SRV record served by Server.
type SRV struct {
	// Target is the host name of the server; a trailing dot is added. IP
	// addresses and other strings are served as a domain name spelt the
	// same way, which is how a misconfigured zone would send them.
	Target string
	// Port is the port of the server.
	Port uint16
	// Priority orders records, lowest first.
	Priority uint16
	// Weight orders records of one priority, highest first.
	Weight uint16
}

// zone is what the server answers for one name.
type zone struct {
	ttl     uint32
	records []SRV
	rcode   int
}

// Server is a DNS server on 127.0.0.1 listening on one random port for UDP
// and TCP. Its methods are safe for concurrent use.
type Server struct {
	addr string
	udp  *dns.Server
	tcp  *dns.Server

	stopOnce sync.Once

	mu      sync.Mutex
	zones   map[string]zone
	queries map[string]int
}

// Start starts a Server and stops it when tb's test ends. It fails tb when
// no port can be opened for both UDP and TCP.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s := &Server{
		zones:   make(map[string]zone),
		queries: make(map[string]int),
	}
	pc, ln, err := listen()
	if err != nil {
		tb.Fatalf("dnstest: listen: %v", err)
	}
	s.addr = pc.LocalAddr().String()
	handler := dns.HandlerFunc(s.serveDNS)
	s.udp = &dns.Server{PacketConn: pc, Handler: handler}
	s.tcp = &dns.Server{Listener: ln, Handler: handler}

	var started sync.WaitGroup
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started.Add(1)
		// A server that fails to start never calls NotifyStartedFunc;
		// the goroutine's own call keeps Start from waiting for ever.
		notify := sync.OnceFunc(started.Done)
		srv.NotifyStartedFunc = notify
		go func() {
			err := srv.ActivateAndServe()
			notify()
			if err != nil && !isClosed(err) {
				tb.Errorf("dnstest: serve: %v", err)
			}
		}()
	}
	started.Wait()
	tb.Cleanup(s.Stop)
	return s
}

// listen opens a UDP socket on a random loopback port and a TCP listener on
// the same port, trying again when another process holds the TCP port.
func listen() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range listenAttempts {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		lastErr = err
		_ = pc.Close()
	}
	return nil, nil, lastErr
}

func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed)
}

// Addr returns the server's address, "127.0.0.1:PORT", for UDP and TCP alike.
func (s *Server) Addr() string { return s.addr }

// Port returns the port of Addr.
func (s *Server) Port() int {
	_, p, _ := net.SplitHostPort(s.addr)
	n, _ := strconv.Atoi(p)
	return n
}

// SetSRV makes the server answer SRV questions for name with records, each
// with the given TTL in seconds, replacing any earlier answer. Without
// records the name exists but has no SRV records (NODATA). It takes effect
// on the next query.
func (s *Server) SetSRV(name string, ttl uint32, records ...SRV) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zones[key(name)] = zone{ttl: ttl, records: append([]SRV(nil), records...)}
}

// SetRcode makes the server answer every question for name with the response
// code rcode (dns.RcodeServerFailure, dns.RcodeRefused, ...) and no records.
func (s *Server) SetRcode(name string, rcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zones[key(name)] = zone{rcode: rcode}
}

// Remove forgets name, so that questions for it get NXDOMAIN.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.zones, key(name))
}

// Queries returns how many questions for name the server has received, of
// any type and over UDP and TCP together.
func (s *Server) Queries(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[key(name)]
}

// Stop closes the server's sockets, so that later queries fail, and waits
// for the serving goroutines to end. It may be called more than once; Start
// arranges a call when the test ends.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		_ = s.udp.ShutdownContext(ctx)
		_ = s.tcp.ShutdownContext(ctx)
	})
}

func key(name string) string {
	return strings.ToLower(dns.Fqdn(name))
}

func (s *Server) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true

	if len(req.Question) == 1 {
		q := req.Question[0]
		s.answer(resp, q)
	} else {
		resp.Rcode = dns.RcodeFormatError
	}

	size := dns.MaxMsgSize
	if _, udp := w.LocalAddr().(*net.UDPAddr); udp {
		size = classicUDPSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
	}
	resp.Truncate(size)
	_ = w.WriteMsg(resp)
}

func (s *Server) answer(resp *dns.Msg, q dns.Question) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key(q.Name)
	s.queries[k]++
	z, ok := s.zones[k]
	switch {
	case !ok:
		resp.Rcode = dns.RcodeNameError
		return
	case z.rcode != dns.RcodeSuccess:
		resp.Rcode = z.rcode
		return
	case q.Qtype != dns.TypeSRV:
		return
	}
	for _, r := range z.records {
		resp.Answer = append(resp.Answer, &dns.SRV{
			Hdr: dns.RR_Header{
				Name:   q.Name,
				Rrtype: dns.TypeSRV,
				Class:  dns.ClassINET,
				Ttl:    z.ttl,
			},
			Priority: r.Priority,
			Weight:   r.Weight,
			Port:     r.Port,
			Target:   dns.Fqdn(r.Target),
		})
	}
}
