package sprocketspg_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
)

// The passwords of these tests hold characters that percent-encoding,
// %q, encoding/json and zap each write differently, so that a leak is
// found in whichever form it takes.
const (
	printPassword      = `Pr1nt-Me"<&>@/:%?#+\ü-s3cr3t`
	printWrongPassword = `Wr0ng-Pa55"<&>@/:%?#+\ü-xyzzy`
)

// printFragments are parts of the passwords that nothing else prints, to
// catch a password shown in part, or encoded in a way secretForms does
// not know.
var printFragments = []string{"Pr1nt-Me", "s3cr3t", "Wr0ng-Pa55", "xyzzy"}

// printVerbs are the fmt directives every value is printed with.
var printVerbs = []string{"%v", "%+v", "%#v", "%s", "%q", "%+q", "%#q", "%x", "%X", "% x", "%T", "%d", "%.300s", "%-20v|"}

// secretForms returns the forms in which secret could show up in text:
// as it is and percent-encoded in each way net/url does it, each of them
// as written by %q, encoding/json and zap, and in hex.
func secretForms(secret string) []string {
	encodings := []string{
		secret,
		url.QueryEscape(secret),
		url.PathEscape(secret),
		strings.TrimPrefix(url.UserPassword("u", secret).String(), "u:"),
	}
	var forms []string
	for _, s := range encodings {
		forms = append(forms,
			s,
			inner(strconv.Quote(s)),
			inner(strconv.QuoteToASCII(s)),
			inner(jsonString(s, true)),
			inner(jsonString(s, false)), // as zap's JSON encoder writes it
			hex.EncodeToString([]byte(s)),
			strings.ToUpper(hex.EncodeToString([]byte(s))),
			fmt.Sprintf("% x", s),
		)
	}
	return forms
}

// inner strips the quotes around a quoted string.
func inner(quoted string) string { return quoted[1 : len(quoted)-1] }

// jsonString encodes s as encoding/json does, with or without its
// escaping of <, > and &.
func jsonString(s string, escapeHTML bool) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(escapeHTML)
	_ = enc.Encode(s)
	return strings.TrimSuffix(buf.String(), "\n")
}

// leaks returns each form of the passwords, or fragment of them, that out
// contains.
func leaks(out string) []string {
	var found []string
	for _, secret := range []string{printPassword, printWrongPassword} {
		for _, form := range secretForms(secret) {
			if strings.Contains(out, form) {
				found = append(found, form)
			}
		}
	}
	for _, frag := range printFragments {
		for _, form := range []string{frag, hex.EncodeToString([]byte(frag)), strings.ToUpper(hex.EncodeToString([]byte(frag)))} {
			if strings.Contains(out, form) {
				found = append(found, form)
			}
		}
	}
	return found
}

// renderings prints v in every way this module promises to keep safe:
// each fmt verb, on its own and nested in a slice and a struct (where fmt
// reaches it at depth), encoding/json, and zap's JSON encoder through
// every field constructor that applies to v.
func renderings(v any) map[string]string {
	out := map[string]string{}
	for _, verb := range printVerbs {
		out[verb] = fmt.Sprintf(verb, v)
	}
	for _, verb := range []string{"%v", "%+v", "%#v"} {
		out["[]any "+verb] = fmt.Sprintf(verb, []any{v})
		out["struct "+verb] = fmt.Sprintf(verb, struct{ V any }{v})
	}
	out["Sprint"] = fmt.Sprint(v)
	out["Sprintln"] = fmt.Sprintln(v)
	if js, err := json.Marshal(v); err == nil {
		out["json"] = string(js)
	} else {
		out["json error"] = err.Error()
	}
	if js, err := json.Marshal(struct{ V any }{v}); err == nil {
		out["json struct"] = string(js)
	}

	fields := map[string]zap.Field{
		"zap.Any":     zap.Any("v", v),
		"zap.Reflect": zap.Reflect("v", v),
	}
	if err, ok := v.(error); ok {
		fields["zap.Error"] = zap.Error(err)
		fields["zap.Errors"] = zap.Errors("v", []error{err})
	}
	if m, ok := v.(zapcore.ObjectMarshaler); ok {
		fields["zap.Object"] = zap.Object("v", m)
	}
	if s, ok := v.(fmt.Stringer); ok {
		fields["zap.Stringer"] = zap.Stringer("v", s)
	}
	for name, field := range fields {
		var buf bytes.Buffer
		core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&buf), zapcore.DebugLevel)
		zap.New(core).Info("printing", field)
		out[name] = buf.String()
	}
	return out
}

// assertNoPassword checks that no rendering of v shows a password, and
// that v printed as something: an empty rendering would pass for the
// wrong reason.
func assertNoPassword(t *testing.T, name string, v any) map[string]string {
	t.Helper()
	out := renderings(v)
	for how, text := range out {
		if found := leaks(text); len(found) > 0 {
			t.Errorf("%s printed with %s shows the password as %q:\n%s", name, how, found, text)
		}
		if strings.TrimSpace(text) == "" {
			t.Errorf("%s printed with %s is empty", name, how)
		}
	}
	return out
}

// assertErrorsNoPassword checks err and the forms callers wrap it in.
func assertErrorsNoPassword(t *testing.T, name string, err error) {
	t.Helper()
	require.Error(t, err, name)
	assertNoPassword(t, name, err)
	assertNoPassword(t, name+" wrapped", fmt.Errorf("handler: %w", err))
	assertNoPassword(t, name+" joined", errors.Join(errors.New("other"), err))
	assertNoPassword(t, name+" wrapped join", fmt.Errorf("outer: %w", errors.Join(err, fmt.Errorf("inner: %w", err))))
}

// lockedBuffer is a log sink for loggers used from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Sync() error { return nil }

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// createPasswordRole creates a login role with password on the server of
// adminURL, dropped when t ends, and returns its name.
func createPasswordRole(t *testing.T, adminURL, password string) string {
	t.Helper()
	ctx := ctxT(t)
	admin := adminConn(t, adminURL)
	var b [6]byte
	_, _ = rand.Read(b[:])
	role := "print_role_" + hex.EncodeToString(b[:])
	// SCRAM, whatever the server's default, so that a pg_hba.conf line
	// asking for scram-sha-256 can check it.
	_, err := admin.Exec(ctx, "SET password_encryption = 'scram-sha-256'")
	require.NoError(t, err)
	// CREATE ROLE takes no parameters; the literal is quoted by hand
	// (standard_conforming_strings is on, so only ' needs doubling).
	_, err = admin.Exec(ctx, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+
		" LOGIN PASSWORD '"+strings.ReplaceAll(password, "'", "''")+"'")
	require.NoError(t, err)
	// Registered after the admin connection's close, so it runs before it,
	// and after the pools of the test have closed.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := admin.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{role}.Sanitize())
		assert.NoError(t, err)
	})
	return role
}

// withUser returns dbURL with its user and password replaced.
func withUser(t *testing.T, dbURL, user, password string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	u.User = url.UserPassword(user, password)
	return u.String()
}

// printConfig is a Config for the tests of this file, with a connection
// timeout short enough for the starts that are meant to fail.
func printConfig(url string) sprocketspg.Config {
	cfg := testConfig(url)
	cfg.ConnectionTimeout = 2 * time.Second
	return cfg
}

func TestPrintingSearchFindsPassword(t *testing.T) {
	// Every rendering of values that do hold the password must be caught,
	// or the tests below would pass by looking in the wrong place.
	rawURL := withUser(t, "postgresql://127.0.0.1:5432/db", "app", printPassword)
	require.NotContains(t, rawURL, printPassword, "the password needs encoding in a URL")
	require.NotEmpty(t, leaks(rawURL))
	require.NotEmpty(t, leaks("password="+printWrongPassword))
	for _, frag := range printFragments {
		require.NotEmpty(t, leaks("a "+frag+" b"), frag)
	}

	type leakyConfig struct{ URL string }
	for name, v := range map[string]any{
		"URL":           rawURL,
		"password":      printPassword,
		"struct":        leakyConfig{URL: rawURL},
		"error":         errors.New("connect with " + printWrongPassword + " failed"),
		"wrapped error": fmt.Errorf("x: %w", errors.New(printPassword)),
		"joined error":  errors.Join(errors.New(printPassword)),
		"URL in error":  fmt.Errorf("dial %s: refused", rawURL),
	} {
		_, isErr := v.(error)
		for how, text := range renderings(v) {
			// %T shows the type alone. These errors keep their text in
			// unexported fields, which reflection encodes as {} and which
			// %#v (and %d, for the joined error's slice) shows at depth
			// only as addresses: nothing to find there.
			switch {
			case how == "%T",
				isErr && (strings.HasPrefix(how, "json") || how == "zap.Reflect" || strings.HasSuffix(how, " %#v")),
				name == "joined error" && (how == "%#v" || how == "%d"):
				continue
			}
			assert.NotEmpty(t, leaks(text), "%s printed with %s: the search misses the password in %s", name, how, text)
		}
	}

	// What printing *Pool showed before it had a Format of its own: fmt
	// goes one level into a pointer's struct and prints unexported fields.
	type leakyPool struct {
		cfg      leakyConfig
		password string
	}
	p := &leakyPool{cfg: leakyConfig{URL: rawURL}, password: printPassword}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x"} {
		assert.NotEmpty(t, leaks(fmt.Sprintf(verb, p)), "the search misses the fields of %s", verb)
	}
}

func TestPrintingNeverShowsPassword(t *testing.T) {
	// The shared server trusts every connection, so it never checks this
	// password; TestPrintingRejectedPasswordHidesBoth has one that does.
	ctx := ctxT(t)
	role := createPasswordRole(t, fxtest_helpers.Server(t).AdminURL(), printPassword)
	dbURL := withUser(t, fxtest_helpers.NewDatabase(t), role, printPassword)
	require.NotEmpty(t, leaks(dbURL), "the search finds the password in the URL")
	parsed, err := url.Parse(dbURL)
	require.NoError(t, err)
	pw, _ := parsed.User.Password()
	require.Equal(t, printPassword, pw, "the URL holds the password exactly")

	// The pool logs through a JSON encoder, which is searched too. The
	// read pool's watcher logs from its own goroutine.
	var logs lockedBuffer
	logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), &logs, zapcore.DebugLevel))
	cfg := printConfig(dbURL)
	cfg.ReadURL = dbURL
	pool, err := sprocketspg.New(ctx, cfg, sprocketspg.WithLogger(logger))
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	var user string
	require.NoError(t, pool.QueryRow(ctx, "SELECT current_user").Scan(&user))
	require.Equal(t, role, user, "the pool connected as the role with the password")
	require.Eventually(t, func() bool { return pool.Reader() != pool }, 10*time.Second, 10*time.Millisecond,
		"the read pool comes up")

	out := assertNoPassword(t, "started pool", pool)
	assert.Equal(t, pool.String(), out["%v"])
	assert.Contains(t, out["%v"], role, "the pool names its user")
	assert.Contains(t, out["%v"], "connected")
	assert.Contains(t, out["%+v"], role+":xxxxx@", "%+v shows the masked URL")
	assert.Contains(t, out["%+v"], "PoolSize:")
	assert.Contains(t, out["%#v"], "&sprocketspg.Pool{url:")
	assert.Equal(t, strconv.Quote(pool.String()), out["%q"])
	assert.Equal(t, hex.EncodeToString([]byte(pool.String())), out["%x"])
	var doc map[string]any
	require.NoError(t, json.Unmarshal([]byte(out["json"]), &doc))
	assert.Equal(t, true, doc["connected"])
	assert.Contains(t, doc["url"], role+":xxxxx@")
	assert.Contains(t, doc["read_url"], role+":xxxxx@")
	assert.Contains(t, doc, "pool_size")
	assert.Contains(t, out["zap.Any"], `"connected":true`)
	assert.Contains(t, out["zap.Object"], `"pool_size":`)

	out = assertNoPassword(t, "read pool", pool.Reader())
	assert.Contains(t, out["%v"], "read pool")

	status := pool.Status(ctx)
	require.True(t, status.Available, "status: %v", status)
	out = assertNoPassword(t, "status", status)
	assertNoPassword(t, "status pointer", &status)
	assert.Contains(t, out["%v"], "Available:true")
	assert.Contains(t, out["%#v"], "sprocketspg.Status{Available:true")
	assert.Contains(t, out["json"], `"available":true`)
	assert.Contains(t, out["zap.Object"], `"pool_size":`)

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	failed := pool.Status(cancelled)
	require.Error(t, failed.Err)
	out = assertNoPassword(t, "failed status", failed)
	assert.Contains(t, out["%#v"], "errors.New(", "%#v shows the error by its text")
	assert.Contains(t, out["json"], `"error":`)
	assertErrorsNoPassword(t, "status error", failed.Err)

	cfgOut := assertNoPassword(t, "config", pool.Config())
	assert.Contains(t, cfgOut["%v"], role+":xxxxx@")
	poolCfg := pool.Config()
	assertNoPassword(t, "config pointer", &poolCfg)

	_, err = pool.Execute(ctx, "SELECT * FROM print_no_such_table")
	assertErrorsNoPassword(t, "query error", err)
	var pgErr *pgconn.PgError
	assert.ErrorAs(t, err, &pgErr, "the error is still pgx's")
	_, err = pool.Callproc(sprocketspg.WithMetricName(ctx, "print-missing"), "print_no_such_function", 1)
	assertErrorsNoPassword(t, "callproc error", err)
	err = pool.Transaction(ctx, func(tx *sprocketspg.Tx) error {
		_, err := tx.Execute(ctx, "SELECT 1/0")
		return err
	})
	assertErrorsNoPassword(t, "transaction error", err)
	_, err = pool.Reader().Execute(ctx, "SELECT * FROM print_no_such_table")
	assertErrorsNoPassword(t, "read pool query error", err)

	checker := sprocketspg.NewChecker(pool, health.WithApplication("print-test"))
	report := checker.Check(ctx)
	require.Equal(t, health.StatusPass, report.Status, report.Error)
	require.NotNil(t, report.Replica, "the read pool is checked too")
	out = assertNoPassword(t, "checker", checker)
	assert.Contains(t, out["%v"], "Application:print-test")
	assert.Contains(t, out["%v"], "LastStatus:pass")
	assert.Contains(t, out["%#v"], "&health.Checker{")
	assert.Contains(t, out["json"], `"ready":true`)
	out = assertNoPassword(t, "report", report)
	assertNoPassword(t, "report pointer", &report)
	assert.Contains(t, out["%v"], "Replica:&{Status:pass", "the replica's report is shown, not its address")
	assert.Contains(t, out["%#v"], "Replica:&health.Report{")
	assert.Contains(t, out["zap.Object"], `"replica":{"status":"pass"`)

	// A pool that has stopped, and what it reports.
	stopped, err := sprocketspg.New(ctx, printConfig(dbURL))
	require.NoError(t, err)
	stopped.Close()
	out = assertNoPassword(t, "stopped pool", stopped)
	assert.Contains(t, out["%v"], "not connected")
	assertNoPassword(t, "stopped status", stopped.Status(ctx))
	stoppedChecker := sprocketspg.NewChecker(stopped)
	assertNoPassword(t, "stopped report", stoppedChecker.Check(ctx))
	assertNoPassword(t, "stopped checker", stoppedChecker)
	_, err = stopped.Execute(ctx, "SELECT 1")
	assertErrorsNoPassword(t, "stopped pool error", err)

	var nilPool *sprocketspg.Pool
	assert.Equal(t, "<nil>", fmt.Sprint(nilPool))
	assert.Equal(t, "(*sprocketspg.Pool)(nil)", fmt.Sprintf("%#v", nilPool))

	// Last, so that it holds everything the pools logged.
	pool.Close()
	assert.Empty(t, leaks(logs.String()), "the pool's logs show the password")
	assert.Contains(t, logs.String(), "connected to postgres")
}

func TestPrintingStartErrorsHidePassword(t *testing.T) {
	ctx := ctxT(t)

	// Nothing listens on a port just closed.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := l.Addr().String()
	require.NoError(t, l.Close())
	closedURL := withUser(t, "postgresql://"+closedAddr+"/app?sslmode=disable", "app", printPassword)
	cfg := printConfig(closedURL)
	cfg.ConnectionTimeout = 300 * time.Millisecond
	pool, err := sprocketspg.New(ctx, cfg)
	require.Nil(t, pool)
	require.Error(t, err)
	assert.True(t, sprocketspg.IsConnectionError(err), "%v", err)
	assert.Contains(t, err.Error(), closedAddr)
	assertErrorsNoPassword(t, "closed port", err)

	// Bad settings in a Config whose URL holds the password.
	kvPassword := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(printPassword)
	userinfo := url.UserPassword("app", printPassword).String()
	for name, bad := range map[string]string{
		"bad port in URL":    "postgresql://" + userinfo + "@127.0.0.1:notaport/app",
		"bad sslmode in URL": "postgresql://" + userinfo + "@127.0.0.1/app?sslmode=bogus",
		"bad key/value":      "host=127.0.0.1 user=app password='" + kvPassword + "' port=notaport",
		"password in query":  "postgresql://127.0.0.1:notaport/app?password=" + url.QueryEscape(printPassword),
	} {
		require.NotEmpty(t, leaks(bad), name)
		cfg := printConfig(bad)
		assertNoPassword(t, name+" config", cfg)
		pool, err := sprocketspg.New(ctx, cfg)
		require.Nil(t, pool, name)
		var ce *sprocketspg.ConfigError
		require.ErrorAs(t, err, &ce, name)
		assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig, name)
		assert.Contains(t, ce.Value, "xxxxx", "%s: the value is shown, masked", name)
		assertErrorsNoPassword(t, name, err)
		assertErrorsNoPassword(t, name+" ConfigError", ce)
	}
}

func TestPrintingRejectedPasswordHidesBoth(t *testing.T) {
	// The helpers' servers trust every connection; a server of the test's
	// own is made to check this role's password.
	srv := fxtest_helpers.StartServer(t)
	if srv.Backend() != "local" {
		t.Fatalf("pg_hba.conf can be changed only on a server from local binaries, not %s: install the PostgreSQL server binaries (apt-get install postgresql) or set PG_BIN", srv.Backend())
	}
	ctx := ctxT(t)
	role := createPasswordRole(t, srv.AdminURL(), printPassword)
	dbURL := srv.NewDatabase(t)
	require.NoError(t, srv.SetHBA(ctx,
		"local all all trust",
		"host all "+role+" 127.0.0.1/32 scram-sha-256",
		"host all "+role+" ::1/128 scram-sha-256",
		"host all all 127.0.0.1/32 trust",
		"host all all ::1/128 trust",
	))

	// The right password gets in, so the server checks this one.
	right, err := sprocketspg.New(ctx, printConfig(withUser(t, dbURL, role, printPassword)))
	require.NoError(t, err)
	t.Cleanup(right.Close)
	assertNoPassword(t, "pool with checked password", right)

	wrongURL := withUser(t, dbURL, role, printWrongPassword)
	require.NotEmpty(t, leaks(wrongURL))
	pool, err := sprocketspg.New(ctx, printConfig(wrongURL))
	require.Nil(t, pool)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr, "%v", err)
	require.Equal(t, "28P01", pgErr.Code, "the server refused the password: %v", err)
	assertErrorsNoPassword(t, "wrong password", err)
}
