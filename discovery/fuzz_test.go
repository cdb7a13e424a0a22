package discovery

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func FuzzRewrite(f *testing.F) {
	f.Add(false, "user", "pw", "db.example.com", "/app?sslmode=disable", "pg1.example.com.", uint16(5432), uint16(1), uint16(10), "pg2.example.com.", uint16(5433), uint16(2), uint16(0))
	f.Add(true, "us@er", "p/w?x", "svc.ns", "/db?sslmode=verify-full&application_name=a%20b", "::1", uint16(1), uint16(0), uint16(0), "127.0.0.1", uint16(2), uint16(0), uint16(0))
	f.Add(false, "", "", "db.example.com", "", "evil.com/x?", uint16(5432), uint16(0), uint16(0), "a@b", uint16(1), uint16(0), uint16(0))
	f.Add(true, "u", "p", "svc.ns", "?x=1", "h,i", uint16(0), uint16(0), uint16(0), ".", uint16(1), uint16(0), uint16(0))
	f.Add(false, "u", "p", "db.example.com:5432", "/db", "", uint16(1), uint16(0), uint16(0), "fe80::1%eth0", uint16(1), uint16(0), uint16(0))

	f.Fuzz(func(t *testing.T, aws bool, user, password, host, tail, t1 string, p1, pr1, w1 uint16, t2 string, p2, pr2, w2 uint16) {
		// The marker keeps the password from matching fixed error text.
		pw := "S3cr3t" + password
		userinfo := url.UserPassword(user, pw).String()
		scheme := "postgresql+srv"
		if aws {
			scheme = "aws+srv"
		}
		cs := scheme + "://" + userinfo + "@" + host + tail
		records := []Record{
			{Target: t1, Port: p1, Priority: pr1, Weight: w1},
			{Target: t2, Port: p2, Priority: pr2, Weight: w2},
		}

		out, err := Rewrite(cs, records)
		if err != nil {
			if !errors.Is(err, ErrInvalidURL) && !errors.Is(err, ErrNoRecords) && !errors.Is(err, ErrInvalidTarget) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			others := user + host + tail + t1 + t2
			for _, s := range []string{pw, url.QueryEscape(pw), url.PathEscape(pw)} {
				if !strings.Contains(others, s) && strings.Contains(err.Error(), s) {
					t.Fatalf("error holds the password: %v", err)
				}
			}
			return
		}

		prefix := "postgresql://" + userinfo + "@"
		if !strings.HasPrefix(out, prefix) {
			t.Fatalf("user information not kept: %q", out)
		}
		// Only when host and tail split where the URL splits can the
		// tail be compared as it was given.
		if !strings.ContainsAny(host, "/?") && (tail == "" || tail[0] == '/' || tail[0] == '?') {
			if !strings.HasSuffix(out, tail) {
				t.Fatalf("tail not kept: %q", out)
			}
			hosts := strings.TrimSuffix(strings.TrimPrefix(out, prefix), tail)
			if strings.ContainsAny(hosts, "@/?#%\\ ") {
				t.Fatalf("URL syntax in the host list: %q", hosts)
			}
		}

		ph, err := Placeholder(cs)
		if err != nil {
			t.Fatalf("Rewrite accepted what Placeholder refused: %v", err)
		}
		want, err := pgconn.ParseConfig(ph)
		if err != nil {
			return
		}
		got, err := pgconn.ParseConfig(out)
		if err != nil {
			return
		}
		if got.User != want.User || got.Password != want.Password || got.Database != want.Database {
			t.Fatalf("credentials or database changed: %q -> %q", ph, out)
		}
	})
}

func FuzzSRVName(f *testing.F) {
	for _, s := range []string{
		"postgresql+srv://user:S3cr3tpass@name.example.com/db?sslmode=disable",
		"aws+srv://u:p%40ss1@svc.ns/db",
		"postgresql+srv://u:pa/ss1@name.example.com/db",
		"postgresql+srv://u:p@ss1@name.example.com/db",
		"postgresql+srv://name.example.com:5432",
		"POSTGRESQL+SRV://a.b,c.d/db",
		"aws+srv://[::1]/db",
		"postgres://u:p@h/db",
		"host=h password=x",
		"",
	} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, cs string) {
		srv := IsSRV(cs)
		name, nerr := SRVName(cs)
		ph, perr := Placeholder(cs)
		_, serr := NewSource(cs, failIfCalled(t))

		if !srv {
			if ph != cs || perr != nil || serr != nil {
				t.Fatalf("plain string changed: %q -> %q, %v, %v", cs, ph, perr, serr)
			}
			if !errors.Is(nerr, ErrInvalidURL) {
				t.Fatalf("SRVName of a plain string: %q, %v", name, nerr)
			}
			return
		}
		if (nerr == nil) != (perr == nil) || (nerr == nil) != (serr == nil) {
			t.Fatalf("SRVName, Placeholder and NewSource disagree: %v / %v / %v", nerr, perr, serr)
		}
		if nerr != nil {
			if !errors.Is(nerr, ErrInvalidURL) {
				t.Fatalf("error without ErrInvalidURL: %v", nerr)
			}
			checkNoPassword(t, cs, nerr)
			return
		}
		if !validHostname(strings.TrimSuffix(name, ".")) {
			t.Fatalf("invalid SRV name %q", name)
		}
		if !strings.HasPrefix(ph, "postgresql://") {
			t.Fatalf("placeholder %q", ph)
		}
	})
}

// checkNoPassword fails t when err holds the password of cs, found the way
// pgx finds it. Short passwords, and passwords that also appear outside the
// user information, are skipped as they match by chance.
func checkNoPassword(t *testing.T, cs string, err error) {
	t.Helper()
	_, rest, _ := strings.Cut(cs, "://")
	i := strings.IndexAny(rest, "@/")
	if i < 0 || rest[i] != '@' {
		return
	}
	user, pw, ok := strings.Cut(rest[:i], ":")
	if !ok || len(pw) < 4 || !strings.ContainsAny(pw, "0123456789") {
		return
	}
	outside := user + rest[i:]
	candidates := []string{pw}
	if dec, derr := url.PathUnescape(pw); derr == nil && len(dec) >= 4 {
		candidates = append(candidates, dec)
	}
	for _, s := range candidates {
		if !strings.Contains(outside, s) && strings.Contains(err.Error(), s) {
			t.Fatalf("error holds the password %q: %v", s, err)
		}
	}
}
