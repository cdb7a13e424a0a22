package sprocketspg_test

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
)

// badInputPassword is the password of every URL below; no error may show
// it.
const badInputPassword = "secret"

// badInputURL is a valid URL with a password, set while another variable
// is the bad one, so that the password check means something.
const badInputURL = "postgresql://u:" + badInputPassword + "@localhost:5432/db"

type badInput struct {
	variable string            // the variable the error must name
	value    string            // its bad value
	extra    map[string]string // other variables to set
}

func (b badInput) name() string {
	name := fmt.Sprintf("%s=%q", b.variable, b.value)
	for k, v := range b.extra {
		name += fmt.Sprintf(",%s=%q", k, v)
	}
	return name
}

// badInputs lists every class of invalid value for every POSTGRES_*
// variable of DESIGN.md section 3.
func badInputs() []badInput {
	var cases []badInput
	add := func(variable string, values ...string) {
		for _, v := range values {
			cases = append(cases, badInput{variable: variable, value: v})
		}
	}
	notNumbers := []string{"ten", "1.5", " ", "1e3", "0x10", "NaN", "Inf", "maybe", "10x", "5 connections"}
	overflow := []string{"99999999999999999999", "-99999999999999999999", "9223372036854775808"}

	add(sprocketspg.EnvMaxPoolSize, notNumbers...)
	add(sprocketspg.EnvMaxPoolSize, overflow...)
	add(sprocketspg.EnvMaxPoolSize, "-1", "0", "-9223372036854775808")
	if math.MaxInt > math.MaxInt32 {
		add(sprocketspg.EnvMaxPoolSize, "2147483648") // more than pgxpool's int32 can hold
	}

	add(sprocketspg.EnvMinPoolSize, notNumbers...)
	add(sprocketspg.EnvMinPoolSize, overflow...)
	add(sprocketspg.EnvMinPoolSize, "-1", "11") // 11 > the default max of 10
	cases = append(cases,
		badInput{variable: sprocketspg.EnvMinPoolSize, value: "5", extra: map[string]string{sprocketspg.EnvMaxPoolSize: "3"}},
		badInput{variable: sprocketspg.EnvMinPoolSize, value: "2", extra: map[string]string{sprocketspg.EnvMaxPoolSize: "1"}},
	)

	badDurations := []string{
		"10x", "-1s", "-1", "0", "0s", "-0.5", "NaN", "Inf", "-Inf", "+Inf", "1e300",
		"99999999999999999999", "maybe", "soon", "1.5.5", " ", "5 minutes", "1h-", "9223372037",
	}
	add(sprocketspg.EnvConnectionTimeout, badDurations...)
	add(sprocketspg.EnvConnectionTTL, badDurations...)
	add(sprocketspg.EnvQueryTimeout, badDurations...)
	add(sprocketspg.EnvQueryTimeout, "0.0001", "1ns", "999us") // statement_timeout counts milliseconds

	// 0 turns the slow-query log off, so only negative and unparsable
	// values are bad.
	add(sprocketspg.EnvSlowQuery, "10x", "-1s", "-1", "-0.5", "NaN", "Inf", "-Inf", "1e300",
		"99999999999999999999", "maybe", " ", "5 minutes")

	badBools := []string{"maybe", "2", "-1", "yess", "truee", "10x", "NaN", " ", "ja", "1.0"}
	add(sprocketspg.EnvHStore, badBools...)
	add(sprocketspg.EnvJSON, badBools...)
	add(sprocketspg.EnvUUID, badBools...)
	add(sprocketspg.EnvLogQueries, badBools...)
	add(sprocketspg.EnvLogQueryArgs, badBools...)

	add(sprocketspg.EnvQueryExecMode, "bogus", "prepared", "42", "simple protocol", "maybe")

	add(sprocketspg.EnvURL,
		"postgres://u:secret@host:notaport/db",
		"postgres://u:secret@[::1/db",
		"mysql://u:secret@h/db",
		"://",
		"postgresql+srv://u:secret@/db",
		"aws+srv://u:secret@/db",
		" ",
		"justtext",
		"postgres://u:my secret@h/db", // a space typed into the password
		"u:secret@h/db",               // the scheme forgotten
		"//u:secret@h:5432/db",
		"postgres://u:secret@h:99999/db",
		"postgres://u:secret@h/db?sslmode=bogus",
		"host=h password=secret port=notaport",
		"host=h password=secret sslmode=bogus",
		"host=h user=u password=my secret dbname=db", // a space in an unquoted password
	)
	return cases
}

// checkBadInputError asserts what every configuration error must be.
func checkBadInputError(t *testing.T, err error, variable string) {
	t.Helper()
	if !assert.Error(t, err, "the bad value was accepted") {
		return
	}
	assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
	assert.Contains(t, err.Error(), variable, "the error names the variable")
	assert.NotContains(t, err.Error(), badInputPassword, "the error shows the password")
}

// loadValidateNew runs what a service without fx does with its
// environment: LoadConfig, then Validate, then New. It returns the first
// error and the stage that returned it.
func loadValidateNew(t *testing.T) (stage string, err error) {
	t.Helper()
	cfg, err := sprocketspg.LoadConfig()
	if err != nil {
		return "LoadConfig", err
	}
	if err := cfg.Validate(); err != nil {
		return "Validate", err
	}
	// Nothing is left to refuse the value but New; a bad value must still
	// fail there, and before any I/O, so the context is short.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	pool, err := sprocketspg.New(ctx, cfg)
	if pool != nil {
		pool.Close()
	}
	return "New", err
}

func TestBadInputEnvironment(t *testing.T) {
	for _, tc := range badInputs() {
		t.Run(tc.name(), func(t *testing.T) {
			if tc.variable != sprocketspg.EnvURL {
				t.Setenv(sprocketspg.EnvURL, badInputURL)
			}
			for k, v := range tc.extra {
				t.Setenv(k, v)
			}
			t.Setenv(tc.variable, tc.value)

			var (
				stage string
				err   error
			)
			require.NotPanics(t, func() { stage, err = loadValidateNew(t) })
			t.Logf("%s: %v", stage, err)
			checkBadInputError(t, err, tc.variable)

			// The same environment under fx: the app does not start.
			var startErr error
			require.NotPanics(t, func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				startErr = fx.New(fx.NopLogger, sprocketspg.Module).Start(ctx)
			})
			checkBadInputError(t, startErr, tc.variable)
		})
	}
}

func TestBadInputConfigThroughFx(t *testing.T) {
	tests := []struct {
		name     string
		variable string
		change   func(*sprocketspg.Config)
	}{
		{"no URL", sprocketspg.EnvURL, func(c *sprocketspg.Config) { c.URL = "" }},
		{"blank URL", sprocketspg.EnvURL, func(c *sprocketspg.Config) { c.URL = " \t" }},
		{"bad port", sprocketspg.EnvURL, func(c *sprocketspg.Config) { c.URL = "postgres://u:secret@host:notaport/db" }},
		{"open bracket", sprocketspg.EnvURL, func(c *sprocketspg.Config) { c.URL = "postgres://u:secret@[::1/db" }},
		{"mysql", sprocketspg.EnvURL, func(c *sprocketspg.Config) { c.URL = "mysql://u:secret@h/db" }},
		{"scheme only", sprocketspg.EnvURL, func(c *sprocketspg.Config) { c.URL = "://" }},
		{"SRV without host", sprocketspg.EnvURL, func(c *sprocketspg.Config) { c.URL = "postgresql+srv://u:secret@/db" }},
		{"space in password", sprocketspg.EnvURL, func(c *sprocketspg.Config) { c.URL = "postgres://u:my secret@h/db" }},
		{"no scheme", sprocketspg.EnvURL, func(c *sprocketspg.Config) { c.URL = "u:secret@h:5432/db" }},
		{"port out of range", sprocketspg.EnvURL, func(c *sprocketspg.Config) { c.URL = "postgres://u:secret@h:99999/db" }},
		{"bad sslmode", sprocketspg.EnvURL, func(c *sprocketspg.Config) { c.URL = "postgres://u:secret@h/db?sslmode=bogus" }},
		{"bad keyword/value", sprocketspg.EnvURL, func(c *sprocketspg.Config) { c.URL = "host=h password=secret port=notaport" }},
		{"max 0", sprocketspg.EnvMaxPoolSize, func(c *sprocketspg.Config) { c.MaxPoolSize = 0 }},
		{"max negative", sprocketspg.EnvMaxPoolSize, func(c *sprocketspg.Config) { c.MaxPoolSize = -3 }},
		{"max beyond int32", sprocketspg.EnvMaxPoolSize, func(c *sprocketspg.Config) { c.MaxPoolSize = math.MaxInt32 + 1; c.MinPoolSize = 1 }},
		{"min negative", sprocketspg.EnvMinPoolSize, func(c *sprocketspg.Config) { c.MinPoolSize = -1 }},
		{"min above max", sprocketspg.EnvMinPoolSize, func(c *sprocketspg.Config) { c.MinPoolSize = 6; c.MaxPoolSize = 5 }},
		{"connection timeout 0", sprocketspg.EnvConnectionTimeout, func(c *sprocketspg.Config) { c.ConnectionTimeout = 0 }},
		{"connection timeout negative", sprocketspg.EnvConnectionTimeout, func(c *sprocketspg.Config) { c.ConnectionTimeout = -time.Second }},
		{"TTL 0", sprocketspg.EnvConnectionTTL, func(c *sprocketspg.Config) { c.ConnectionTTL = 0 }},
		{"TTL negative", sprocketspg.EnvConnectionTTL, func(c *sprocketspg.Config) { c.ConnectionTTL = -time.Nanosecond }},
		{"query timeout 0", sprocketspg.EnvQueryTimeout, func(c *sprocketspg.Config) { c.QueryTimeout = 0 }},
		{"query timeout negative", sprocketspg.EnvQueryTimeout, func(c *sprocketspg.Config) { c.QueryTimeout = math.MinInt64 }},
		{"slow query threshold negative", sprocketspg.EnvSlowQuery, func(c *sprocketspg.Config) { c.SlowQueryThreshold = -time.Millisecond }},
		{"query exec mode unknown", sprocketspg.EnvQueryExecMode, func(c *sprocketspg.Config) { c.QueryExecMode = "bogus" }},
		{"query timeout below 1ms", sprocketspg.EnvQueryTimeout, func(c *sprocketspg.Config) { c.QueryTimeout = 100 * time.Microsecond }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// An environment that would work, so only the Config is bad.
			t.Setenv(sprocketspg.EnvURL, badInputURL)
			cfg := testConfig(badInputURL)
			tt.change(&cfg)

			var newErr error
			began := time.Now()
			require.NotPanics(t, func() {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				var pool *sprocketspg.Pool
				pool, newErr = sprocketspg.New(ctx, cfg)
				if pool != nil {
					pool.Close()
				}
			})
			t.Logf("New after %v: %v", time.Since(began).Round(time.Millisecond), newErr)
			checkBadInputError(t, newErr, tt.variable)

			var pool *sprocketspg.Pool
			var startErr error
			require.NotPanics(t, func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				app := fx.New(fx.NopLogger, sprocketspg.Module, fx.Replace(cfg), fx.Populate(&pool))
				startErr = app.Start(ctx)
				if startErr == nil {
					_ = app.Stop(ctx)
				}
			})
			checkBadInputError(t, startErr, tt.variable)
			assert.NotContains(t, fmt.Sprint(cfg), badInputPassword, "the Config itself prints the password")
		})
	}
}

// A libpq keyword/value string may hold "://" in a value (a URL as the
// application name, a file:// certificate path). It is not a URL, and
// whatever happens to it, no error shows its password.
func TestBadInputKeywordValueHoldingURL(t *testing.T) {
	for _, raw := range []string{
		"host=localhost user=u password=secret dbname=db application_name=http://svc",
		"host=localhost user=u password=secret dbname=db sslrootcert=file:///etc/ca.pem",
		"host=localhost user=u password='my secret' dbname=db application_name=a://b",
	} {
		t.Run(raw, func(t *testing.T) {
			t.Setenv(sprocketspg.EnvURL, raw)
			cfg, err := sprocketspg.LoadConfig()
			require.NoError(t, err)
			err = cfg.Validate()
			if err != nil {
				assert.NotContains(t, err.Error(), badInputPassword, "the error shows the password")
			}
			assert.NoError(t, err, "a valid keyword/value string (pgx accepts it) is refused")
			assert.NotContains(t, fmt.Sprint(cfg), badInputPassword, "the Config prints the password")
		})
	}
}
