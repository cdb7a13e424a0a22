package sprocketspg

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caarlos0/env/v10"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func loadFrom(t *testing.T, vars map[string]string) (Config, error) {
	t.Helper()
	return loadConfig(env.Options{Environment: vars})
}

func TestLoadConfigDefaults(t *testing.T) {
	cfg, err := loadFrom(t, map[string]string{})
	require.NoError(t, err)
	assert.Equal(t, Config{
		MaxPoolSize:       10,
		MinPoolSize:       1,
		ConnectionTimeout: 10 * time.Second,
		ConnectionTTL:     300 * time.Second,
		QueryTimeout:      60 * time.Second,
		HStore:            false,
		JSON:              false,
		UUID:              true,
		MaxConnIdleTime:   30 * time.Minute,
		HealthCheckPeriod: time.Minute,
	}, cfg)
}

func TestLoadConfigFromEnvironment(t *testing.T) {
	t.Setenv(EnvURL, "postgresql://u@db.example.com/app")
	t.Setenv(EnvMaxPoolSize, "20")
	t.Setenv(EnvQueryTimeout, "1.5")
	t.Setenv(EnvHStore, "Yes")
	cfg, err := LoadConfig()
	require.NoError(t, err)
	assert.Equal(t, "postgresql://u@db.example.com/app", cfg.URL)
	assert.Equal(t, 20, cfg.MaxPoolSize)
	assert.Equal(t, 1500*time.Millisecond, cfg.QueryTimeout)
	assert.True(t, cfg.HStore)
	assert.NoError(t, cfg.Validate())
}

func TestLoadConfigDurations(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"10", 10 * time.Second},
		{"1.5", 1500 * time.Millisecond},
		{" 2 ", 2 * time.Second},
		{"0.001", time.Millisecond},
		{"1500ms", 1500 * time.Millisecond},
		{"2m", 2 * time.Minute},
		{"1h30m", 90 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			for _, variable := range []string{EnvConnectionTimeout, EnvConnectionTTL, EnvQueryTimeout} {
				cfg, err := loadFrom(t, map[string]string{variable: tt.in})
				require.NoError(t, err)
				got := map[string]time.Duration{
					EnvConnectionTimeout: cfg.ConnectionTimeout,
					EnvConnectionTTL:     cfg.ConnectionTTL,
					EnvQueryTimeout:      cfg.QueryTimeout,
				}[variable]
				assert.Equal(t, tt.want, got, variable)
			}
		})
	}
}

func TestLoadConfigBooleans(t *testing.T) {
	truths := []string{"y", "Y", "yes", "YES", "t", "T", "true", "True", "on", "ON", "1"}
	lies := []string{"n", "N", "no", "No", "f", "F", "false", "FALSE", "off", "Off", "0"}
	for _, variable := range []string{EnvHStore, EnvJSON, EnvUUID} {
		for _, v := range truths {
			cfg, err := loadFrom(t, map[string]string{variable: v, EnvHStore: "0", EnvJSON: "0", EnvUUID: "0", variable + "": v})
			require.NoError(t, err, "%s=%s", variable, v)
			assert.True(t, boolField(cfg, variable), "%s=%s", variable, v)
		}
		for _, v := range lies {
			cfg, err := loadFrom(t, map[string]string{EnvHStore: "1", EnvJSON: "1", EnvUUID: "1", variable: v})
			require.NoError(t, err, "%s=%s", variable, v)
			assert.False(t, boolField(cfg, variable), "%s=%s", variable, v)
		}
	}
}

func boolField(c Config, variable string) bool {
	switch variable {
	case EnvHStore:
		return c.HStore
	case EnvJSON:
		return c.JSON
	default:
		return c.UUID
	}
}

func TestLoadConfigBadValues(t *testing.T) {
	tests := []struct {
		variable, value, reason string
	}{
		{EnvMaxPoolSize, "ten", "whole number"},
		{EnvMaxPoolSize, "1.5", "whole number"},
		{EnvMinPoolSize, "-", "whole number"},
		{EnvMinPoolSize, "99999999999999999999", "whole number"},
		{EnvConnectionTimeout, "soon", "seconds"},
		{EnvConnectionTTL, "5 minutes", "seconds"},
		{EnvQueryTimeout, "NaN", "seconds"},
		{EnvQueryTimeout, "1e300", "in range"},
		{EnvHStore, "maybe", "one of y, yes"},
		{EnvJSON, "2", "one of y, yes"},
		{EnvUUID, "enabled", "one of y, yes"},
	}
	for _, tt := range tests {
		t.Run(tt.variable+"="+tt.value, func(t *testing.T) {
			_, err := loadFrom(t, map[string]string{tt.variable: tt.value})
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidConfig)
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tt.variable, ce.Variable)
			assert.Equal(t, tt.value, ce.Value)
			msg := err.Error()
			assert.Contains(t, msg, tt.variable)
			assert.Contains(t, msg, fmt.Sprintf("%q", tt.value))
			assert.Contains(t, msg, tt.reason)
		})
	}
}

func TestLoadConfigReportsEveryBadVariable(t *testing.T) {
	_, err := loadFrom(t, map[string]string{EnvMaxPoolSize: "x", EnvUUID: "perhaps"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), EnvMaxPoolSize)
	assert.Contains(t, err.Error(), EnvUUID)
}

// configErrors returns the *ConfigErrors joined in err, by variable.
func configErrors(t *testing.T, err error) map[string]*ConfigError {
	t.Helper()
	joined, ok := err.(interface{ Unwrap() []error })
	require.True(t, ok, "want a joined error, got %T: %v", err, err)
	out := map[string]*ConfigError{}
	for _, e := range joined.Unwrap() {
		var ce *ConfigError
		require.ErrorAs(t, e, &ce)
		_, dup := out[ce.Variable]
		assert.False(t, dup, "%s reported twice in %v", ce.Variable, err)
		out[ce.Variable] = ce
	}
	return out
}

// A run with several bad variables reports all of them, those that do not
// parse and those that parse to a value that cannot work, each with the
// value as it was typed.
func TestLoadConfigReportsParseAndValueErrorsTogether(t *testing.T) {
	_, err := loadFrom(t, map[string]string{
		EnvURL:            "mysql://app:s3cret-Pa55@db/app",
		EnvMaxPoolSize:    "ten",
		EnvMinPoolSize:    "-2",
		EnvQueryTimeout:   "-1",
		EnvConnectionTTL:  "0",
		EnvSlowQuery:      "-250ms",
		EnvQueryExecMode:  "turbo",
		EnvUUID:           "perhaps",
		EnvReadURL:        "ftp://reader:s3cret-Pa55@replica/app",
		EnvLogQueries:     "on", // fine: not reported
		EnvConnectTimeout: "5",  // fine: not reported
	})
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrInvalidConfig)
	assert.NotContains(t, err.Error(), "s3cret-Pa55")
	got := configErrors(t, err)
	want := map[string]string{
		EnvURL:           "mysql://app:xxxxx@db/app",
		EnvMaxPoolSize:   "ten",
		EnvMinPoolSize:   "-2",
		EnvQueryTimeout:  "-1",
		EnvConnectionTTL: "0",
		EnvSlowQuery:     "-250ms",
		EnvQueryExecMode: "turbo",
		EnvUUID:          "perhaps",
		EnvReadURL:       "ftp://reader:xxxxx@replica/app",
	}
	for variable, value := range want {
		if assert.Contains(t, got, variable, "%v", err) {
			assert.Equal(t, value, got[variable].Value, variable)
		}
	}
	assert.Len(t, got, len(want), "%v", err)
	assert.Contains(t, err.Error(), `invalid POSTGRES_QUERY_TIMEOUT "-1": must be greater than zero`)
}

// What only pgx's parser or the TLS and password rules catch in a URL is
// reported with the other bad variables, not at start a run later.
func TestLoadConfigReportsURLProblemsWithTheRest(t *testing.T) {
	for name, tc := range map[string]struct {
		env      map[string]string
		variable string // reported besides POSTGRES_MAX_POOL_SIZE
		reason   string
	}{
		"sslmode": {
			env:      map[string]string{EnvURL: "postgresql://app:s3cret-Pa55@db/app?sslmode=bogus"},
			variable: EnvURL, reason: "cannot be parsed",
		},
		"port": {
			env:      map[string]string{EnvURL: "postgresql://app:s3cret-Pa55@db:99999/app"},
			variable: EnvURL, reason: "cannot be parsed",
		},
		"keyword/value": {
			env:      map[string]string{EnvURL: "host=db port=notaport password=s3cret-Pa55"},
			variable: EnvURL, reason: "cannot be parsed",
		},
		"SSL setting against the URL": {
			env:      map[string]string{EnvURL: "postgresql://app:s3cret-Pa55@db/app?sslmode=disable", EnvSSLMode: "verify-full"},
			variable: EnvSSLMode, reason: "says \"disable\"",
		},
		"password file beside a URL password": {
			env:      map[string]string{EnvURL: "postgresql://app:s3cret-Pa55@db/app", EnvPasswordFile: "/run/secrets/pg"},
			variable: EnvPasswordFile, reason: "holds a password too",
		},
		"read URL": {
			env:      map[string]string{EnvURL: "postgresql://app@db/app", EnvReadURL: "postgresql://app:s3cret-Pa55@replica:99999/app"},
			variable: EnvReadURL, reason: "cannot be parsed",
		},
	} {
		t.Run(name, func(t *testing.T) {
			tc.env[EnvMaxPoolSize] = "ten"
			_, err := loadFrom(t, tc.env)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidConfig)
			got := configErrors(t, err)
			assert.Contains(t, got, EnvMaxPoolSize, "%v", err)
			if assert.Contains(t, got, tc.variable, "%v", err) {
				assert.Contains(t, got[tc.variable].Error(), tc.reason)
			}
			assert.Len(t, got, 2, "%v", err)
			assert.NotContains(t, fmt.Sprintf("%v %+v %#v", err, err, err), "s3cret-Pa55")
		})
	}
}

// A value left to its default, or one that code sets later, is not
// LoadConfig's to refuse: only what the environment set is checked.
func TestLoadConfigChecksOnlyWhatIsSet(t *testing.T) {
	cfg, err := loadFrom(t, map[string]string{EnvMinPoolSize: "10"})
	require.NoError(t, err, "MIN 10 with the default MAX 10 is fine")
	assert.Equal(t, 10, cfg.MinPoolSize)

	_, err = loadFrom(t, map[string]string{EnvMinPoolSize: "11"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `invalid POSTGRES_MIN_POOL_SIZE "11": must not exceed POSTGRES_MAX_POOL_SIZE (10)`)

	// No URL is fine here; Validate requires it.
	cfg, err = loadFrom(t, map[string]string{})
	require.NoError(t, err)
	assert.ErrorContains(t, cfg.Validate(), EnvURL)
}

func TestLoadConfigConnectTimeoutAlias(t *testing.T) {
	cfg, err := loadFrom(t, map[string]string{EnvConnectTimeout: "2.5"})
	require.NoError(t, err)
	assert.Equal(t, 2500*time.Millisecond, cfg.ConnectionTimeout)

	cfg, err = loadFrom(t, map[string]string{EnvConnectTimeout: "3", EnvConnectionTimeout: "3000ms"})
	require.NoError(t, err, "the same value under both names")
	assert.Equal(t, 3*time.Second, cfg.ConnectionTimeout)

	_, err = loadFrom(t, map[string]string{EnvConnectTimeout: "3", EnvConnectionTimeout: "4"})
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrInvalidConfig)
	assert.Contains(t, err.Error(), EnvConnectTimeout)
	assert.Contains(t, err.Error(), EnvConnectionTimeout)
	assert.Contains(t, err.Error(), `"3"`)
	assert.Contains(t, err.Error(), `"4"`)

	for _, value := range []string{"soon", "-1", "0"} {
		_, err = loadFrom(t, map[string]string{EnvConnectTimeout: value})
		require.Error(t, err, value)
		var ce *ConfigError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, EnvConnectTimeout, ce.Variable, value)
		assert.Equal(t, value, ce.Value)
	}

	// The documented name alone still works, and wins over nothing.
	cfg, err = loadFrom(t, map[string]string{EnvConnectionTimeout: "7"})
	require.NoError(t, err)
	assert.Equal(t, 7*time.Second, cfg.ConnectionTimeout)
}

func validConfig() Config {
	return Config{
		URL:               "postgresql://app:s3cret-Pa55@db.example.com:5432/app",
		MaxPoolSize:       10,
		MinPoolSize:       1,
		ConnectionTimeout: 10 * time.Second,
		ConnectionTTL:     300 * time.Second,
		QueryTimeout:      60 * time.Second,
		UUID:              true,
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name     string
		change   func(*Config)
		variable string // "" means valid
		reason   string
	}{
		{"valid", func(*Config) {}, "", ""},
		{"postgres scheme", func(c *Config) { c.URL = "postgres://localhost/db" }, "", ""},
		{"srv scheme", func(c *Config) { c.URL = "postgresql+srv://u:p@db.example.com/app" }, "", ""},
		{"aws srv scheme", func(c *Config) { c.URL = "aws+srv://u:p@db.local/app" }, "", ""},
		{"keyword value", func(c *Config) { c.URL = "host=localhost dbname=app password=s3cret-Pa55" }, "", ""},
		{"upper-case scheme", func(c *Config) { c.URL = "POSTGRESQL://localhost/db" }, "", ""},
		{"min zero", func(c *Config) { c.MinPoolSize = 0 }, "", ""},
		{"min equals max", func(c *Config) { c.MinPoolSize = 10 }, "", ""},
		{"missing URL", func(c *Config) { c.URL = "" }, EnvURL, "is required"},
		{"blank URL", func(c *Config) { c.URL = "  " }, EnvURL, "is required"},
		{"unknown scheme", func(c *Config) { c.URL = "mysql://app:s3cret-Pa55@db/app" }, EnvURL, `unsupported scheme "mysql"`},
		{"not a URL", func(c *Config) { c.URL = "just-a-host" }, EnvURL, "want a URL"},
		{"bad URL", func(c *Config) { c.URL = "postgresql://app:s3cret-Pa55@db:port/app" }, EnvURL, "not a valid URL"},
		{"srv without host", func(c *Config) { c.URL = "postgresql+srv:///app" }, EnvURL, "needs a host"},
		{"max zero", func(c *Config) { c.MaxPoolSize = 0; c.MinPoolSize = 0 }, EnvMaxPoolSize, "at least 1"},
		{"max negative", func(c *Config) { c.MaxPoolSize = -1; c.MinPoolSize = 0 }, EnvMaxPoolSize, "at least 1"},
		{"min negative", func(c *Config) { c.MinPoolSize = -1 }, EnvMinPoolSize, "must not be negative"},
		{"min above max", func(c *Config) { c.MinPoolSize = 11 }, EnvMinPoolSize, "must not exceed POSTGRES_MAX_POOL_SIZE (10)"},
		{"zero connection timeout", func(c *Config) { c.ConnectionTimeout = 0 }, EnvConnectionTimeout, "greater than zero"},
		{"negative ttl", func(c *Config) { c.ConnectionTTL = -time.Second }, EnvConnectionTTL, "greater than zero"},
		{"zero query timeout", func(c *Config) { c.QueryTimeout = 0 }, EnvQueryTimeout, "greater than zero"},
		{"sub-millisecond query timeout", func(c *Config) { c.QueryTimeout = time.Microsecond }, EnvQueryTimeout, "at least 1ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := validConfig()
			tt.change(&cfg)
			err := cfg.Validate()
			if tt.variable == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidConfig)
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tt.variable, ce.Variable)
			assert.Contains(t, err.Error(), tt.variable)
			assert.Contains(t, err.Error(), tt.reason)
			assert.NotContains(t, err.Error(), "s3cret-Pa55")
		})
	}
}

func TestValidateJoinsEveryProblem(t *testing.T) {
	err := Config{}.Validate()
	require.Error(t, err)
	for _, v := range []string{EnvURL, EnvMaxPoolSize, EnvConnectionTimeout, EnvConnectionTTL, EnvQueryTimeout} {
		assert.Contains(t, err.Error(), v)
	}
}

func TestConfigNeverPrintsPassword(t *testing.T) {
	const secret = "s3cret-Pa55"
	for _, url := range []string{
		"postgresql://app:" + secret + "@db.example.com:5432/app?sslmode=require",
		"postgres://app@db.example.com/app?password=" + secret,
		"host=db.example.com user=app password=" + secret + " dbname=app",
		"host=db.example.com password='" + secret + " with space' dbname=app",
		"postgresql+srv://app:" + secret + "@db.example.com/app",
		"postgresql://app:" + secret + "@db.example.com:notaport/app",
	} {
		t.Run(url, func(t *testing.T) {
			cfg := validConfig()
			cfg.URL = url
			outputs := map[string]string{
				"%v":     fmt.Sprintf("%v", cfg),
				"%+v":    fmt.Sprintf("%+v", cfg),
				"%#v":    fmt.Sprintf("%#v", cfg),
				"%s":     fmt.Sprintf("%s", cfg),
				"String": cfg.String(),
				"ptr %v": fmt.Sprintf("%v", &cfg),
			}
			js, err := json.Marshal(cfg)
			require.NoError(t, err)
			outputs["json"] = string(js)

			core, logs := observer.New(zapcore.DebugLevel)
			var buf bytes.Buffer
			jsonCore := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&buf), zapcore.DebugLevel)
			logger := zap.New(zapcore.NewTee(core, jsonCore))
			logger.Info("config", zap.Object("cfg", cfg), zap.Any("any", cfg), zap.Reflect("reflect", cfg), zap.Stringer("stringer", cfg))
			require.Equal(t, 1, logs.Len())
			outputs["zap json"] = buf.String()
			for _, f := range logs.All()[0].Context {
				enc := zapcore.NewMapObjectEncoder()
				f.AddTo(enc)
				outputs["zap field "+f.Key] = fmt.Sprint(enc.Fields)
			}
			for name, out := range outputs {
				assert.NotContains(t, out, secret, name)
				assert.Contains(t, out, "db.example.com", name) // the rest stays readable
			}
			assert.Contains(t, outputs["%+v"], "MaxPoolSize:10")
		})
	}
}

func TestConfigErrorUnwrap(t *testing.T) {
	inner := errors.New("boom")
	err := fmt.Errorf("load: %w", &ConfigError{Variable: EnvURL, Reason: "bad", Err: inner})
	assert.ErrorIs(t, err, inner)
	assert.ErrorIs(t, err, ErrInvalidConfig)
	assert.True(t, strings.HasPrefix((&ConfigError{Variable: "X", Reason: "r"}).Error(), "invalid X"))
}
