package sprocketspg_test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// This file holds the check that no password, token or private key
// reaches a log line or an error: a test that handles one hands its
// logger (watchSecrets, newSecretLog) to the pool and passes the errors it
// gets to requireNoSecret.

// minSecretLen is the shortest secret the helpers accept: a shorter one
// (above all "") would be found in text that holds no secret at all.
const minSecretLen = 8

// secretLog records every entry of its logger, at debug level and up, and
// fails its test at the test's end when any of them shows any of its
// secrets: in the message, the logger's name, the stack, or a field
// (those of With included), rendered as fmt and as zap's JSON encoder
// write them, in any of the forms of secretForms.
type secretLog struct {
	tb     testing.TB
	logs   *observer.ObservedLogs
	logger *zap.Logger

	mu      sync.Mutex
	secrets []string
}

// watchSecrets returns a logger for a test that handles secrets; see
// secretLog.
func watchSecrets(tb testing.TB, secrets ...string) *zap.Logger {
	tb.Helper()
	return newSecretLog(tb, secrets...).logger
}

// newSecretLog is watchSecrets for a test that learns secrets as it goes
// (tokens a provider makes, keys that rotate): add them with add. Entries
// are also written to the test's log. The check runs in a cleanup
// registered now, so after those registered later, such as a pool's
// Close: what the pool logs while it stops is checked too.
func newSecretLog(tb testing.TB, secrets ...string) *secretLog {
	tb.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	l := &secretLog{tb: tb, logs: logs}
	l.add(secrets...)
	l.logger = zap.New(zapcore.NewTee(core, zaptest.NewLogger(tb, zaptest.Level(zap.DebugLevel)).Core()))
	tb.Cleanup(l.check)
	return l
}

// add adds secrets to those no entry may show. It is safe for concurrent
// use, as from a credentials provider the pool calls.
func (l *secretLog) add(secrets ...string) {
	l.tb.Helper()
	needles := secretNeedles(l.tb, secrets)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.secrets = append(l.secrets, needles...)
}

// all returns the secrets added so far.
func (l *secretLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.secrets...)
}

// entries returns how many entries were logged so far, for a test to check
// that the logger is the one the pool uses.
func (l *secretLog) entries() int { return l.logs.Len() }

// noSecretIn is requireNoSecret with every secret added so far.
func (l *secretLog) noSecretIn(err error) {
	l.tb.Helper()
	requireNoSecret(l.tb, err, l.all()...)
}

// check fails the test for every entry that shows a secret.
func (l *secretLog) check() {
	l.tb.Helper()
	secrets := l.all()
	for i, e := range l.logs.All() {
		for how, text := range renderEntry(e) {
			for _, s := range secrets {
				if form, ok := containsSecret(text, s); ok {
					l.tb.Errorf("log entry %d %q, rendered %s, shows a secret (as %q):\n%s", i, e.Message, how, form, text)
				}
			}
		}
	}
}

// renderEntry writes e as fmt and as zap's JSON encoder do.
func renderEntry(e observer.LoggedEntry) map[string]string {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range e.Context {
		f.AddTo(enc)
	}
	head := fmt.Sprintf("%s %s %s %s", e.Level, e.LoggerName, e.Message, e.Stack)
	out := map[string]string{
		"with %v":  fmt.Sprintf("%s %v", head, enc.Fields),
		"with %+v": fmt.Sprintf("%s %+v", head, enc.Fields),
	}
	cfg := zap.NewDevelopmentEncoderConfig()
	cfg.NameKey, cfg.StacktraceKey = "logger", "stack"
	if buf, err := zapcore.NewJSONEncoder(cfg).EncodeEntry(e.Entry, e.Context); err == nil {
		out["as JSON"] = buf.String()
		buf.Free()
	} else {
		out["as JSON"] = "cannot encode: " + err.Error()
	}
	return out
}

// requireNoSecret fails the test at once when err, printed with %v, %+v,
// %#v or %s, or any error it wraps printed with %v or %#v (errors.As hands
// those to callers), shows any of secrets in any form of secretForms. A
// nil err passes.
func requireNoSecret(tb testing.TB, err error, secrets ...string) {
	tb.Helper()
	if err == nil {
		return
	}
	needles := secretNeedles(tb, secrets)
	texts := map[string]string{}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		texts["the error with "+verb] = fmt.Sprintf(verb, err)
	}
	for i, e := range errorTree(err) {
		texts[fmt.Sprintf("wrapped error %d (%T) with %%v", i, e)] = fmt.Sprintf("%v", e)
		texts[fmt.Sprintf("wrapped error %d (%T) with %%#v", i, e)] = fmt.Sprintf("%#v", e)
	}
	failed := false
	for how, text := range texts {
		for _, s := range needles {
			if form, ok := containsSecret(text, s); ok {
				tb.Errorf("%s shows a secret (as %q):\n%s", how, form, text)
				failed = true
			}
		}
	}
	if failed {
		tb.FailNow()
	}
}

// errorTree returns err and every error it wraps, depth first.
func errorTree(err error) []error {
	var out []error
	var walk func(error)
	walk = func(e error) {
		if e == nil || len(out) > 200 {
			return
		}
		out = append(out, e)
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, inner := range u.Unwrap() {
				walk(inner)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}

// secretNeedles returns what to look for of secrets: each one, and for one
// of several lines (a PEM key) each line of its body, since an encoder may
// escape the line breaks between them. It fails tb for a secret too short
// to look for.
func secretNeedles(tb testing.TB, secrets []string) []string {
	tb.Helper()
	var out []string
	for _, s := range secrets {
		if len(s) < minSecretLen {
			tb.Fatalf("secret %q is shorter than %d bytes: it would be found where it is not", s, minSecretLen)
		}
		if !strings.Contains(s, "\n") {
			out = append(out, s)
			continue
		}
		for _, line := range strings.Split(s, "\n") {
			line = strings.TrimSpace(line)
			if len(line) >= 16 && !strings.HasPrefix(line, "-----") {
				out = append(out, line)
			}
		}
	}
	return out
}

// containsSecret reports whether text holds secret in one of its forms
// (secretForms), and which.
func containsSecret(text, secret string) (string, bool) {
	for _, form := range secretForms(secret) {
		if strings.Contains(text, form) {
			return form, true
		}
	}
	return "", false
}

// newSecret returns a fresh random secret that starts with prefix.
func newSecret(t testing.TB, prefix string) string {
	t.Helper()
	var b [9]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	return prefix + "-" + hex.EncodeToString(b[:])
}

// recordingTB is a testing.TB whose failures and cleanups are recorded
// instead of acted on, to test the helpers above.
type recordingTB struct {
	testing.TB

	mu       sync.Mutex
	failures []string
	fatal    bool
	cleanups []func()
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures = append(r.failures, fmt.Sprintf(format, args...))
}

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	r.fatal = true
}

func (r *recordingTB) FailNow() { r.fatal = true }

func (r *recordingTB) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }

// finish runs the cleanups, last first, as testing does, and returns the
// failures.
func (r *recordingTB) finish() []string {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	r.cleanups = nil
	return r.failures
}

// secretFormatter shows its secret under %+v alone, as an error type with
// a verbose form might.
type secretFormatter struct{ secret string }

func (e secretFormatter) Error() string { return "something failed" }

func (e secretFormatter) Format(s fmt.State, verb rune) {
	if verb == 'v' && s.Flag('+') {
		_, _ = fmt.Fprintf(s, "something failed with %s", e.secret)
		return
	}
	_, _ = fmt.Fprint(s, e.Error())
}

// secretField holds its secret in a field that only %#v prints.
type secretField struct{ token string }

func (e *secretField) Error() string { return "the token was refused" }

// The helpers must find a secret wherever a careless change would put it,
// or the suite's checks would pass for the wrong reason.
func TestSecretHelpersFindLeaks(t *testing.T) {
	const secret = `tok-"quoted"\and-ü-secret`
	pemKey := "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\nsecondLineOfTheKeyBodyAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n"
	keyLine := "secondLineOfTheKeyBodyAAAAAAAAAAAAAAA"

	leaks := map[string]func(*zap.Logger){
		"message":         func(l *zap.Logger) { l.Debug("token is " + secret) },
		"string field":    func(l *zap.Logger) { l.Info("login", zap.String("password", secret)) },
		"field of With":   func(l *zap.Logger) { l.With(zap.String("token", secret)).Warn("login") },
		"error field":     func(l *zap.Logger) { l.Error("failed", zap.Error(fmt.Errorf("wrap: %s", secret))) },
		"verbose error":   func(l *zap.Logger) { l.Error("failed", zap.Error(secretFormatter{secret})) },
		"reflected value": func(l *zap.Logger) { l.Info("cfg", zap.Any("cfg", struct{ Password string }{secret})) },
		"stringer":        func(l *zap.Logger) { l.Info("x", zap.Stringer("s", secretField{secret}.asStringer())) },
		"escaped in JSON": func(l *zap.Logger) { l.Info("x", zap.Strings("list", []string{secret})) },
		"key line":        func(l *zap.Logger) { l.Info("key", zap.String("pem", pemKey)) },
		"logger name":     func(l *zap.Logger) { l.Named(secret).Info("x") },
		"added later":     func(l *zap.Logger) { l.Info("late-secret-value-123") },
	}
	for name, log := range leaks {
		t.Run(name, func(t *testing.T) {
			rec := &recordingTB{TB: t}
			sl := newSecretLog(rec, secret, pemKey)
			sl.add("late-secret-value-123")
			log(sl.logger)
			assert.NotEmpty(t, rec.finish(), "the leak is found")
		})
	}
	t.Run("clean logs pass", func(t *testing.T) {
		rec := &recordingTB{TB: t}
		l := watchSecrets(rec, secret, pemKey)
		l.With(zap.String("user", "app")).Info("connected", zap.Error(errors.New("no secret here")))
		assert.Empty(t, rec.finish())
	})
	t.Run("key line in an error", func(t *testing.T) {
		rec := &recordingTB{TB: t}
		requireNoSecret(rec, fmt.Errorf("read key: %q", keyLine), pemKey)
		assert.True(t, rec.fatal)
	})

	for name, err := range map[string]error{
		"%v":                    fmt.Errorf("login failed: %s", secret),
		"%+v only":              fmt.Errorf("outer: %w", secretFormatter{secret}),
		"a wrapped error's %#v": fmt.Errorf("outer: %w", &secretField{secret}),
		"a joined error":        errors.Join(errors.New("one"), &secretField{secret}),
		"quoted":                fmt.Errorf("bad token %q", secret),
	} {
		t.Run("error "+name, func(t *testing.T) {
			rec := &recordingTB{TB: t}
			requireNoSecret(rec, err, secret)
			assert.True(t, rec.fatal, "the leak is found")
		})
	}
	t.Run("clean error passes", func(t *testing.T) {
		rec := &recordingTB{TB: t}
		requireNoSecret(rec, fmt.Errorf("outer: %w", secretFormatter{"elsewhere"}), secret)
		requireNoSecret(rec, nil, secret)
		assert.False(t, rec.fatal)
		assert.Empty(t, rec.finish())
	})
	t.Run("short secrets are refused", func(t *testing.T) {
		rec := &recordingTB{TB: t}
		requireNoSecret(rec, errors.New("x"), "")
		assert.True(t, rec.fatal)
	})
}

// asStringer makes a fmt.Stringer that shows the token.
func (e secretField) asStringer() fmt.Stringer { return tokenStringer(e.token) }

type tokenStringer string

func (s tokenStringer) String() string { return "token " + string(s) }
