// Package redact removes passwords from PostgreSQL connection strings and
// from error text before they reach a log line or an error message.
//
// It is shared by every package of the module so that the rules for what
// counts as a secret live in one place.
package redact

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
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
//
// A quoted value that is never closed runs to the end of the string, as far
// as any parser could take it.
//
// A bare value ends where the next keyword=value pair begins, not at the
// first space: "password=my secret dbname=db" is refused by pgx, but its
// error quotes "secret", so the whole of "my secret" counts as the value.
var kvSecret = regexp.MustCompile(`(?i)\b(password|sslpassword)\s*=\s*('(?:[^'\\]|\\.)*'|'.*|[^\s']*(?:\s+[^\s=']+)*)(\s|$)`)

// urlScheme matches the start of a URL.
var urlScheme = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://`)

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
	if !urlScheme.MatchString(s) {
		// A libpq keyword/value string, or something that only contains a
		// URL: scrub by pattern, leaving the rest as it was. The
		// keyword/value pairs go first: a value that looks like a URL's
		// user information ("host=://: password='@x'") would otherwise
		// be masked together with the "password=" before it, leaving
		// the value's end in sight.
		s = kvSecret.ReplaceAllString(s, "${1}="+Mask+"${3}")
		return userinfo.ReplaceAllString(maskUserinfo(s), "${1}:"+Mask+"@")
	}
	raw := s
	s = maskUserinfo(s)
	u, err := url.Parse(s)
	if err != nil {
		return userinfo.ReplaceAllString(maskUserinfo(kvSecret.ReplaceAllString(raw, "${1}="+Mask+"${3}")), "${1}:"+Mask+"@")
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

// Password returns the password held by the connection string s, as pgx
// reads it, or "" when it has none. It is used to scrub error text that a
// driver built from s.
func Password(s string) string {
	if strings.Contains(s, "://") {
		if p := firstAtPassword(s); p != "" {
			return p
		}
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
	switch {
	case strings.HasPrefix(v, "'") && strings.HasSuffix(v, "'") && len(v) >= 2:
		v = strings.ReplaceAll(v[1:len(v)-1], `\'`, `'`)
		v = strings.ReplaceAll(v, `\\`, `\`)
	case strings.HasPrefix(v, "'"):
		// Never closed: the rest of the string.
		v = v[1:]
	}
	return v
}

// Secrets returns every text of s that some parser could take for its
// password: the one Password finds (pgx's reading, the user information
// ending at the first @) and, for a URL-like string, the wider span
// net/url takes (up to the last @ before the first /). A driver that
// quotes s in an error may quote either, so an error built from s is
// scrubbed of both.
func Secrets(s string) []string {
	var out []string
	if p := Password(s); p != "" {
		out = append(out, p)
	}
	for _, span := range userinfoSpans(s) {
		if span != "" && !slices.Contains(out, span) {
			out = append(out, span)
		}
	}
	return out
}

// userinfoSpans returns the raw text maskUserinfo would mask in s, one per
// URL-like start it finds.
func userinfoSpans(s string) []string {
	var spans []string
	if strings.HasPrefix(s, "//") {
		spans = append(spans, authoritySpan(s[2:]))
	}
	if i := strings.Index(s, "://"); i >= 0 {
		spans = append(spans, authoritySpan(s[i+3:]))
	} else if at := strings.IndexByte(s, '@'); at >= 0 && !strings.HasPrefix(s, "//") && !strings.ContainsAny(s[:at], "= \t") {
		spans = append(spans, authoritySpan(s))
	}
	return spans
}

// authoritySpan returns the text maskAuthority would mask in rest, the
// text after "//".
func authoritySpan(rest string) string {
	lo, hi, ok := authorityPasswordBounds(rest, 0)
	if !ok {
		return ""
	}
	return rest[lo:hi]
}

// firstAtPassword reads the password of the first URL in s the way pgx
// does: the user information ends at the first @ before any /. It returns
// the password decoded when it decodes, raw otherwise.
func firstAtPassword(s string) string {
	// A scheme-relative "//user:pass@host" is read from its start, and the
	// first "://" too, since either may be the URL a parser takes.
	if strings.HasPrefix(s, "//") {
		if p := authorityPassword(s[2:]); p != "" {
			return p
		}
	}
	if i := strings.Index(s, "://"); i >= 0 {
		return authorityPassword(s[i+3:])
	}
	return ""
}

// authorityPassword returns the password of the user information that
// rest, the text after "//", starts with.
func authorityPassword(rest string) string {
	if slash := strings.IndexByte(rest, '/'); slash >= 0 {
		rest = rest[:slash]
	}
	at := strings.IndexByte(rest, '@')
	if at < 0 {
		return ""
	}
	_, p, ok := strings.Cut(rest[:at], ":")
	if !ok || p == "" {
		return ""
	}
	if dec, err := url.PathUnescape(p); err == nil {
		return dec
	}
	return p
}

// maskUserinfo masks the password of the first URL in s over the widest
// span any parser could take for it. Parsers disagree on where it ends
// (net/url: at the last @ of the authority; pgx, like libpq: at the first
// @ before any /), and a string that only looks like a URL, such as
// "#://u:p@h" or "u:p@h/db", parses as something else, so the mask runs from the first
// colon of the user information to the last @ before the first /.
func maskUserinfo(s string) string {
	// A string may look like a URL from its start ("//u:p@h") and again
	// at a later "://" ("//u:p@://"): each is masked.
	relative := strings.HasPrefix(s, "//")
	if relative {
		s = maskAuthority(s, 2)
	}
	if i := strings.Index(s, "://"); i >= 0 {
		return maskAuthority(s, i+3)
	}
	if relative {
		return s
	}
	// No scheme at all ("user:pass@host/db"), unless it reads as a
	// keyword/value string, which the caller scrubs by pattern.
	at := strings.IndexByte(s, '@')
	if at < 0 || strings.ContainsAny(s[:at], "= \t") {
		return s
	}
	return maskAuthority(s, 0)
}

// maskAuthority masks the password of the user information that starts
// at s[start:], from its first colon to the last @ before the first /.
func maskAuthority(s string, start int) string {
	lo, hi, ok := authorityPasswordBounds(s, start)
	if !ok || s[lo:hi] == Mask {
		return s
	}
	return s[:lo] + Mask + s[hi:]
}

// authorityPasswordBounds returns where, in s, the password of the user
// information starting at s[start:] begins and ends over the widest span
// any parser could take: from the first colon to the last @ before the
// first /.
func authorityPasswordBounds(s string, start int) (lo, hi int, ok bool) {
	rest := s[start:]
	if slash := strings.IndexByte(rest, '/'); slash >= 0 {
		rest = rest[:slash]
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return 0, 0, false
	}
	colon := strings.IndexByte(rest[:at], ':')
	if first := strings.IndexByte(rest, '@'); colon < 0 || colon > first {
		return 0, 0, false
	}
	return start + colon + 1, start + at, true
}

// maskAll replaces p, and its percent-encoded forms, everywhere in s.
func maskAll(s, p string) string {
	s = strings.ReplaceAll(s, p, Mask)
	if esc := url.QueryEscape(p); esc != p {
		s = strings.ReplaceAll(s, esc, Mask)
	}
	if esc := url.PathEscape(p); esc != p {
		s = strings.ReplaceAll(s, esc, Mask)
	}
	return s
}

// Error wraps err so that its text never contains any of secrets. The
// original error stays reachable through errors.Is and errors.As.
func Error(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	var keep []string
	for _, s := range secrets {
		if s == "" {
			continue
		}
		keep = append(keep, s)
		// A parser that rejects a password with spaces quotes its words
		// one at a time.
		if fields := strings.Fields(s); len(fields) > 1 {
			keep = append(keep, fields...)
		}
	}
	if len(keep) == 0 {
		return err
	}
	return &scrubbed{err: err, secrets: keep}
}

// scrubbed is the error Error returns. Its fields hold the secrets
// themselves, so every way of printing it goes through Error or Format.
type scrubbed struct {
	err     error
	secrets []string
}

func (e *scrubbed) Error() string {
	msg := e.err.Error()
	for _, s := range e.secrets {
		// A password can also appear percent-encoded, as it was in a URL.
		msg = maskAll(msg, s)
	}
	return msg
}

func (e *scrubbed) Unwrap() error { return e.err }

// Format prints the scrubbed message for every verb. Without it %#v would
// print the struct, secrets and all, and a wrapped error's own Format (such
// as a %+v with detail) could show what Error hides. %#v prints a
// Go-syntax-like form that holds only the scrubbed message; every other
// verb, with its flags, width and precision, formats the message as a
// string would (%q quotes it, %x writes it in hex).
func (e *scrubbed) Format(f fmt.State, verb rune) {
	msg := e.Error()
	if verb == 'v' && f.Flag('#') {
		fmt.Fprintf(f, "&redact.scrubbed{msg:%q}", msg)
		return
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), msg)
}
