package redact

// Fuzz targets for ConnString, Password and Error. CI runs each for
// 20,000 executions:
//
//	go test -run '^$' -fuzz '^FuzzConnString$' -fuzztime 20000x ./internal/redact/
//	go test -run '^$' -fuzz '^FuzzError$' -fuzztime 20000x ./internal/redact/
//
// Inputs that failed are kept in testdata/fuzz/<target>/ and run by every
// plain `go test`.

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
)

// Connection-string shapes FuzzConnString builds from its parts.
const (
	shapeURL      = iota // url.URL{User: UserPassword(user, pw)}.String(): a well-formed URL
	shapeTyped           // "postgresql://" + user + ":" + pw + "@" + rest, as a person types it
	shapeKeyValue        // libpq keyword/value string with a quoted password
	shapeQuery           // password in the URL's query string
	shapeRaw             // rest alone, any text at all
	shapeCount
)

// build returns the connection string of the given shape holding pw, and
// the forms in which pw was written into it.
func build(shape int, scheme, user, pw, rest string) (conn string, written []string) {
	switch shape {
	case shapeURL:
		host, path, _ := strings.Cut(rest, "/")
		u := url.URL{Scheme: scheme, User: url.UserPassword(user, pw), Host: host, Path: "/" + path}
		conn = u.String()
		userinfo := url.UserPassword(user, pw).String()
		escUser := url.User(user).String()
		return conn, []string{pw, strings.TrimPrefix(userinfo, escUser+":")}
	case shapeTyped:
		return scheme + "://" + user + ":" + pw + "@" + rest, []string{pw}
	case shapeKeyValue:
		q := strings.ReplaceAll(pw, `\`, `\\`)
		q = strings.ReplaceAll(q, `'`, `\'`)
		return "host=" + rest + " user=" + user + " password='" + q + "' dbname=app", []string{pw, q}
	case shapeQuery:
		// A '?' or '#' before the query would make "password=" part of
		// the path or the fragment, where it is no password.
		rest = strings.NewReplacer("?", "", "#", "").Replace(rest)
		user = strings.NewReplacer("?", "", "#", "", "/", "").Replace(user)
		esc := url.QueryEscape(pw)
		return scheme + "://" + user + "@" + rest + "?sslmode=disable&password=" + esc, []string{pw, esc}
	default:
		return rest, nil
	}
}

// typable reports whether a part of a typed URL can stand where it is put:
// a user name and password typed into a URL end at '/', '?' or '#' (after
// them the text is no longer the user info, so it is not a password).
func typable(s string) bool {
	return !strings.ContainsAny(s, "/?#")
}

// unescapes returns s with its percent-encoding undone in every way a URL
// encoder may undo it, so a check can tell whether text came from the
// non-secret part of the string.
func unescapes(s string) []string {
	out := []string{s}
	if u, err := url.QueryUnescape(s); err == nil {
		out = append(out, u)
	}
	if u, err := url.PathUnescape(s); err == nil {
		out = append(out, u)
	}
	return out
}

// secretCheckable reports whether the absence of secret from an output
// proves something: it is long enough not to occur by chance, it cannot be
// formed by the mask next to other text, and it does not occur in the
// non-secret part of the input (or that part's decoded forms).
func secretCheckable(secret string, rest []string) bool {
	if len(secret) < 4 || strings.Contains(secret, Mask[:1]) {
		return false
	}
	for _, r := range rest {
		for _, u := range unescapes(r) {
			if strings.Contains(u, secret) {
				return false
			}
		}
	}
	return true
}

var connStringSeeds = []string{
	"",
	"postgres://u:pw@h:5432/db",
	"postgresql://u:@h/db",
	"postgresql://u:p%40ss@h1:1,h2:2/db?sslmode=require",
	"postgresql://h/db?password=pw&sslmode=disable",
	"postgresql://h/db?sslpassword=pw",
	"postgresql+srv://u:pw@name.example.com/db",
	"aws+srv://u:pw@svc.ns/db",
	"host=h password=pw dbname=d",
	"host=h password = pw dbname=d",
	`host=h password='p w\'x' dbname=d`,
	"postgres://u:secret@host:notaport/db",
	"postgres://u:secret@[::1/db",
	"mysql://u:secret@h/db",
	"://",
	"postgresql+srv://u:secret@/db",
	" ",
	"postgres://u:my secret@host/db",
	"postgres://u:hunter@2secret@host:notaport/db",
	"postgres://u:secret@host/db?password=other-secret",
	"postgres://%zz:secret@h/db",
	"postgres://u:sec%zzret@h/db",
	"postgres://u:secret\n@h/db",
	"postgres://u:secret@h/db#frag",
	"u:secret@h:5432/db",
	"//u:secret@h/db",
	"#://u:secret@h/db",
	"host=db user=app password=secret application_name=http://svc",
	"host=db password='my secret' sslrootcert=file:///etc/ca.pem",
}

func FuzzConnString(f *testing.F) {
	for _, s := range connStringSeeds {
		f.Add(uint8(shapeRaw), "postgresql", "u", "", s)
	}
	for shape := range shapeCount {
		f.Add(uint8(shape), "postgresql", "app", "hunter2-Secret", "db.example.com:5432/app")
		f.Add(uint8(shape), "postgres", "app", "p@ss w'rd\\%20", "h:notaport/app")
		f.Add(uint8(shape), "postgresql+srv", "app", "my secret", "[::1/db")
		f.Add(uint8(shape), "aws+srv", "a:b", "colon:inside", "h1:1,h2:2/db?sslmode=require")
		f.Add(uint8(shape), "mysql", "", "tab\tsecret", " ")
	}
	f.Add(uint8(shapeTyped), "postgres", "u", "hunter@2secret", "host:notaport/db")
	f.Add(uint8(shapeTyped), "postgres", "u", "secret", "host:notaport/db?password=my secretword")
	f.Fuzz(func(t *testing.T, shapeByte uint8, scheme, user, pw, rest string) {
		shape := int(shapeByte) % shapeCount
		if shape == shapeTyped && (!typable(user) || !typable(pw) || strings.Contains(user, "@")) {
			shape = shapeRaw
		}
		conn, written := build(shape, scheme, user, pw, rest)
		out := ConnString(conn) // must not panic
		_ = Password(conn)      // must not panic

		// The same string without the password: what may legitimately
		// show up in the output.
		withoutPw, _ := build(shape, scheme, user, "", rest)
		if shape == shapeTyped {
			// Typed into a URL, a password may hold '@' (the user info ends
			// at the last one); no piece of it may show either.
			for _, piece := range strings.Split(pw, "@") {
				written = append(written, strings.TrimSpace(piece))
			}
		}
		seen := map[string]bool{}
		for _, secret := range written {
			if seen[secret] {
				continue
			}
			seen[secret] = true
			if secretCheckable(secret, []string{withoutPw}) && strings.Contains(out, secret) {
				t.Errorf("ConnString(%q) = %q shows the password %q", conn, out, secret)
			}
		}

		// Whatever Password finds is a secret ConnString must hide.
		if p := Password(conn); p != "" {
			stripped := strings.Replace(conn, p, "", 1)
			if secretCheckable(p, []string{stripped}) && strings.Contains(out, p) {
				t.Errorf("ConnString(%q) = %q shows its password %q", conn, out, p)
			}
		}
	})
}

func FuzzError(f *testing.F) {
	f.Add("dial postgres://u:", "@h/db failed, pw ", "hunter 22", "")
	f.Add("", "", "p@ss/w?rd#", "other")
	f.Add("connect: ", " refused", "sekrit", "sekrit-longer")
	f.Add("%%", "%25", "%", "+")
	f.Add("\xff", "\x00", "\xfe\xff", "a b")
	f.Fuzz(func(t *testing.T, a, b, secret, secret2 string) {
		msg := a + secret + b + url.QueryEscape(secret) + a + url.PathEscape(secret) + b + secret2
		base := errors.New(msg)
		wrapped := fmt.Errorf("wrapped: %w", base)
		err := Error(wrapped, secret, "", secret2)
		if secret == "" && secret2 == "" {
			if err != wrapped { //nolint:errorlint // identity is the point
				t.Fatalf("Error without secrets returned %v, want the error itself", err)
			}
			return
		}
		if !errors.Is(err, base) {
			t.Fatalf("errors.Is(Error(...), base) = false")
		}
		text := err.Error() // must not panic
		// Every printing verb shows that text and nothing more.
		for _, verb := range []string{"%v", "%+v", "%s"} {
			if got := fmt.Sprintf(verb, err); got != text {
				t.Errorf("Sprintf(%q) = %q, want Error() %q", verb, got, text)
			}
		}
		if got, want := fmt.Sprintf("%#v", err), fmt.Sprintf("&redact.scrubbed{msg:%q}", text); got != want {
			t.Errorf("Sprintf(%%#v) = %q, want %q", got, want)
		}
		for _, s := range []string{secret, secret2} {
			// ReplaceAll leaves no occurrence except one formed across the
			// mask, which needs the mask's character in the secret.
			if s == "" || strings.Contains(s, Mask[:1]) {
				continue
			}
			for _, form := range []string{s, url.QueryEscape(s), url.PathEscape(s)} {
				if strings.Contains(text, form) {
					t.Errorf("Error(%q, %q, %q).Error() = %q contains %q", msg, secret, secret2, text, form)
				}
			}
		}
		if Error(nil, secret) != nil {
			t.Errorf("Error(nil) != nil")
		}
	})
}
