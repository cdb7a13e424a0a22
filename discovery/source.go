package discovery

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

const defaultMinTTL = time.Second

// Resolve looks up the SRV name of connString with r and returns the
// multi-host connection string built by Rewrite, together with the answer.
// A string that is not an SRV URL is returned unchanged with a zero Answer
// and no lookup. A nil r stands for NewDNSResolver().
//
// It returns an error wrapping ErrInvalidURL for a malformed SRV URL, a
// *LookupError naming the SRV name when the lookup fails or finds no records,
// and the errors of Rewrite for unusable records. No error holds the
// password.
func Resolve(ctx context.Context, r Resolver, connString string) (string, Answer, error) {
	if !IsSRV(connString) {
		return connString, Answer{}, nil
	}
	s, ans, _, err := resolve(ctx, r, connString)
	return s, ans, err
}

// resolve is Resolve for an SRV URL that also returns the host:port list.
func resolve(ctx context.Context, r Resolver, connString string) (string, Answer, []string, error) {
	name, err := SRVName(connString)
	if err != nil {
		return "", Answer{}, nil, err
	}
	if r == nil {
		r = NewDNSResolver()
	}
	ans, err := r.LookupSRV(ctx, name)
	if err != nil {
		// Resolvers other than DNSResolver may not name what they looked up.
		var lerr *LookupError
		if !errors.As(err, &lerr) {
			err = &LookupError{Name: name, Err: err}
		}
		return "", Answer{}, nil, err
	}
	if len(ans.Records) == 0 {
		return "", Answer{}, nil, &LookupError{Name: name, Err: ErrNoRecords}
	}
	s, hosts, err := rewrite(connString, ans.Records)
	if err != nil {
		return "", Answer{}, nil, err
	}
	return s, ans, hosts, nil
}

// Source hands out the connection string for new connections, resolving an
// SRV URL again once its answer is older than its TTL. It is safe for
// concurrent use; concurrent callers that find the answer expired share one
// lookup.
type Source struct {
	connString string
	name       string // SRV name; empty for a plain connection string
	resolver   Resolver
	logger     *zap.Logger
	minTTL     time.Duration
	now        func() time.Time

	// sem serialises lookups; a buffered channel rather than a mutex so
	// that waiting callers can give up when their context ends.
	sem chan struct{}

	mu        sync.Mutex
	lookups   uint64    // number of completed lookups
	current   string    // last resolved connection string, "" before the first
	next      time.Time // when current is due for a new lookup
	lastErr   error     // error of the latest lookup, nil if it succeeded
	lastHosts string    // host list last logged
}

// SourceOption configures a Source.
type SourceOption interface {
	apply(*Source)
}

type sourceOptionFunc func(*Source)

func (f sourceOptionFunc) apply(s *Source) { f(s) }

// WithLogger sets the logger for resolved host lists and failed refreshes,
// zap.NewNop() by default. A nil logger keeps the default.
func WithLogger(l *zap.Logger) SourceOption {
	return sourceOptionFunc(func(s *Source) {
		if l != nil {
			s.logger = l
		}
	})
}

// WithMinTTL sets the shortest time an answer is kept, and the pause before
// retrying after a failed refresh; 1s by default. A value of zero or less
// keeps the default.
func WithMinTTL(d time.Duration) SourceOption {
	return sourceOptionFunc(func(s *Source) {
		if d > 0 {
			s.minTTL = d
		}
	})
}

// WithClock sets the function giving the current time, time.Now by default,
// so that tests can move time forward. A nil function keeps the default.
func WithClock(now func() time.Time) SourceOption {
	return sourceOptionFunc(func(s *Source) {
		if now != nil {
			s.now = now
		}
	})
}

// NewSource returns a Source for connString, resolving SRV names with r (nil
// stands for NewDNSResolver()). It does no I/O. It returns an error wrapping
// ErrInvalidURL when connString is a malformed SRV URL; a plain connection
// string is accepted as is.
func NewSource(connString string, r Resolver, opts ...SourceOption) (*Source, error) {
	s := &Source{
		connString: connString,
		resolver:   r,
		logger:     zap.NewNop(),
		minTTL:     defaultMinTTL,
		now:        time.Now,
		sem:        make(chan struct{}, 1),
	}
	for _, o := range opts {
		o.apply(s)
	}
	if !IsSRV(connString) {
		return s, nil
	}
	name, err := SRVName(connString)
	if err != nil {
		return nil, err
	}
	s.name = name
	if s.resolver == nil {
		s.resolver = NewDNSResolver()
	}
	return s, nil
}

// ConnString returns the connection string to use for a new connection. A
// plain connection string is returned unchanged without any lookup. For an
// SRV URL it returns the cached multi-host string while the answer is younger
// than max(TTL, min TTL), and looks the name up again otherwise.
//
// When a refresh fails after an earlier success, the earlier string is
// returned, a warning is logged and the lookup is retried no sooner than the
// min TTL later. Without an earlier success it returns the lookup's error (a
// *LookupError naming the SRV name, or an error wrapping ErrInvalidTarget for
// unusable records). No error holds the password.
func (s *Source) ConnString(ctx context.Context) (string, error) {
	if s.name == "" {
		return s.connString, nil
	}

	s.mu.Lock()
	if s.current != "" && s.now().Before(s.next) {
		cs := s.current
		s.mu.Unlock()
		return cs, nil
	}
	seen := s.lookups
	s.mu.Unlock()

	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.current != "" {
			return s.current, nil
		}
		return "", &LookupError{Name: s.name, Err: ctx.Err()}
	}
	defer func() { <-s.sem }()

	s.mu.Lock()
	if s.lookups != seen {
		// A lookup finished while this caller waited: share its outcome
		// instead of asking DNS again.
		defer s.mu.Unlock()
		if s.current != "" {
			return s.current, nil
		}
		return "", s.lastErr
	}
	s.mu.Unlock()

	cs, ans, hosts, err := resolve(ctx, s.resolver, s.connString)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil && ctx.Err() != nil {
		// The caller gave up; that says nothing about DNS, so neither
		// record a failure nor delay the next lookup.
		if s.current != "" {
			return s.current, nil
		}
		return "", err
	}
	s.lookups++
	now := s.now()
	if err != nil {
		s.lastErr = err
		if s.current == "" {
			return "", err
		}
		s.next = now.Add(s.minTTL)
		s.logger.Warn("postgres SRV lookup failed, keeping the earlier hosts",
			zap.String("srv", s.name),
			zap.Error(err),
			zap.Duration("retry_in", s.minTTL),
		)
		return s.current, nil
	}
	s.lastErr = nil
	s.current = cs
	s.next = now.Add(max(ans.TTL, s.minTTL))
	if list := strings.Join(hosts, ","); list != s.lastHosts {
		s.lastHosts = list
		s.logger.Info("resolved postgres SRV hosts",
			zap.String("srv", s.name),
			zap.Strings("hosts", hosts),
			zap.Duration("ttl", ans.TTL),
		)
	}
	return cs, nil
}
