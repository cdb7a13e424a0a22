package sprocketspg

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sprockets/sprocketspg/discovery"
	"github.com/sprockets/sprocketspg/internal/redact"
)

// NewResolver returns the SRV resolver Module provides: DNS through the
// servers of /etc/resolv.conf. Replace it with fx.Decorate or fx.Replace
// (annotated as a discovery.Resolver) to resolve another way, for example
// through a service registry.
func NewResolver() discovery.Resolver {
	return discovery.NewDNSResolver()
}

// hostSource gives each new connection of a pool with a postgresql+srv://
// or aws+srv:// URL the hosts of the current SRV answer.
type hostSource struct {
	name        string // the SRV name looked up
	placeholder string // the URL in a form pgx parses before any lookup
	source      *discovery.Source
	password    string

	mu       sync.Mutex
	lastConn string         // connection string last parsed
	lastConf *pgconn.Config // its parsed hosts
}

func newHostSource(url string, o options) (*hostSource, error) {
	invalid := func(err error) error {
		return &ConfigError{Variable: EnvPrefix(o.name) + EnvURL, Value: redact.ConnString(url),
			Reason: "is not a valid SRV URL", Err: redact.Error(err, redact.Secrets(url)...)}
	}
	name, err := discovery.SRVName(url)
	if err != nil {
		return nil, invalid(err)
	}
	placeholder, err := discovery.Placeholder(url)
	if err != nil {
		return nil, invalid(err)
	}
	resolver := o.resolver
	if resolver == nil {
		resolver = discovery.NewDNSResolver()
	}
	source, err := discovery.NewSource(url, resolver, discovery.WithLogger(o.logger))
	if err != nil {
		return nil, invalid(err)
	}
	return &hostSource{
		name:        name,
		placeholder: placeholder,
		source:      source,
		password:    redact.Password(url),
	}, nil
}

// beforeConnect replaces the placeholder host of cc with the hosts of the
// current SRV answer, each with its own port and TLS settings. The answer
// is cached by the discovery.Source for its TTL, so most connections cost
// no lookup, and a DNS change reaches the next new connection.
func (h *hostSource) beforeConnect(ctx context.Context, cc *pgx.ConnConfig) error {
	conf, err := h.hosts(ctx)
	if err != nil {
		return err
	}
	cc.Host = conf.Host
	cc.Port = conf.Port
	cc.TLSConfig = conf.TLSConfig
	cc.Fallbacks = conf.Fallbacks
	return nil
}

func (h *hostSource) hosts(ctx context.Context) (*pgconn.Config, error) {
	connString, err := h.source.ConnString(ctx)
	if err != nil {
		return nil, redact.Error(fmt.Errorf("resolve postgres hosts: %w", err), h.password)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if connString == h.lastConn {
		return h.lastConf, nil
	}
	conf, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, redact.Error(fmt.Errorf("parse hosts resolved from SRV %s: %w", h.name, err), h.password)
	}
	h.lastConn, h.lastConf = connString, conf
	return conf, nil
}
