package discovery

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sprockets/sprocketspg/internal/dnstest"
)

const srcURL = "postgresql+srv://user:" + secret + "@db.example.com/app?sslmode=disable"

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type sourceFixture struct {
	dns    *dnstest.Server
	clock  *fakeClock
	logs   *observer.ObservedLogs
	counts *countingResolver
	src    *Source
}

func newSourceFixture(t *testing.T, connString string, opts ...SourceOption) *sourceFixture {
	t.Helper()
	f := &sourceFixture{dns: dnstest.Start(t), clock: newFakeClock()}
	core, logs := observer.New(zapcore.DebugLevel)
	f.logs = logs
	f.counts = &countingResolver{Resolver: NewDNSResolver(WithServer(f.dns.Addr()), WithTimeout(500*time.Millisecond))}
	opts = append([]SourceOption{WithLogger(zap.New(core)), WithClock(f.clock.Now)}, opts...)
	src, err := NewSource(connString, f.counts, opts...)
	require.NoError(t, err)
	f.src = src
	return f
}

func (f *sourceFixture) connString(t *testing.T) string {
	t.Helper()
	cs, err := f.src.ConnString(testCtx(t))
	require.NoError(t, err)
	return cs
}

func hostURL(hosts string) string {
	return "postgresql://user:" + secret + "@" + hosts + "/app?sslmode=disable"
}

func TestSourcePlain(t *testing.T) {
	for _, cs := range []string{
		"postgres://user:" + secret + "@h/db",
		"host=h dbname=db",
	} {
		src, err := NewSource(cs, failIfCalled(t))
		require.NoError(t, err)
		got, err := src.ConnString(testCtx(t))
		require.NoError(t, err)
		assert.Equal(t, cs, got)
	}
}

func TestNewSourceInvalid(t *testing.T) {
	_, err := NewSource("postgresql+srv://user:"+secret+"@db:5432/app", failIfCalled(t))
	require.ErrorIs(t, err, ErrInvalidURL)
	assertNoSecret(t, err)
}

func TestSourceCachesWithinTTL(t *testing.T) {
	f := newSourceFixture(t, srcURL)
	f.dns.SetSRV(srvName, 60, dnstest.SRV{Target: "pg1.example.com", Port: 5432})

	for range 5 {
		assert.Equal(t, hostURL("pg1.example.com:5432"), f.connString(t))
		f.clock.Advance(10 * time.Second)
	}
	assert.Equal(t, 1, f.dns.Queries(srvName))
}

func TestSourceConcurrentCallersShareOneLookup(t *testing.T) {
	f := newSourceFixture(t, srcURL)
	f.dns.SetSRV(srvName, 60, dnstest.SRV{Target: "pg1.example.com", Port: 5432})

	var wg sync.WaitGroup
	results := make(chan string, 50)
	for range 50 {
		wg.Go(func() {
			cs, err := f.src.ConnString(testCtx(t))
			assert.NoError(t, err)
			results <- cs
		})
	}
	wg.Wait()
	close(results)
	for cs := range results {
		assert.Equal(t, hostURL("pg1.example.com:5432"), cs)
	}
	assert.Equal(t, 1, f.dns.Queries(srvName))
	assert.Equal(t, 1, f.counts.count())
}

func TestSourceRefreshAfterTTL(t *testing.T) {
	f := newSourceFixture(t, srcURL)
	f.dns.SetSRV(srvName, 30, dnstest.SRV{Target: "pg1.example.com", Port: 5432})
	assert.Equal(t, hostURL("pg1.example.com:5432"), f.connString(t))

	f.dns.SetSRV(srvName, 30, dnstest.SRV{Target: "pg2.example.com", Port: 5433})
	f.clock.Advance(29 * time.Second)
	assert.Equal(t, hostURL("pg1.example.com:5432"), f.connString(t), "still cached")
	assert.Equal(t, 1, f.dns.Queries(srvName))

	f.clock.Advance(2 * time.Second)
	assert.Equal(t, hostURL("pg2.example.com:5433"), f.connString(t), "refreshed")
	assert.Equal(t, 2, f.dns.Queries(srvName))
}

func TestSourceMinTTL(t *testing.T) {
	f := newSourceFixture(t, srcURL, WithMinTTL(5*time.Second))
	f.dns.SetSRV(srvName, 0, dnstest.SRV{Target: "pg1.example.com", Port: 5432})
	f.connString(t)

	f.clock.Advance(4 * time.Second)
	f.connString(t)
	assert.Equal(t, 1, f.dns.Queries(srvName), "a zero TTL is raised to the floor")

	f.clock.Advance(2 * time.Second)
	f.connString(t)
	assert.Equal(t, 2, f.dns.Queries(srvName))
}

func TestSourceDefaultMinTTL(t *testing.T) {
	f := newSourceFixture(t, srcURL)
	f.dns.SetSRV(srvName, 0, dnstest.SRV{Target: "pg1.example.com", Port: 5432})
	f.connString(t)
	f.clock.Advance(999 * time.Millisecond)
	f.connString(t)
	assert.Equal(t, 1, f.dns.Queries(srvName))
	f.clock.Advance(time.Millisecond)
	f.connString(t)
	assert.Equal(t, 2, f.dns.Queries(srvName))
}

func TestSourceKeepsStaleAnswerWhenDNSFails(t *testing.T) {
	f := newSourceFixture(t, srcURL, WithMinTTL(3*time.Second))
	f.dns.SetSRV(srvName, 10, dnstest.SRV{Target: "pg1.example.com", Port: 5432})
	want := hostURL("pg1.example.com:5432")
	assert.Equal(t, want, f.connString(t))

	f.dns.Stop()
	f.clock.Advance(11 * time.Second)
	assert.Equal(t, want, f.connString(t), "the earlier answer is kept")
	assert.Equal(t, 2, f.counts.count())

	warns := f.logs.FilterLevelExact(zap.WarnLevel).All()
	require.Len(t, warns, 1)
	fields := warns[0].ContextMap()
	assert.Equal(t, srvName, fields["srv"])
	assert.Contains(t, fields["error"], srvName)
	assertNoSecretInLogs(t, f.logs)

	// No new lookup before the floor has passed.
	f.clock.Advance(2 * time.Second)
	assert.Equal(t, want, f.connString(t))
	assert.Equal(t, 2, f.counts.count())

	f.clock.Advance(time.Second)
	assert.Equal(t, want, f.connString(t))
	assert.Equal(t, 3, f.counts.count())
	assert.Len(t, f.logs.FilterLevelExact(zap.WarnLevel).All(), 2)
}

func TestSourceKeepsStaleAnswerOnNXDOMAIN(t *testing.T) {
	f := newSourceFixture(t, srcURL)
	f.dns.SetSRV(srvName, 10, dnstest.SRV{Target: "pg1.example.com", Port: 5432})
	want := f.connString(t)

	f.dns.Remove(srvName)
	f.clock.Advance(11 * time.Second)
	assert.Equal(t, want, f.connString(t))
	warns := f.logs.FilterLevelExact(zap.WarnLevel).All()
	require.Len(t, warns, 1)
	assert.Contains(t, warns[0].ContextMap()["error"], "no SRV records")

	// Once DNS answers again the new answer is used.
	f.dns.SetSRV(srvName, 10, dnstest.SRV{Target: "pg3.example.com", Port: 5434})
	f.clock.Advance(time.Second)
	assert.Equal(t, hostURL("pg3.example.com:5434"), f.connString(t))
}

func TestSourceErrorWithoutEarlierAnswer(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(*dnstest.Server)
		wantErr error
	}{
		{"nxdomain", func(*dnstest.Server) {}, ErrNoRecords},
		{"no data", func(s *dnstest.Server) { s.SetSRV(srvName, 60) }, ErrNoRecords},
		{"invalid target", func(s *dnstest.Server) {
			s.SetSRV(srvName, 60, dnstest.SRV{Target: "a@b", Port: 5432})
		}, ErrInvalidTarget},
		{"server down", func(s *dnstest.Server) { s.Stop() }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newSourceFixture(t, srcURL)
			tt.setup(f.dns)
			_, err := f.src.ConnString(testCtx(t))
			require.Error(t, err)
			if tt.wantErr != nil {
				assert.ErrorIs(t, err, tt.wantErr)
			}
			assert.Contains(t, err.Error(), srvName)
			assertNoSecret(t, err)

			// The failure is not cached as an answer: the next call
			// asks again.
			_, err = f.src.ConnString(testCtx(t))
			require.Error(t, err)
			assert.Equal(t, 2, f.counts.count())
			assert.Empty(t, f.logs.FilterLevelExact(zap.InfoLevel).All())
		})
	}
}

func TestSourceLogsHostChangeOnce(t *testing.T) {
	f := newSourceFixture(t, srcURL)
	f.dns.SetSRV(srvName, 5,
		dnstest.SRV{Target: "pg2.example.com", Port: 5433, Priority: 2},
		dnstest.SRV{Target: "pg1.example.com", Port: 5432, Priority: 1},
	)
	for range 3 {
		f.connString(t)
		f.clock.Advance(6 * time.Second)
	}
	assert.Equal(t, 3, f.dns.Queries(srvName))
	infos := f.logs.FilterMessage("resolved postgres SRV hosts").All()
	require.Len(t, infos, 1)
	assert.Equal(t, zap.InfoLevel, infos[0].Level)
	assert.Equal(t, srvName, infos[0].ContextMap()["srv"])
	assert.Equal(t, []any{"pg1.example.com:5432", "pg2.example.com:5433"}, infos[0].ContextMap()["hosts"])

	f.dns.SetSRV(srvName, 5, dnstest.SRV{Target: "pg2.example.com", Port: 5433})
	for range 3 {
		f.connString(t)
		f.clock.Advance(6 * time.Second)
	}
	infos = f.logs.FilterMessage("resolved postgres SRV hosts").All()
	require.Len(t, infos, 2)
	assert.Equal(t, []any{"pg2.example.com:5433"}, infos[1].ContextMap()["hosts"])
	assertNoSecretInLogs(t, f.logs)
}

func TestSourceWaitingCallerGivesUp(t *testing.T) {
	f := newSourceFixture(t, srcURL)
	f.dns.SetSRV(srvName, 10, dnstest.SRV{Target: "pg1.example.com", Port: 5432})

	// Hold the lookup slot as a slow lookup in progress would.
	f.src.sem <- struct{}{}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := f.src.ConnString(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), srvName)
	<-f.src.sem

	want := f.connString(t)
	f.clock.Advance(11 * time.Second)
	f.src.sem <- struct{}{}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	got, err := f.src.ConnString(ctx2)
	require.NoError(t, err)
	assert.Equal(t, want, got, "a caller that cannot wait gets the earlier answer")
	<-f.src.sem
}

func TestSourceCancelledLookupIsNotAFailure(t *testing.T) {
	f := newSourceFixture(t, srcURL)
	f.dns.SetSRV(srvName, 10, dnstest.SRV{Target: "pg1.example.com", Port: 5432})
	want := f.connString(t)
	f.clock.Advance(11 * time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	got, err := f.src.ConnString(ctx)
	require.NoError(t, err)
	assert.Equal(t, want, got)
	assert.Empty(t, f.logs.FilterLevelExact(zap.WarnLevel).All())

	// The next caller looks up at once rather than waiting for the floor.
	f.dns.SetSRV(srvName, 10, dnstest.SRV{Target: "pg2.example.com", Port: 5432})
	assert.Equal(t, hostURL("pg2.example.com:5432"), f.connString(t))
}

func TestSourceConcurrentRefreshes(t *testing.T) {
	f := newSourceFixture(t, srcURL, WithMinTTL(time.Second))
	f.dns.SetSRV(srvName, 1, dnstest.SRV{Target: "pg1.example.com", Port: 5432})

	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 20 {
				if i == 0 && j%5 == 0 {
					f.clock.Advance(2 * time.Second)
					f.dns.SetSRV(srvName, 1, dnstest.SRV{Target: fmt.Sprintf("pg%d.example.com", j), Port: 5432})
				}
				_, err := f.src.ConnString(testCtx(t))
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()
	assert.LessOrEqual(t, f.counts.count(), 5)
}

func TestSourceNilResolverDefaults(t *testing.T) {
	src, err := NewSource(srcURL, nil)
	require.NoError(t, err)
	assert.IsType(t, &DNSResolver{}, src.resolver)
}

// assertNoSecretInLogs fails the test when any logged message or field holds
// the test password.
func assertNoSecretInLogs(t *testing.T, logs *observer.ObservedLogs) {
	t.Helper()
	for _, e := range logs.All() {
		text := fmt.Sprintf("%s %v", e.Message, e.ContextMap())
		assert.NotContains(t, text, secret)
		assert.NotContains(t, text, "s3cr")
	}
}
