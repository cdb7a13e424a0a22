package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/internal/dnstest"
)

const srvName = "_db._postgresql.example.com"

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestDNSResolverRecords(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetSRV(srvName, 42,
		dnstest.SRV{Target: "pg1.example.com", Port: 5432, Priority: 1, Weight: 10},
		dnstest.SRV{Target: "pg2.example.com.", Port: 5433, Priority: 2, Weight: 20},
	)
	r := NewDNSResolver(WithServer(srv.Addr()))

	ans, err := r.LookupSRV(testCtx(t), srvName)
	require.NoError(t, err)
	assert.Equal(t, 42*time.Second, ans.TTL)
	assert.ElementsMatch(t, []Record{
		{Target: "pg1.example.com.", Port: 5432, Priority: 1, Weight: 10},
		{Target: "pg2.example.com.", Port: 5433, Priority: 2, Weight: 20},
	}, ans.Records)
	assert.Equal(t, 1, srv.Queries(srvName))

	// Absolute names and other cases reach the same records.
	ans, err = r.LookupSRV(testCtx(t), "_DB._postgresql.example.com.")
	require.NoError(t, err)
	assert.Len(t, ans.Records, 2)
	assert.Equal(t, 2, srv.Queries(srvName))
}

func TestDNSResolverNXDOMAIN(t *testing.T) {
	srv := dnstest.Start(t)
	r := NewDNSResolver(WithServer(srv.Addr()))

	_, err := r.LookupSRV(testCtx(t), srvName)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrNoRecords)
	var lerr *LookupError
	require.ErrorAs(t, err, &lerr)
	assert.Equal(t, srvName, lerr.Name)
	assert.Contains(t, err.Error(), srvName)
	assert.Contains(t, err.Error(), "NXDOMAIN")
}

func TestDNSResolverNoAnswer(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetSRV(srvName, 60)
	r := NewDNSResolver(WithServer(srv.Addr()))

	_, err := r.LookupSRV(testCtx(t), srvName)
	require.ErrorIs(t, err, ErrNoRecords)
	assert.Contains(t, err.Error(), srvName)
	assert.NotContains(t, err.Error(), "NXDOMAIN")
}

func TestDNSResolverRemove(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetSRV(srvName, 60, dnstest.SRV{Target: "pg1.example.com", Port: 5432})
	r := NewDNSResolver(WithServer(srv.Addr()))

	_, err := r.LookupSRV(testCtx(t), srvName)
	require.NoError(t, err)
	srv.Remove(srvName)
	_, err = r.LookupSRV(testCtx(t), srvName)
	require.ErrorIs(t, err, ErrNoRecords)
}

func TestDNSResolverServerFailure(t *testing.T) {
	failing := dnstest.Start(t)
	failing.SetRcode(srvName, dns.RcodeServerFailure)

	r := NewDNSResolver(WithServer(failing.Addr()))
	_, err := r.LookupSRV(testCtx(t), srvName)
	require.Error(t, err)
	assert.NotErrorIs(t, err, ErrNoRecords)
	assert.Contains(t, err.Error(), "SERVFAIL")
	assert.Contains(t, err.Error(), srvName)

	// The next server is asked when one fails.
	good := dnstest.Start(t)
	good.SetSRV(srvName, 60, dnstest.SRV{Target: "pg1.example.com", Port: 5432})
	r = NewDNSResolver(WithServer(failing.Addr()), WithServer(good.Addr()))
	ans, err := r.LookupSRV(testCtx(t), srvName)
	require.NoError(t, err)
	assert.Len(t, ans.Records, 1)
}

func TestDNSResolverNextServerWhenDown(t *testing.T) {
	down := dnstest.Start(t)
	down.Stop()
	good := dnstest.Start(t)
	good.SetSRV(srvName, 60, dnstest.SRV{Target: "pg1.example.com", Port: 5432})

	r := NewDNSResolver(WithServer(down.Addr()), WithServer(good.Addr()), WithTimeout(time.Second))
	ans, err := r.LookupSRV(testCtx(t), srvName)
	require.NoError(t, err)
	assert.Len(t, ans.Records, 1)

	_, err = NewDNSResolver(WithServer(down.Addr()), WithTimeout(time.Second)).LookupSRV(testCtx(t), srvName)
	require.Error(t, err)
	assert.Contains(t, err.Error(), srvName)
	assert.Contains(t, err.Error(), down.Addr())
}

// silentServer returns the address of a UDP socket that never answers.
func silentServer(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = pc.Close() })
	return pc.LocalAddr().String()
}

func TestDNSResolverTimeout(t *testing.T) {
	r := NewDNSResolver(WithServer(silentServer(t)), WithTimeout(200*time.Millisecond))

	start := time.Now()
	_, err := r.LookupSRV(testCtx(t), srvName)
	require.Error(t, err)
	assert.Less(t, time.Since(start), 3*time.Second)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, ErrNoRecords)
	assert.Contains(t, err.Error(), srvName)
}

func TestDNSResolverContextCancel(t *testing.T) {
	r := NewDNSResolver(WithServer(silentServer(t)), WithTimeout(time.Minute))

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := r.LookupSRV(ctx, srvName)
	require.ErrorIs(t, err, context.Canceled)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Contains(t, err.Error(), srvName)
}

func TestDNSResolverTruncatedRetriesOverTCP(t *testing.T) {
	srv := dnstest.Start(t)
	// 200 records with long distinct targets do not fit the 4096 bytes a
	// UDP answer may use.
	var records []dnstest.SRV
	for i := range 200 {
		records = append(records, dnstest.SRV{
			Target:   fmt.Sprintf("%s-%03d.example.com", strings.Repeat("x", 40), i),
			Port:     uint16(5000 + i),
			Priority: uint16(i),
		})
	}
	srv.SetSRV(srvName, 60, records...)
	r := NewDNSResolver(WithServer(srv.Addr()))

	ans, err := r.LookupSRV(testCtx(t), srvName)
	require.NoError(t, err)
	assert.Len(t, ans.Records, len(records))
	assert.Equal(t, 2, srv.Queries(srvName), "one UDP query and one TCP query")
}

// garbageServer answers every UDP query with the query's ID followed by
// bytes that do not form a DNS message.
func garbageServer(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 2 {
				continue
			}
			// A response header claiming one answer record, then
			// nothing.
			reply := append([]byte{buf[0], buf[1]}, 0x81, 0x80, 0, 0, 0, 1, 0, 0, 0, 0, 0xff)
			_, _ = pc.WriteTo(reply, addr)
		}
	}()
	t.Cleanup(func() {
		_ = pc.Close()
		wg.Wait()
	})
	return pc.LocalAddr().String()
}

func TestDNSResolverMalformedAnswer(t *testing.T) {
	r := NewDNSResolver(WithServer(garbageServer(t)), WithTimeout(time.Second))
	_, err := r.LookupSRV(testCtx(t), srvName)
	require.Error(t, err)
	assert.NotErrorIs(t, err, ErrNoRecords)
	assert.Contains(t, err.Error(), srvName)
}

func TestDNSResolverConcurrent(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetSRV(srvName, 60, dnstest.SRV{Target: "pg1.example.com", Port: 5432})
	r := NewDNSResolver(WithServer(srv.Addr()))

	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			_, err := r.LookupSRV(testCtx(t), srvName)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
	assert.Equal(t, 20, srv.Queries(srvName))
}

func TestAnswerSmallestTTL(t *testing.T) {
	resp := new(dns.Msg)
	for i, ttl := range []uint32{300, 7, 60} {
		resp.Answer = append(resp.Answer, &dns.SRV{
			Hdr:    dns.RR_Header{Name: srvName + ".", Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl},
			Target: fmt.Sprintf("pg%d.example.com.", i),
			Port:   5432,
		})
	}
	resp.Answer = append(resp.Answer, &dns.CNAME{
		Hdr:    dns.RR_Header{Name: "x.example.com.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 1},
		Target: srvName + ".",
	})
	ans, err := answerOf(srvName, resp)
	require.NoError(t, err)
	assert.Equal(t, 7*time.Second, ans.TTL)
	assert.Len(t, ans.Records, 3)
}

func TestWithServerDefaultsPort(t *testing.T) {
	r := NewDNSResolver(WithServer("10.0.0.1"), WithServer("::1"), WithServer("127.0.0.1:5353"))
	assert.Equal(t, []string{"10.0.0.1:53", "[::1]:53", "127.0.0.1:5353"}, r.serverList())
}

func TestSystemServers(t *testing.T) {
	servers := NewDNSResolver().serverList()
	require.NotEmpty(t, servers)
	for _, s := range servers {
		_, _, err := net.SplitHostPort(s)
		assert.NoError(t, err, s)
	}
}

// countingResolver counts the lookups that reach the wrapped resolver.
type countingResolver struct {
	Resolver
	mu    sync.Mutex
	calls int
}

func (c *countingResolver) LookupSRV(ctx context.Context, name string) (Answer, error) {
	c.mu.Lock()
	c.calls++
	c.mu.Unlock()
	return c.Resolver.LookupSRV(ctx, name)
}

func (c *countingResolver) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

// resolverFunc adapts a function to Resolver.
type resolverFunc func(ctx context.Context, name string) (Answer, error)

func (f resolverFunc) LookupSRV(ctx context.Context, name string) (Answer, error) {
	return f(ctx, name)
}

func failIfCalled(t *testing.T) Resolver {
	return resolverFunc(func(context.Context, string) (Answer, error) {
		t.Error("unexpected lookup")
		return Answer{}, errors.New("unexpected lookup")
	})
}

func TestResolve(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetSRV(srvName, 30,
		dnstest.SRV{Target: "pg2.example.com", Port: 5433, Priority: 2},
		dnstest.SRV{Target: "pg1.example.com", Port: 5432, Priority: 1},
	)
	r := NewDNSResolver(WithServer(srv.Addr()))

	got, ans, err := Resolve(testCtx(t), r, "postgresql+srv://user:"+secret+"@db.example.com/app?sslmode=disable")
	require.NoError(t, err)
	assert.Equal(t, "postgresql://user:"+secret+"@pg1.example.com:5432,pg2.example.com:5433/app?sslmode=disable", got)
	assert.Equal(t, 30*time.Second, ans.TTL)
	assert.Len(t, ans.Records, 2)
}

func TestResolvePlainPassesThrough(t *testing.T) {
	for _, cs := range []string{
		"postgres://user:" + secret + "@h:5432/db",
		"postgresql://user:" + secret + "@h1:1,h2:2/db?sslmode=disable",
		"host=h port=5432 dbname=db password=" + secret,
		"",
	} {
		got, ans, err := Resolve(testCtx(t), failIfCalled(t), cs)
		require.NoError(t, err)
		assert.Equal(t, cs, got)
		assert.Zero(t, ans)
	}
}

func TestResolveErrors(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetSRV("_bad._postgresql.example.com", 30, dnstest.SRV{Target: "evil.com/x?", Port: 5432})
	srv.SetSRV("_zero._postgresql.example.com", 30, dnstest.SRV{Target: "pg1.example.com", Port: 0})
	srv.SetSRV("_empty._postgresql.example.com", 30)
	dnsR := NewDNSResolver(WithServer(srv.Addr()))

	plainErr := resolverFunc(func(context.Context, string) (Answer, error) {
		return Answer{}, errors.New("resolver broke")
	})
	empty := resolverFunc(func(context.Context, string) (Answer, error) { return Answer{TTL: time.Minute}, nil })

	tests := []struct {
		name    string
		r       Resolver
		host    string
		wantErr error
	}{
		{"nxdomain", dnsR, "missing.example.com", ErrNoRecords},
		{"no data", dnsR, "empty.example.com", ErrNoRecords},
		{"bad target", dnsR, "bad.example.com", ErrInvalidTarget},
		{"port zero", dnsR, "zero.example.com", ErrInvalidTarget},
		{"custom resolver error", plainErr, "any.example.com", nil},
		{"custom resolver empty", empty, "any.example.com", ErrNoRecords},
		{"malformed", failIfCalled(t), "any.example.com:5432", ErrInvalidURL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := "postgresql+srv://user:" + secret + "@" + tt.host + "/db"
			_, _, err := Resolve(testCtx(t), tt.r, cs)
			require.Error(t, err)
			if tt.wantErr != nil {
				assert.ErrorIs(t, err, tt.wantErr)
			}
			if !errors.Is(err, ErrInvalidURL) {
				name, _ := SRVName(cs)
				assert.Contains(t, err.Error(), name)
			}
			if !errors.Is(err, ErrInvalidTarget) && !errors.Is(err, ErrInvalidURL) {
				var lerr *LookupError
				assert.ErrorAs(t, err, &lerr)
			}
			assertNoSecret(t, err)
		})
	}
}
