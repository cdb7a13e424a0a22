package dnstest_test

import (
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sprockets/sprocketspg/internal/dnstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func query(t *testing.T, network, addr, name string) (*dns.Msg, error) {
	t.Helper()
	msg := new(dns.Msg)
	msg.SetQuestion(dns.Fqdn(name), dns.TypeSRV)
	c := &dns.Client{Net: network, Timeout: time.Second}
	resp, _, err := c.Exchange(msg, addr)
	return resp, err
}

func TestServer(t *testing.T) {
	srv := dnstest.Start(t)
	const name = "_db._postgresql.example.com"

	resp, err := query(t, "udp", srv.Addr(), name)
	require.NoError(t, err)
	assert.Equal(t, dns.RcodeNameError, resp.Rcode)

	srv.SetSRV(name, 30, dnstest.SRV{Target: "pg1.example.com", Port: 5432, Priority: 1, Weight: 2})
	for _, network := range []string{"udp", "tcp"} {
		resp, err = query(t, network, srv.Addr(), "_DB._postgresql.example.com.")
		require.NoError(t, err)
		require.Len(t, resp.Answer, 1)
		rr := resp.Answer[0].(*dns.SRV)
		assert.Equal(t, "pg1.example.com.", rr.Target)
		assert.Equal(t, uint16(5432), rr.Port)
		assert.Equal(t, uint16(1), rr.Priority)
		assert.Equal(t, uint16(2), rr.Weight)
		assert.Equal(t, uint32(30), rr.Hdr.Ttl)
	}
	assert.Equal(t, 3, srv.Queries(name))
	assert.Equal(t, 0, srv.Queries("other.example.com"))

	srv.SetSRV(name, 30)
	resp, err = query(t, "udp", srv.Addr(), name)
	require.NoError(t, err)
	assert.Equal(t, dns.RcodeSuccess, resp.Rcode)
	assert.Empty(t, resp.Answer)

	srv.SetRcode(name, dns.RcodeServerFailure)
	resp, err = query(t, "udp", srv.Addr(), name)
	require.NoError(t, err)
	assert.Equal(t, dns.RcodeServerFailure, resp.Rcode)

	srv.Remove(name)
	resp, err = query(t, "udp", srv.Addr(), name)
	require.NoError(t, err)
	assert.Equal(t, dns.RcodeNameError, resp.Rcode)

	srv.Stop()
	srv.Stop()
	_, err = query(t, "udp", srv.Addr(), name)
	assert.Error(t, err)
	_, err = query(t, "tcp", srv.Addr(), name)
	assert.Error(t, err)
}

func TestServerTruncatesUDP(t *testing.T) {
	srv := dnstest.Start(t)
	const name = "big.example.com"
	var records []dnstest.SRV
	for i := range 40 {
		records = append(records, dnstest.SRV{Target: "host-with-a-rather-long-name-" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ".example.com", Port: 1})
	}
	srv.SetSRV(name, 30, records...)

	resp, err := query(t, "udp", srv.Addr(), name)
	require.NoError(t, err)
	assert.True(t, resp.Truncated)
	assert.Less(t, len(resp.Answer), len(records))

	resp, err = query(t, "tcp", srv.Addr(), name)
	require.NoError(t, err)
	assert.False(t, resp.Truncated)
	assert.Len(t, resp.Answer, len(records))
}
