// Package redact removes passwords from PostgreSQL connection strings and
// from error text before they reach a log line or an error message.
//
// It is shared by every package of the module so that the rules for what
// counts as a secret live in one place.
package redact

import (
	"net/url"
	"regexp"
	"strings"
)

// Mask replaces a password wherever one is hidden.
const Mask = "xxxxx"

// secretKeys are connection parameters whose values are secrets, in URL
// query strings and in libpq keyword/value strings alike.
var secretKeys = map[string]bool{
	"password":    true,
	"sslpassword": true,
}

// kvSecret matches password=value in a libpq keyword/value string, with the
// value either single-quoted (backslash escapes allowed) or bare.
var kvSecret = regexp.MustCompile(`(?i)\b(password|sslpassword)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s]*)`)

// userinfo matches the user:password@ part of something that looks like a
// URL, for strings net/url refuses to parse.
var userinfo = regexp.MustCompile(`(://[^:/@\s]*):[^@\s]*@`)

// ConnString returns s with every password replaced by Mask. s may be a URL
// (postgres://, postgresql://, postgresql+srv://, aws+srv://) or a libpq
// keyword/value string. Strings that fail to parse are still scrubbed by
// pattern, so the result is safe to print whatever s holds.
func ConnString(s string) string {
	if s == "" {
		return s
	}
	if !strings.Contains(s, "://") {
		return kvSecret.ReplaceAllString(s, "${1}="+Mask)
	}
	u, err := url.Parse(s)
	if err != nil {
		return kvSecret.ReplaceAllString(userinfo.ReplaceAllString(s, "${1}:"+Mask+"@"), "${1}="+Mask)
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), Mask)
		}
	}
	if u.RawQuery != "" {
		q := u.Query()
		changed := false
		for k := range q {
			if secretKeys[strings.ToLower(k)] {
				q.Set(k, Mask)
				changed = true
			}
		}
		if changed {
			u.RawQuery = q.Encode()
		}
	}
	// url.URL.String escapes the mask's characters nowhere, so the result
	// reads as the input did with the secret swapped out.
	return u.String()
}

// Password returns the password held by the connection string s, or "" when
// it has none. It is used to scrub error text that a driver built from s.
func Password(s string) string {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return ""
		}
		if u.User != nil {
			if p, ok := u.User.Password(); ok && p != "" {
				return p
			}
		}
		return u.Query().Get("password")
	}
	m := kvSecret.FindStringSubmatch(s)
	if m == nil {
		return ""
	}
	v := m[2]
	if strings.HasPrefix(v, "'") && strings.HasSuffix(v, "'") && len(v) >= 2 {
		v = strings.ReplaceAll(v[1:len(v)-1], `\'`, `'`)
		v = strings.ReplaceAll(v, `\\`, `\`)
	}
	return v
}

// Error wraps err so that its text never contains any of secrets. The
// original error stays reachable through errors.Is and errors.As.
func Error(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	var keep []string
	for _, s := range secrets {
		if s != "" {
			keep = append(keep, s)
		}
	}
	if len(keep) == 0 {
		return err
	}
	return &scrubbed{err: err, secrets: keep}
}

type scrubbed struct {
	err     error
	secrets []string
}

func (e *scrubbed) Error() string {
	msg := e.err.Error()
	for _, s := range e.secrets {
		msg = strings.ReplaceAll(msg, s, Mask)
		// A password can also appear percent-encoded, as it was in a URL.
		if esc := url.QueryEscape(s); esc != s {
			msg = strings.ReplaceAll(msg, esc, Mask)
		}
		if esc := url.PathEscape(s); esc != s {
			msg = strings.ReplaceAll(msg, esc, Mask)
		}
	}
	return msg
}

func (e *scrubbed) Unwrap() error { return e.err }
