// Fuzz targets for configuration loading and printing. .ci/run runs each
// one briefly (20,000 executions) after the tests, as in:
//
//	go test -run '^$' -fuzz '^FuzzLoadConfig$' -fuzztime 20000x .
//	go test -run '^$' -fuzz '^FuzzConfigString$' -fuzztime 20000x .
//
// A failing input the fuzzer finds is written to testdata/fuzz/<target>/
// and from then on runs as a seed in every plain `go test`.

package sprocketspg

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/caarlos0/env/v10"
	"go.uber.org/zap/zapcore"

	"github.com/sprockets/sprocketspg/internal/redact"
)

// fuzzURL builds a connection string holding password the way a person
// would type it, and returns it with the same string without the password
// (what may legitimately appear in output).
func fuzzURL(shape uint8, scheme, password, rest string) (withPw, withoutPw string) {
	build := func(pw string) string {
		switch shape % 4 {
		case 0: // typed URL
			return scheme + "://app:" + pw + "@" + rest
		case 1: // well-formed URL, password percent-encoded
			host, path, _ := strings.Cut(rest, "/")
			u := url.URL{Scheme: scheme, User: url.UserPassword("app", pw), Host: host, Path: "/" + path}
			return u.String()
		case 2: // password in the query string (a '?' or '#' before it would move it out of the query)
			rest := strings.NewReplacer("?", "", "#", "").Replace(rest)
			return scheme + "://app@" + rest + "?password=" + url.QueryEscape(pw)
		default: // libpq keyword/value
			q := strings.ReplaceAll(strings.ReplaceAll(pw, `\`, `\\`), `'`, `\'`)
			return "host=" + rest + " user=app password='" + q + "' dbname=app"
		}
	}
	return build(password), build("")
}

// restForms returns the connection string without its password in every
// form an output may show it: raw, quoted, JSON-encoded ("\u0000" holds
// "0000") and percent-decoded.
func restForms(withoutPw string) []string {
	rest := []string{withoutPw, strconv.Quote(withoutPw)}
	if js, err := json.Marshal(withoutPw); err == nil {
		rest = append(rest, string(js))
	}
	if u, err := url.QueryUnescape(withoutPw); err == nil {
		rest = append(rest, u)
	}
	if u, err := url.PathUnescape(withoutPw); err == nil {
		rest = append(rest, u)
	}
	return rest
}

// inAny reports whether s occurs in any of texts.
func inAny(texts []string, s string) bool {
	for _, t := range texts {
		if strings.Contains(t, s) {
			return true
		}
	}
	return false
}

// checkablePassword reports whether the absence of pw from some output
// proves it was hidden: pw is long enough not to occur by chance, cannot
// be formed by the mask next to other text, is not cut short by the URL
// syntax ('/', '?', '#' end the user info of a typed URL), and does not
// occur in the rest of the connection string (see restForms).
func checkablePassword(pw string, rest []string) bool {
	if len(pw) < 4 || strings.Contains(pw, redact.Mask[:1]) || strings.ContainsAny(pw, "/?#") {
		return false
	}
	return !inAny(rest, pw)
}

// passwordForms are the ways pw can be written into text: as is, and
// percent- or JSON-escaped.
func passwordForms(pw string) []string {
	forms := []string{pw, url.QueryEscape(pw), url.PathEscape(pw), url.UserPassword("", pw).String()[1:]}
	if js, err := json.Marshal(pw); err == nil {
		forms = append(forms, strings.Trim(string(js), `"`))
	}
	out := forms[:0]
	seen := map[string]bool{}
	for _, f := range forms {
		if len(f) >= 4 && !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	return out
}

func FuzzLoadConfig(f *testing.F) {
	// shape, scheme, password, rest of URL, max, min, connection timeout,
	// query timeout, a boolean.
	f.Add(uint8(0), "postgresql", "hunter2-Secret", "db.example.com:5432/app", "10", "1", "10s", "60", "true")
	f.Add(uint8(0), "postgres", "secret", "host:notaport/db", "", "", "", "", "")
	f.Add(uint8(0), "postgres", "secret", "[::1/db", "5", "6", "1.5", "1500ms", "maybe")
	f.Add(uint8(0), "mysql", "secret", "h/db", "-1", "0", "-1s", "NaN", "2")
	f.Add(uint8(0), "", "secret", "h/db", "0", "-5", "Inf", "10x", "yes")
	f.Add(uint8(0), "postgresql+srv", "secret", "/db", "99999999999999999999", "1", "0", "0.0001", "off")
	f.Add(uint8(0), "aws+srv", "my secret", "svc.ns/db", "1e3", "1", "1e300", "-Inf", "ON")
	f.Add(uint8(0), "postgres", "hunter@2secret", "host:notaport/db", "2147483648", "1", "1h", "1ns", "t")
	f.Add(uint8(0), "postgres", "my secret", "h/db", "", "", "", "", "")
	f.Add(uint8(0), "postgres", "hunter@2secret", "host:notaport/db", "", "", "", "", "")
	f.Add(uint8(1), "postgresql", "p@ss w'rd", "h:1,h:2/db", "3", "3", "  5 ", "0x10", " y ")
	f.Add(uint8(2), "postgresql", "query-secret", "h/db", "1", "2", "5", "5", "1")
	f.Add(uint8(3), "", "kv secret'quote", "localhost", "1", "0", "5", "5", "no")
	f.Add(uint8(3), "", "kv-secret", "db application_name=http://svc", "", "", "", "", "")
	f.Add(uint8(3), "", "kv-secret", "db sslrootcert=file:///etc/ca.pem", "", "", "", "", "")
	f.Add(uint8(0), "", "no-scheme-secret", "h/db", "", "", "", "", "")
	f.Add(uint8(3), "", "kv-secret", "", "9223372036854775807", "-9223372036854775808", "9223372036", "9223372037", "F")
	// A password pgx's reading leaves empty (it ends at the first @) that
	// net/url's reading finds whole, quoted by pgx's keyword/value error.
	f.Add(uint8(0), "", "@000", " 0=", "", "", "", "0", "")
	f.Fuzz(func(t *testing.T, shape uint8, scheme, password, rest, maxPool, minPool, connTimeout, queryTimeout, boolean string) {
		raw, withoutPw := fuzzURL(shape, scheme, password, rest)
		vars := map[string]string{
			EnvURL:               raw,
			EnvMaxPoolSize:       maxPool,
			EnvMinPoolSize:       minPool,
			EnvConnectionTimeout: connTimeout,
			EnvConnectionTTL:     connTimeout,
			EnvQueryTimeout:      queryTimeout,
			EnvHStore:            boolean,
			EnvLogQueries:        boolean,
			EnvSlowQuery:         queryTimeout,
			EnvQueryExecMode:     boolean,
		}
		// env treats a variable set to "" as unset; keep it that way.
		for k, v := range vars {
			if v == "" {
				delete(vars, k)
			}
		}
		cfg, err := loadConfig(env.Options{Environment: vars})
		stage := "loadConfig"
		if err == nil {
			stage = "Validate"
			err = cfg.Validate()
		}
		if err == nil {
			stage = "newPool"
			_, err = newPool(cfg) // no I/O
		}
		if err == nil {
			return
		}
		text := err.Error()
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: error does not match ErrInvalidConfig: %v", stage, text)
		}
		if !strings.Contains(text, "POSTGRES_") {
			t.Errorf("%s: error names no variable: %v", stage, text)
		}
		if others := restForms(withoutPw); checkablePassword(password, others) {
			for _, form := range passwordForms(password) {
				if !inAny(others, form) && strings.Contains(text, form) {
					t.Errorf("%s: error for URL %q shows the password as %q: %v", stage, raw, form, text)
				}
			}
		}
	})
}

func FuzzConfigString(f *testing.F) {
	f.Add(uint8(0), "postgresql", "hunter2-Secret", "db.example.com:5432/app")
	f.Add(uint8(0), "postgres", "secret", "host:notaport/db")
	f.Add(uint8(0), "postgres", "secret", "[::1/db")
	f.Add(uint8(0), "mysql", "secret", "h/db")
	f.Add(uint8(0), "postgresql+srv", "secret", "/db")
	f.Add(uint8(0), "postgres", "my secret", "h/db")
	f.Add(uint8(0), "postgres", "hunter@2secret", "host:notaport/db")
	f.Add(uint8(0), "postgres", `quote"<tag>&amp`, "h/db")
	f.Add(uint8(1), "postgresql", "p@ss w'rd", "h:1,h:2/db")
	f.Add(uint8(2), "postgresql", "query-secret", "h/db")
	f.Add(uint8(3), "", "kv secret'quote", "localhost")
	f.Add(uint8(3), "", "tab\tsecret\n", "h")
	f.Add(uint8(3), "", "kv-secret", "db application_name=http://svc")
	f.Add(uint8(0), "#", "hash-secret", "h/db")
	f.Fuzz(func(t *testing.T, shape uint8, scheme, password, rest string) {
		raw, withoutPw := fuzzURL(shape, scheme, password, rest)
		cfg := Config{URL: raw, MaxPoolSize: 10, MinPoolSize: 1}
		outputs := map[string]string{
			"%v":       fmt.Sprintf("%v", cfg),
			"%+v":      fmt.Sprintf("%+v", cfg),
			"%#v":      fmt.Sprintf("%#v", cfg),
			"%s":       fmt.Sprintf("%s", cfg), //nolint:gosimple // the verb is the point
			"%q":       fmt.Sprintf("%q", cfg),
			"ptr %+v":  fmt.Sprintf("%+v", &cfg),
			"String()": cfg.String(),
		}
		js, err := cfg.MarshalJSON()
		if err != nil {
			t.Fatalf("MarshalJSON: %v", err)
		}
		outputs["MarshalJSON"] = string(js)
		js, err = json.Marshal(struct{ Postgres Config }{cfg})
		if err != nil {
			t.Fatalf("json.Marshal: %v", err)
		}
		outputs["json.Marshal nested"] = string(js)
		enc := zapcore.NewMapObjectEncoder()
		if err := cfg.MarshalLogObject(enc); err != nil {
			t.Fatalf("MarshalLogObject: %v", err)
		}
		outputs["MarshalLogObject"] = fmt.Sprint(enc.Fields)

		others := restForms(withoutPw)
		if !checkablePassword(password, others) {
			return
		}
		for name, out := range outputs {
			for _, form := range passwordForms(password) {
				if !inAny(others, form) && strings.Contains(out, form) {
					t.Errorf("%s of Config{URL: %q} shows the password as %q: %s", name, raw, form, out)
				}
			}
		}
	})
}
