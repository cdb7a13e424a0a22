package discovery

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

const (
	schemePostgresSRV = "postgresql+srv"
	schemeAWSSRV      = "aws+srv"

	maxNameLen  = 253
	maxLabelLen = 63
)

// srvURL is an SRV connection string cut into the pieces a rewrite needs.
// The pieces are kept as the caller wrote them so that percent-encoding and
// query parameters survive the rewrite byte for byte.
type srvURL struct {
	scheme   string // lower case
	userinfo string // "user:pass@" including the "@", or ""
	host     string // the SRV host exactly as written
	tail     string // "/db?params", or ""
}

// IsSRV reports whether connString is an SRV connection string, that is a URL
// with the scheme postgresql+srv or aws+srv in any case. It does not check
// the rest of the string.
func IsSRV(connString string) bool {
	scheme, _, ok := strings.Cut(connString, "://")
	return ok && isSRVScheme(scheme)
}

func isSRVScheme(scheme string) bool {
	return strings.EqualFold(scheme, schemePostgresSRV) || strings.EqualFold(scheme, schemeAWSSRV)
}

// splitSRV cuts an SRV connection string the way pgx and libpq cut a
// postgresql:// URL, so that the pieces mean the same once the scheme is
// replaced: the user information ends at the first "@" that comes before any
// "/", and the host list ends at the first "/" or "?". It returns an error
// wrapping ErrInvalidURL for a string that is not an SRV URL.
func splitSRV(connString string) (srvURL, error) {
	scheme, rest, ok := strings.Cut(connString, "://")
	if !ok || !isSRVScheme(scheme) {
		return srvURL{}, fmt.Errorf("%w: scheme is not postgresql+srv or aws+srv", ErrInvalidURL)
	}
	u := srvURL{scheme: strings.ToLower(scheme)}
	if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' {
		u.userinfo, rest = rest[:i+1], rest[i+1:]
	}
	u.host = rest
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		u.host, u.tail = rest[:i], rest[i:]
	}
	return u, nil
}

// srvName validates the host of u and returns the SRV name it stands for.
// Error messages quote the host only once it has passed validation as a DNS
// name: a mangled authority may hold a piece of the password.
func (u srvURL) srvName() (string, error) {
	host := u.host
	switch {
	case host == "":
		return "", fmt.Errorf("%w: no host", ErrInvalidURL)
	case strings.Contains(host, ","):
		return "", fmt.Errorf("%w: several hosts, an SRV connection string names one SRV name", ErrInvalidURL)
	case strings.HasPrefix(host, "["):
		return "", fmt.Errorf("%w: the host is an IP address, not an SRV name", ErrInvalidURL)
	case strings.Contains(host, ":"):
		return "", fmt.Errorf("%w: the host has a port, SRV records supply the ports", ErrInvalidURL)
	}
	name := strings.TrimSuffix(host, ".")
	if _, err := netip.ParseAddr(name); err == nil {
		return "", fmt.Errorf("%w: the host is an IP address, not an SRV name", ErrInvalidURL)
	}
	if !validHostname(name) {
		return "", fmt.Errorf("%w: the host is not a valid DNS name", ErrInvalidURL)
	}
	if u.scheme == schemeAWSSRV {
		return host, nil
	}
	service, domain, ok := strings.Cut(name, ".")
	if !ok {
		return "", fmt.Errorf("%w: host %q has no dot, postgresql+srv needs name.domain", ErrInvalidURL, host)
	}
	srv := "_" + service + "._postgresql." + domain
	if !validHostname(srv) {
		return "", fmt.Errorf("%w: the SRV name built from the host is too long", ErrInvalidURL)
	}
	return srv, nil
}

// SRVName returns the SRV name that connString asks to look up:
// _name._postgresql.example.com for postgresql+srv://name.example.com/... and
// the host itself for aws+srv://svc.namespace/.... It returns an error
// wrapping ErrInvalidURL when connString is not an SRV URL or its host is
// missing, has a port, lists several hosts, is an IP address or is not a DNS
// name, and for a postgresql+srv host without a dot. The error never holds
// the password.
func SRVName(connString string) (string, error) {
	u, err := splitSRV(connString)
	if err != nil {
		return "", err
	}
	return u.srvName()
}

// Placeholder returns connString with the scheme replaced by postgresql://
// and the host replaced by the URL's own host name, so that pgx.ParseConfig
// can read user, password, database and parameters before any lookup. A
// string that is not an SRV URL is returned unchanged. It returns the errors
// of SRVName for a malformed SRV URL.
func Placeholder(connString string) (string, error) {
	if !IsSRV(connString) {
		return connString, nil
	}
	u, err := splitSRV(connString)
	if err != nil {
		return "", err
	}
	if _, err := u.srvName(); err != nil {
		return "", err
	}
	return "postgresql://" + u.userinfo + strings.TrimSuffix(u.host, ".") + u.tail, nil
}

// Rewrite builds the multi-host postgresql:// URL for connString from
// records, without any I/O. Records are ordered by priority ascending, then
// weight descending, then target and port; duplicates are dropped, trailing
// dots removed, IPv6 targets bracketed and every host given its own port.
// Records whose target is "." (service not offered) are ignored. The user
// information and everything after the host are copied byte for byte.
//
// It returns an error wrapping ErrInvalidURL when connString is not a valid
// SRV URL, ErrNoRecords when no record is left, and ErrInvalidTarget when a
// target is not a valid host name or IP address or a port is 0. Errors name
// the SRV name and never hold the password.
//
// Under sslmode=verify-full pgx verifies each host's certificate against
// that host's own name, the SRV target, not against the SRV name.
func Rewrite(connString string, records []Record) (string, error) {
	s, _, err := rewrite(connString, records)
	return s, err
}

// rewrite is Rewrite that also returns the host:port list, for logging.
func rewrite(connString string, records []Record) (string, []string, error) {
	u, err := splitSRV(connString)
	if err != nil {
		return "", nil, err
	}
	name, err := u.srvName()
	if err != nil {
		return "", nil, err
	}
	hosts, err := hostPorts(records)
	if err != nil {
		return "", nil, fmt.Errorf("rewrite SRV %q: %w", name, err)
	}
	return "postgresql://" + u.userinfo + strings.Join(hosts, ",") + u.tail, hosts, nil
}

// hostPorts validates, orders and deduplicates records and returns them as
// URL host:port items.
func hostPorts(records []Record) ([]string, error) {
	type item struct {
		Record
		key  string // lower-case target without trailing dot, for ordering
		host string // host:port as it goes into the URL
	}
	items := make([]item, 0, len(records))
	for _, r := range records {
		if r.Target == "." {
			continue
		}
		host, err := urlHost(r.Target)
		if err != nil {
			return nil, err
		}
		if r.Port == 0 {
			return nil, fmt.Errorf("target %q has port 0: %w", r.Target, ErrInvalidTarget)
		}
		items = append(items, item{
			Record: r,
			key:    strings.ToLower(host),
			host:   host + ":" + strconv.Itoa(int(r.Port)),
		})
	}
	if len(items) == 0 {
		return nil, ErrNoRecords
	}
	slices.SortStableFunc(items, func(a, b item) int {
		return cmp.Or(
			cmp.Compare(a.Priority, b.Priority),
			cmp.Compare(b.Weight, a.Weight),
			strings.Compare(a.key, b.key),
			cmp.Compare(a.Port, b.Port),
		)
	})
	hosts := make([]string, 0, len(items))
	seen := make(map[string]struct{}, len(items))
	for _, it := range items {
		k := it.key + ":" + strconv.Itoa(int(it.Port))
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		hosts = append(hosts, it.host)
	}
	return hosts, nil
}

// urlHost returns target as it may appear in a URL host list: without its
// trailing dot and, for IPv6, in brackets. Anything else than a host name or
// an IP address is refused so that a DNS answer cannot smuggle URL syntax
// into the connection string.
func urlHost(target string) (string, error) {
	name := strings.TrimSuffix(target, ".")
	if addr, err := netip.ParseAddr(name); err == nil {
		switch {
		case addr.Zone() != "":
			return "", fmt.Errorf("target %q has an IPv6 zone: %w", target, ErrInvalidTarget)
		case addr.Is6():
			return "[" + name + "]", nil
		default:
			return name, nil
		}
	}
	if !validHostname(name) {
		return "", fmt.Errorf("target %q: %w", target, ErrInvalidTarget)
	}
	return name, nil
}

// validHostname reports whether name (without trailing dot) is made of
// labels of letters, digits, hyphens and underscores, each label at most 63
// bytes long and the name at most 253. Underscores are allowed because
// service names such as _name._postgresql use them.
func validHostname(name string) bool {
	if name == "" || len(name) > maxNameLen {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > maxLabelLen {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
			if !ok {
				return false
			}
		}
	}
	return true
}
