package sprocketspg

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sprockets/sprocketspg/internal/redact"
)

// This file applies libpq's TLS settings itself instead of leaving them to
// pgx, because pgx reads sslrootcert, sslcert and sslkey once, when the
// connection string is parsed: a certificate rotated on disk would reach
// the pool only with a restart. Here the string pgx parses names no file,
// and every new connection reads the files again. What the settings mean
// follows pgx's configTLS (pgconn/config.go), which follows libpq.

// sslModes are libpq's sslmode values.
var sslModes = map[string]bool{
	"disable": true, "allow": true, "prefer": true,
	"require": true, "verify-ca": true, "verify-full": true,
}

// tlsKeys are the connection parameters tlsFiles takes over, in the order
// connString writes them, with the Config variable that sets each.
var tlsKeys = []struct{ key, env string }{
	{"sslmode", EnvSSLMode},
	{"sslrootcert", EnvSSLRootCert},
	{"sslcert", EnvSSLCert},
	{"sslkey", EnvSSLKey},
}

// tlsSetting is the value of one TLS parameter and where it came from, so
// that an error can name what to fix.
type tlsSetting struct {
	value string
	// from names the source: "POSTGRES_SSLCERT", "the sslcert of
	// POSTGRES_URL", "PGSSLCERT" or a file under ~/.postgresql. It is ""
	// when nothing set the parameter, not even to "".
	from string
}

// ErrTLSFiles is matched (errors.Is) by the error of a connection attempt
// whose TLS files (SSLRootCert, SSLCert, SSLKey or the URL's) could not be
// read or used. Start fails on the first such error rather than retrying
// it as an unreachable server.
var ErrTLSFiles = errors.New("postgres TLS files unusable")

// tlsFiles applies the TLS settings of a pool (Config's SSLMode,
// SSLRootCert, SSLCert and SSLKey, else the URL's sslmode, sslrootcert,
// sslcert and sslkey, else libpq's PGSSLMODE, PGSSLROOTCERT, PGSSLCERT and
// PGSSLKEY, else ~/.postgresql/root.crt, postgresql.crt and
// postgresql.key, as pgx would) to every new connection, reading the files
// each time, so that rotated certificates reach the pool without a
// restart.
type tlsFiles struct {
	mode, rootCert, cert, key tlsSetting
	// sni sends the host name in the TLS handshake (sslsni=1, the
	// default).
	sni bool
}

// newTLSFiles checks the TLS settings of cfg against those of its URL and
// returns what applies them to each new connection, or nil when there is
// nothing to apply beyond what pgx parsed from the URL: no Config field is
// set and the URL names no file. It does no I/O. Errors are *ConfigErrors
// naming the instance's variables (prefix).
func newTLSFiles(cfg Config, prefix string) (*tlsFiles, error) {
	return buildTLSFiles(cfg, prefix, os.Getenv)
}

// buildTLSFiles is newTLSFiles with the environment injectable.
func buildTLSFiles(cfg Config, prefix string, getenv func(string) string) (*tlsFiles, error) {
	urlVar := prefix + EnvURL
	params, isURL, _, err := connParams(cfg.URL)
	if err != nil {
		// No Value: where a password ends in a malformed string is
		// anyone's guess, so none of it is quoted.
		return nil, &ConfigError{Variable: urlVar, Reason: "cannot be parsed", Err: err}
	}
	inURL, err := urlTLSParams(params, isURL)
	if err != nil {
		return nil, &ConfigError{Variable: urlVar, Value: redact.ConnString(cfg.URL), Reason: err.Error()}
	}
	fields := map[string]string{
		"sslmode": cfg.SSLMode, "sslrootcert": cfg.SSLRootCert, "sslcert": cfg.SSLCert, "sslkey": cfg.SSLKey,
	}
	var errs []error
	var settings [4]tlsSetting
	needed := false // a Config field or a file makes tlsFiles worth having
	for i, k := range tlsKeys {
		variable, mine := prefix+k.env, fields[k.key]
		theirs, said := inURL[k.key]
		switch {
		case mine != "":
			needed = true
			if said && theirs != "" && theirs != mine {
				errs = append(errs, &ConfigError{Variable: variable, Value: mine,
					Reason: fmt.Sprintf("%s's %s says %q: set it in one place, or make both agree", urlVar, k.key, theirs)})
			}
			settings[i] = tlsSetting{value: mine, from: variable}
		case said:
			// Even an empty value counts, as it does for pgx: it hides the
			// environment's.
			needed = needed || (k.key != "sslmode" && theirs != "")
			settings[i] = tlsSetting{value: theirs, from: "the " + k.key + " of " + urlVar}
		default:
			env := "PG" + strings.ToUpper(k.key)
			if v := getenv(env); v != "" {
				settings[i] = tlsSetting{value: v, from: env}
			}
		}
	}
	if !needed {
		return nil, nil
	}
	t := &tlsFiles{mode: settings[0], rootCert: settings[1], cert: settings[2], key: settings[3], sni: true}
	if v, said := inURL["sslsni"]; said {
		t.sni = v == "1"
	} else if v := getenv("PGSSLSNI"); v != "" {
		t.sni = v == "1"
	}
	if m := t.mode; m.value != "" && !sslModes[m.value] {
		errs = append(errs, t.invalid(m, cfg.URL, urlVar,
			fmt.Sprintf("sslmode %q is not one of disable, allow, prefer, require, verify-ca, verify-full", m.value)))
	}
	if (t.cert.value == "") != (t.key.value == "") {
		set, missing := t.cert, prefix+EnvSSLKey+" (or the URL's sslkey)"
		if set.value == "" {
			set, missing = t.key, prefix+EnvSSLCert+" (or the URL's sslcert)"
		}
		errs = append(errs, t.invalid(set, cfg.URL, urlVar,
			"a client certificate needs its key and a key its certificate: set "+missing+" too"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if t.rootCert.value == "system" {
		// As pgx does: the system's CAs make sense with host name checks
		// only.
		t.mode = tlsSetting{value: "verify-full", from: t.rootCert.from}
	}
	return t, nil
}

// invalid is the *ConfigError for a setting s that cannot work.
func (t *tlsFiles) invalid(s tlsSetting, rawURL, urlVar, reason string) *ConfigError {
	if strings.HasSuffix(s.from, " of "+urlVar) {
		return &ConfigError{Variable: urlVar, Value: redact.ConnString(rawURL), Reason: reason}
	}
	return &ConfigError{Variable: s.from, Value: s.value, Reason: reason}
}

// connString returns the connection string pgx is to parse: raw without
// the TLS settings that t applies itself, so that parsing reads no file.
// sslmode is set to the mode t applies and sslrootcert, sslcert and sslkey
// to "", which also keeps pgx from reading PGSSLROOTCERT's file or
// ~/.postgresql's; the rest of raw is kept byte for byte. A nil t returns
// raw.
func (t *tlsFiles) connString(raw string) string {
	if t == nil {
		return raw
	}
	params, isURL, queryAt, err := connParams(raw)
	if err != nil {
		// newTLSFiles has refused such a string already.
		return raw
	}
	mode := t.mode.value
	if mode == "" {
		mode = "prefer"
	}
	values := map[string]string{"sslmode": mode}
	// ssl=true is a URL's alias of sslmode=require; when it is in force
	// every ssl goes, since pgx would drop them too.
	alias := sslAlias(params, isURL)
	taken := func(p connParam) bool {
		for _, k := range tlsKeys {
			if p.key == k.key {
				return true
			}
		}
		return alias && p.key == "ssl"
	}
	var b strings.Builder
	if isURL {
		b.WriteString(raw[:queryAt])
		sep := "?"
		for _, p := range params {
			if !taken(p) {
				b.WriteString(sep + raw[p.start:p.end])
				sep = "&"
			}
		}
		for _, k := range tlsKeys {
			b.WriteString(sep + k.key + "=" + url.QueryEscape(values[k.key]))
			sep = "&"
		}
		return b.String()
	}
	last := 0
	for _, p := range params {
		if taken(p) {
			b.WriteString(raw[last:p.start])
			last = p.end
			for last < len(raw) && isKVSpace(raw[last]) {
				last++
			}
		}
	}
	b.WriteString(raw[last:])
	for _, k := range tlsKeys {
		if b.Len() > 0 && !isKVSpace(b.String()[b.Len()-1]) {
			b.WriteByte(' ')
		}
		v := values[k.key]
		if v == "" {
			v = "''"
		}
		b.WriteString(k.key + "=" + v)
	}
	return b.String()
}

// beforeConnect sets the TLS configuration of cc, and of each of its
// fallbacks, from the settings, reading the files now. It rebuilds the
// fallbacks from cc's hosts, as pgx's ParseConfig builds them: for each
// host one attempt, or two under sslmode=prefer (TLS, then plaintext) and
// allow (plaintext, then TLS); a Unix socket gets one without TLS.
// Consecutive entries for the same host and port are one host.
func (t *tlsFiles) beforeConnect(_ context.Context, cc *pgx.ConnConfig) error {
	if t == nil {
		return nil
	}
	mode := t.mode.value
	if mode == "" {
		mode = "prefer"
	}
	direct := cc.SSLNegotiation == "direct"
	if direct && mode == "prefer" {
		mode = "require" // TLS first or nothing, as pgx does
	}
	var m tlsMaterial
	if mode != "disable" {
		var err error
		// With sslcertmode=disable libpq reads no client certificate.
		if m, err = t.load(cc.SSLCertMode != "disable"); err != nil {
			return fmt.Errorf("%w: %w", ErrTLSFiles, err)
		}
	}
	hosts := append([]*pgconn.FallbackConfig{{Host: cc.Host, Port: cc.Port}}, cc.Fallbacks...)
	var out []*pgconn.FallbackConfig
	for i, h := range hosts {
		if i > 0 && h.Host == hosts[i-1].Host && h.Port == hosts[i-1].Port {
			continue
		}
		configs := []*tls.Config{nil}
		if network, _ := pgconn.NetworkAddress(h.Host, h.Port); network != "unix" {
			configs = m.configs(mode, h.Host, t.sni, direct)
		}
		for _, c := range configs {
			out = append(out, &pgconn.FallbackConfig{Host: h.Host, Port: h.Port, TLSConfig: c})
		}
	}
	cc.Host, cc.Port, cc.TLSConfig = out[0].Host, out[0].Port, out[0].TLSConfig
	cc.Fallbacks = out[1:]
	return nil
}

// tlsMaterial is what the files held at one connection.
type tlsMaterial struct {
	// roots are the CAs that sign the server's certificate; nil means the
	// system's when a mode verifies, and no CA file otherwise.
	roots *x509.CertPool
	// rootsFrom names where the roots came from, for errors.
	rootsFrom string
	cert      *tls.Certificate
}

// load reads the CA file and, when withCert, the client certificate and
// key, falling back to ~/.postgresql's files as pgx does for settings
// nobody made.
func (t *tlsFiles) load(withCert bool) (tlsMaterial, error) {
	root, cert, key := t.rootCert, t.cert, t.key
	if home, err := os.UserHomeDir(); err == nil && (root.from == "" || cert.from == "" && key.from == "") {
		dir := filepath.Join(home, ".postgresql")
		exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
		if p := filepath.Join(dir, "root.crt"); root.from == "" && exists(p) {
			root = tlsSetting{value: p, from: p}
		}
		c, k := filepath.Join(dir, "postgresql.crt"), filepath.Join(dir, "postgresql.key")
		if cert.from == "" && key.from == "" && exists(c) && exists(k) {
			cert, key = tlsSetting{value: c, from: c}, tlsSetting{value: k, from: k}
		}
	}
	var m tlsMaterial
	switch root.value {
	case "":
		m.rootsFrom = "the system's CA certificates"
	case "system":
		pool, err := x509.SystemCertPool()
		if err != nil {
			return m, fmt.Errorf("load the system's CA certificates for %s: %w", root.from, err)
		}
		m.roots, m.rootsFrom = pool, "the system's CA certificates"
	default:
		b, err := readTLSFile(root)
		if err != nil {
			return m, err
		}
		m.roots, m.rootsFrom = x509.NewCertPool(), describeFile(root)
		if !m.roots.AppendCertsFromPEM(b) {
			return m, fmt.Errorf("read %s: no PEM certificate in it", describeFile(root))
		}
	}
	if !withCert || cert.value == "" || key.value == "" {
		return m, nil
	}
	keyPEM, err := readTLSFile(key)
	if err != nil {
		return m, err
	}
	block, _ := pem.Decode(keyPEM)
	switch {
	case block == nil:
		return m, fmt.Errorf("read %s: no PEM key in it", describeFile(key))
	case block.Type == "ENCRYPTED PRIVATE KEY" || strings.Contains(block.Headers["Proc-Type"], "ENCRYPTED"):
		return m, fmt.Errorf("read %s: the key is encrypted, and sprocketspg does not decrypt keys "+
			"(sslpassword is not supported): give it the key unencrypted", describeFile(key))
	}
	certPEM, err := readTLSFile(cert)
	if err != nil {
		return m, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// crypto/tls's errors quote no file content.
		return m, fmt.Errorf("load the client certificate %s with the key %s: %w", describeFile(cert), describeFile(key), err)
	}
	m.cert = &pair
	return m, nil
}

// configs returns the TLS configurations of the attempts at host under
// mode, in the order pgx tries them; nil stands for plaintext.
func (m tlsMaterial) configs(mode, host string, sni, direct bool) []*tls.Config {
	if mode == "disable" {
		return []*tls.Config{nil}
	}
	c := &tls.Config{RootCAs: m.roots}
	if direct {
		c.NextProtos = []string{"postgresql"}
	}
	// Certificates are checked in VerifyConnection rather than by
	// crypto/tls, so that verify-ca can skip the host name as libpq does
	// and a failure says which CA file did not vouch for the server.
	c.InsecureSkipVerify = true
	switch mode {
	case "require":
		// libpq: with a root certificate, require checks it as verify-ca.
		if m.roots != nil {
			c.VerifyConnection = m.verify(host, "")
		}
	case "verify-ca":
		c.VerifyConnection = m.verify(host, "")
	case "verify-full":
		c.ServerName = host
		c.VerifyConnection = m.verify(host, host)
	}
	if m.cert != nil {
		c.Certificates = []tls.Certificate{*m.cert}
	}
	// RFC 6066: no server name indication for an IP address.
	if sni && net.ParseIP(host) == nil {
		c.ServerName = host
	}
	switch mode {
	case "allow":
		return []*tls.Config{nil, c}
	case "prefer":
		return []*tls.Config{c, nil}
	default:
		return []*tls.Config{c}
	}
}

// verify returns the check of the server's certificate chain against
// m.roots, and of its name against dnsName unless that is "".
func (m tlsMaterial) verify(host, dnsName string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("verify the server certificate of %s: the server sent none", host)
		}
		opts := x509.VerifyOptions{Roots: m.roots, DNSName: dnsName, Intermediates: x509.NewCertPool()}
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return fmt.Errorf("verify the server certificate of %s against %s: %w", host, m.rootsFrom, err)
		}
		return nil
	}
}

// readTLSFile reads the file of s. Its errors name the file and where it
// was set, and hold none of its content.
func readTLSFile(s tlsSetting) ([]byte, error) {
	b, err := os.ReadFile(s.value)
	if err != nil {
		// The path is in the message already; keep only the reason.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("read %s: %w", describeFile(s), err)
	}
	return b, nil
}

// describeFile names the file of s for an error: POSTGRES_SSLCERT
// "/etc/certs/client.crt", or just the path for a default file.
func describeFile(s tlsSetting) string {
	if s.from == s.value {
		return fmt.Sprintf("%q", s.value)
	}
	return fmt.Sprintf("%s %q", s.from, s.value)
}

// connParam is one keyword=value pair of a connection string.
type connParam struct {
	key, value string
	// raw[start:end] is the pair as written.
	start, end int
	// bad says the value did not decode; pgx will refuse it.
	bad bool
}

// connParams cuts raw into its parameters as pgx reads them: the query
// pairs of a URL (postgres://, postgresql://, postgresql+srv://,
// aws+srv://), every pair of a keyword/value string. For a URL queryAt is
// the index of the query's "?", or len(raw) when it has none.
func connParams(raw string) (params []connParam, isURL bool, queryAt int, err error) {
	if scheme, rest, ok := strings.Cut(raw, "://"); ok && validSchemes[strings.ToLower(scheme)] {
		// As pgx and libpq read it: the user information ends at the first
		// "@" before any "/", and the first "?" after it starts the query.
		off := len(raw) - len(rest)
		if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' {
			off += i + 1
		}
		q := strings.IndexByte(raw[off:], '?')
		if q < 0 {
			return nil, true, len(raw), nil
		}
		queryAt = off + q
		// Like pgx, pairs end at "&" and an empty rest ends the query.
		for start := queryAt + 1; start < len(raw); {
			end := strings.IndexByte(raw[start:], '&')
			if end < 0 {
				end = len(raw)
			} else {
				end += start
			}
			rawKey, rawValue, _ := strings.Cut(raw[start:end], "=")
			p := connParam{start: start, end: end, key: rawKey}
			if k, err := url.PathUnescape(strings.Trim(rawKey, " ")); err == nil {
				p.key = k
			}
			v, err := url.PathUnescape(strings.Trim(rawValue, " "))
			p.value, p.bad = v, err != nil
			params = append(params, p)
			start = end + 1
		}
		return params, true, queryAt, nil
	}
	params, err = kvParams(raw)
	return params, false, 0, err
}

// kvParams cuts a libpq keyword/value string into its pairs, by pgx's
// rules (parseKeywordValueSettings): keyword = value, the value bare up
// to a space or single-quoted, a backslash escaping the next character.
func kvParams(s string) ([]connParam, error) {
	var params []connParam
	i := skipKVSpace(s, 0)
	for i < len(s) {
		start := i
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 {
			return nil, errors.New(`a keyword/value string needs "=" after each keyword`)
		}
		key := strings.Trim(s[i:i+eq], " \t\n\r\v\f")
		i = skipKVSpace(s, i+eq+1)
		var value string
		if i < len(s) && s[i] == '\'' {
			j := i + 1
			for ; j < len(s) && s[j] != '\''; j++ {
				if s[j] == '\\' {
					j++
				}
			}
			if j >= len(s) {
				return nil, errors.New("a quoted value of the keyword/value string has no closing quote")
			}
			value, i = unescapeKV(s[i+1:j]), j+1
		} else {
			j := i
			for ; j < len(s) && !isKVSpace(s[j]); j++ {
				if s[j] == '\\' {
					j++
				}
			}
			j = min(j, len(s))
			value, i = unescapeKV(s[i:j]), j
		}
		params = append(params, connParam{key: key, value: value, start: start, end: i})
		i = skipKVSpace(s, i)
	}
	return params, nil
}

// urlTLSParams returns the TLS parameters among params, the last of each
// key winning, as for pgx. In a URL, ssl=true stands for sslmode=require
// when it is the last ssl and no sslmode follows it (sslAlias).
func urlTLSParams(params []connParam, isURL bool) (map[string]string, error) {
	found := map[string]string{}
	for _, p := range params {
		switch p.key {
		case "sslmode", "sslrootcert", "sslcert", "sslkey", "sslsni":
			if p.bad {
				return nil, fmt.Errorf("its %s is not validly percent-encoded", p.key)
			}
			found[p.key] = p.value
		}
	}
	if sslAlias(params, isURL) {
		found["sslmode"] = "require"
	}
	return found, nil
}

// sslAlias reports whether the URL's params say sslmode=require as pgx
// reads ssl=true: the last ssl is "true" and comes after every sslmode.
func sslAlias(params []connParam, isURL bool) bool {
	alias := false
	for _, p := range params {
		switch {
		case !isURL:
			return false
		case p.key == "ssl":
			alias = p.value == "true"
		case p.key == "sslmode":
			alias = false
		}
	}
	return alias
}

func isKVSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func skipKVSpace(s string, i int) int {
	for i < len(s) && isKVSpace(s[i]) {
		i++
	}
	return i
}

// unescapeKV drops each backslash and keeps the character after it.
func unescapeKV(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			if i == len(s) {
				break
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
