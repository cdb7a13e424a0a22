package redact

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConnString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"postgres://u:pw@h:5432/db", "postgres://u:xxxxx@h:5432/db"},
		{"postgresql://u@h/db", "postgresql://u@h/db"},
		{"postgresql://u:@h/db", "postgresql://u:xxxxx@h/db"},
		{"postgresql://u:p%40ss@h1:1,h2:2/db?sslmode=require", "postgresql://u:xxxxx@h1:1,h2:2/db?sslmode=require"},
		{"postgresql://h/db?password=pw&sslmode=disable", "postgresql://h/db?password=xxxxx&sslmode=disable"},
		{"postgresql://h/db?sslpassword=pw", "postgresql://h/db?sslpassword=xxxxx"},
		{"postgresql+srv://u:pw@name.example.com/db", "postgresql+srv://u:xxxxx@name.example.com/db"},
		{"aws+srv://u:pw@svc.ns/db", "aws+srv://u:xxxxx@svc.ns/db"},
		{"//app:0000@://", "//app:xxxxx@://"}, // scheme-relative, then a second "://"
		{"//x postgres://u:pw@h/db", "//x postgres://u:xxxxx@h/db"},
		{"host=h password=pw dbname=d", "host=h password=xxxxx dbname=d"},
		{"host=h password='s3cret", "host=h password=xxxxx"}, // a quote never closed
		{"host=h password = pw dbname=d", "host=h password=xxxxx dbname=d"},
		{"host=h password='p w\\'x' dbname=d", "host=h password=xxxxx dbname=d"},
		{"host=h PASSWORD=pw", "host=h PASSWORD=xxxxx"},
		{"postgresql://u:pw@h:notaport/db", "postgresql://u:xxxxx@h:notaport/db"},
		{"postgresql://u:pw@h:bad/db?password=pw2", "postgresql://u:xxxxx@h:bad/db?password=xxxxx"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			assert.Equal(t, tt.want, ConnString(tt.in))
		})
	}
}

func TestPassword(t *testing.T) {
	assert.Equal(t, "p@ss", Password("postgresql://u:p%40ss@h/db"))
	assert.Equal(t, "pw2", Password("postgresql://u@h/db?password=pw2"))
	assert.Equal(t, "", Password("postgresql://u@h/db"))
	assert.Equal(t, "pw", Password("host=h password=pw"))
	assert.Equal(t, "p w'x", Password(`host=h password='p w\'x'`))
	assert.Equal(t, "", Password("host=h"))
	assert.Equal(t, "0000", Password("//app:0000@://"))
	assert.Equal(t, "s3cret x", Password("host=h password='s3cret x"))
	assert.Equal(t, "pw", Password("//x postgres://u:pw@h/db"))
}

func TestSecrets(t *testing.T) {
	assert.Equal(t, []string{"pw"}, Secrets("postgresql://u:pw@h/db"))
	// pgx ends the user information at the first @, net/url at the last.
	assert.Equal(t, []string{"a", "a@b"}, Secrets("postgres://u:a@b@h/db"))
	// pgx's reading is empty; net/url's is the whole "@000".
	assert.Equal(t, []string{"@000"}, Secrets("://app:@000@ 0="))
	assert.Equal(t, []string{"pw"}, Secrets("app:pw@h/db"))
	assert.Equal(t, []string{"pw"}, Secrets("host=h password=pw"))
	assert.Empty(t, Secrets("host=h user=u@x"))
	assert.Empty(t, Secrets(""))

	err := Error(errors.New("cannot parse `://app:@000@ 0=`"), Secrets("://app:@000@ 0=")...)
	assert.Equal(t, "cannot parse `://app:xxxxx@ 0=`", err.Error())
}

func TestError(t *testing.T) {
	base := errors.New("dial postgres://u:hunter%2022@h/db failed, pw hunter 22 and hunter+22")
	err := Error(fmt.Errorf("wrapped: %w", base), "hunter 22", "")
	assert.Equal(t, "wrapped: dial postgres://u:xxxxx@h/db failed, pw xxxxx and xxxxx", err.Error())
	assert.ErrorIs(t, err, base)
	assert.Nil(t, Error(nil, "x"))
	assert.Same(t, base, Error(base))
	assert.Same(t, base, Error(base, ""))
}

// leaky is an error whose every form shows its secret: Error, and a
// Format that prints more detail for %+v, as errors with stack traces do.
type leaky struct{ secret string }

func (e *leaky) Error() string { return "auth failed for password " + e.secret }

func (e *leaky) Format(f fmt.State, verb rune) {
	fmt.Fprintf(f, "%s (detail: secret=%s)", e.Error(), e.secret)
}

// secretForms are the ways a secret can be written into text: as is,
// percent-encoded, quoted by %q or encoding/json, and in hex.
func secretForms(secret string) []string {
	quoted := strconv.Quote(secret)
	js, _ := json.Marshal(secret)
	forms := []string{
		secret,
		url.QueryEscape(secret),
		url.PathEscape(secret),
		quoted[1 : len(quoted)-1],
		string(js[1 : len(js)-1]),
		hex.EncodeToString([]byte(secret)),
		strings.ToUpper(hex.EncodeToString([]byte(secret))),
	}
	return forms
}

// showsSecret reports which forms of secret out contains.
func showsSecret(out, secret string) []string {
	var found []string
	for _, form := range secretForms(secret) {
		if strings.Contains(out, form) {
			found = append(found, form)
		}
	}
	return found
}

func TestErrorFormatHidesSecrets(t *testing.T) {
	const secret = `Pr1nt"Me<&>\s3cr3t%/`
	base := &leaky{secret: secret}

	// The check finds the secret in each form it looks for, so a pass
	// below means the secret is absent, not that the search is blind.
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X"} {
		assert.NotEmpty(t, showsSecret(fmt.Sprintf(verb, secret), secret), "the search misses %s of the secret", verb)
	}
	assert.NotEmpty(t, showsSecret(fmt.Sprintf("%+v", base), secret), "the search misses the unscrubbed error")
	assert.NotEmpty(t, showsSecret(fmt.Sprintf("%#v", struct{ secrets []string }{[]string{secret}}), secret),
		"the search misses a struct's fields")

	err := Error(fmt.Errorf("connect: %w", base), secret)
	msg := err.Error()
	// fmt.Errorf used the leaky Format, detail and all.
	require.Equal(t, "connect: auth failed for password "+Mask+" (detail: secret="+Mask+")", msg)

	want := map[string]string{
		"%v":      msg,
		"%+v":     msg,
		"%s":      msg,
		"%q":      strconv.Quote(msg),
		"%+q":     strconv.QuoteToASCII(msg),
		"%#q":     "`" + msg + "`",
		"%x":      hex.EncodeToString([]byte(msg)),
		"%X":      strings.ToUpper(hex.EncodeToString([]byte(msg))),
		"% x":     fmt.Sprintf("% x", msg),
		"%#v":     fmt.Sprintf("&redact.scrubbed{msg:%q}", msg),
		"%T":      "*redact.scrubbed",
		"%.7s":    "connect",
		"%-40s|":  fmt.Sprintf("%-40s|", msg),
		"%d":      "%!d(string=" + msg + ")",
		"%v wrap": "outer: " + msg,
	}
	for verb, expected := range want {
		var got string
		switch verb {
		case "%v wrap":
			got = fmt.Sprintf("%v", fmt.Errorf("outer: %w", err))
		default:
			got = fmt.Sprintf(verb, err)
		}
		assert.Equal(t, expected, got, verb)
		assert.Empty(t, showsSecret(got, secret), "%s shows the secret", verb)
	}

	// %#v of errors that wrap it reaches it through its Format, or not at
	// all (unexported fields print as addresses).
	for name, wrapped := range map[string]error{
		"fmt.Errorf":  fmt.Errorf("outer: %w", err),
		"errors.Join": errors.Join(err, errors.New("other")),
		"struct":      &structErr{Err: err},
	} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
			got := fmt.Sprintf(verb, wrapped)
			assert.Empty(t, showsSecret(got, secret), "%s %s shows the secret: %s", name, verb, got)
		}
	}
	assert.Contains(t, fmt.Sprintf("%#v", &structErr{Err: err}), `Err:&redact.scrubbed{msg:"connect: auth failed`)

	// Printing changes nothing about what the error is.
	var target *leaky
	assert.ErrorAs(t, err, &target)
	assert.Same(t, base, target)
	assert.ErrorIs(t, fmt.Errorf("outer: %w", err), base)
	assert.ErrorIs(t, errors.Join(errors.New("other"), err), base)
}

// structErr holds an error in an exported field, as ConfigError does.
type structErr struct{ Err error }

func (e *structErr) Error() string { return "struct: " + e.Err.Error() }
