package migrate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sprockets/sprocketspg/instance"
	"github.com/sprockets/sprocketspg/internal/envconfig"
	"github.com/sprockets/sprocketspg/internal/redact"
)

// The environment variables of the migrations of the default instance; a
// named instance's have its prefix (instance.EnvPrefix), such as
// ORDERS_POSTGRES_MIGRATE.
const (
	// EnvMode is the Mode: up, off or only.
	EnvMode = "POSTGRES_MIGRATE"
	// EnvURL is a URL of the instance's database for migrations alone,
	// such as the server's own address when the pool goes through
	// PgBouncer.
	EnvURL = "POSTGRES_MIGRATION_URL"
	// EnvLock is the Lock: session or table.
	EnvLock = "POSTGRES_MIGRATION_LOCK"
	// EnvLockTimeout bounds the wait for another process's migrations.
	EnvLockTimeout = "POSTGRES_MIGRATION_LOCK_TIMEOUT"
	// EnvTimeout bounds the migrations as a whole, the lock wait included.
	EnvTimeout = "POSTGRES_MIGRATION_TIMEOUT"
)

// Defaults of Config.
const (
	DefaultLockTimeout = 5 * time.Minute
	DefaultTimeout     = 15 * time.Minute
)

// Mode says what an instance does with its migrations when it starts.
type Mode string

const (
	// ModeUp applies the pending migrations, then serves: the default.
	ModeUp Mode = "up"
	// ModeOff never migrates; a separate job does. The readiness check
	// still reports the schema version, and warns while migrations are
	// pending.
	ModeOff Mode = "off"
	// ModeOnly applies the pending migrations and exits with status 0
	// without serving, or fails start (status 1) when they fail: for a
	// Kubernetes Job or init container.
	ModeOnly Mode = "only"
)

// Lock says how processes that start together agree on which of them
// migrates.
type Lock string

const (
	// LockSession holds a PostgreSQL advisory lock on the migration's own
	// session for as long as it runs (goose's session locker). It needs a
	// session of its own on the server: a direct connection, or PgBouncer
	// in session mode. The default.
	LockSession Lock = "session"
	// LockTable takes a row of a lock table, with a lease renewed while
	// the migrations run (goose's table locker). It works through
	// PgBouncer in transaction mode, where a session lock would be taken
	// on a server connection that other clients share; a process that
	// dies holding it holds it until the lease runs out.
	LockTable Lock = "table"
)

// Config is how an instance applies its migrations.
type Config struct {
	// Mode is up, off or only; the zero value is up.
	Mode Mode
	// URL, when set, is where migrations connect instead of the
	// instance's URL, with the instance's other settings (credentials and
	// TLS files among them).
	URL string
	// Lock is session or table; the zero value is session.
	Lock Lock
	// LockTimeout bounds the wait for the lock while another process
	// migrates; zero is DefaultLockTimeout.
	LockTimeout time.Duration
	// Timeout bounds the migrations as a whole, the lock wait included;
	// zero is DefaultTimeout.
	Timeout time.Duration
}

// LoadConfig reads the variables above, each with prefix in front of its
// name, into a Config with the defaults applied. Every bad variable is
// reported in one joined error, each part an *instance.ConfigError
// (sprocketspg.ConfigError) that names the variable and matches
// sprocketspg.ErrInvalidConfig.
func LoadConfig(prefix string) (Config, error) {
	var cfg Config
	var errs []error
	if v := os.Getenv(prefix + EnvMode); v != "" {
		cfg.Mode = Mode(strings.ToLower(strings.TrimSpace(v)))
	}
	cfg.URL = os.Getenv(prefix + EnvURL)
	if v := os.Getenv(prefix + EnvLock); v != "" {
		cfg.Lock = Lock(strings.ToLower(strings.TrimSpace(v)))
	}
	for _, d := range []struct {
		variable string
		dst      *time.Duration
	}{{prefix + EnvLockTimeout, &cfg.LockTimeout}, {prefix + EnvTimeout, &cfg.Timeout}} {
		v := os.Getenv(d.variable)
		if v == "" {
			continue
		}
		parsed, err := envconfig.ParseSeconds(v)
		if err != nil {
			errs = append(errs, &instance.ConfigError{Variable: d.variable, Value: v, Reason: err.Error()})
			continue
		}
		*d.dst = parsed
	}
	if err := cfg.validate(prefix); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return cfg.withDefaults(), nil
}

// withDefaults fills the zero values.
func (c Config) withDefaults() Config {
	if c.Mode == "" {
		c.Mode = ModeUp
	}
	if c.Lock == "" {
		c.Lock = LockSession
	}
	if c.LockTimeout == 0 {
		c.LockTimeout = DefaultLockTimeout
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	return c
}

// validate checks c, naming the variables with prefix.
func (c Config) validate(prefix string) error {
	var errs []error
	switch c.Mode {
	case "", ModeUp, ModeOff, ModeOnly:
	default:
		errs = append(errs, &instance.ConfigError{Variable: prefix + EnvMode, Value: string(c.Mode), Reason: "want up, off or only"})
	}
	switch c.Lock {
	case "", LockSession, LockTable:
	default:
		errs = append(errs, &instance.ConfigError{Variable: prefix + EnvLock, Value: string(c.Lock), Reason: "want session or table"})
	}
	if c.LockTimeout < 0 {
		errs = append(errs, &instance.ConfigError{Variable: prefix + EnvLockTimeout, Value: c.LockTimeout.String(), Reason: "must not be negative"})
	}
	if c.Timeout < 0 {
		errs = append(errs, &instance.ConfigError{Variable: prefix + EnvTimeout, Value: c.Timeout.String(), Reason: "must not be negative"})
	}
	if c.URL != "" && !strings.Contains(c.URL, "://") && !strings.Contains(c.URL, "=") {
		errs = append(errs, &instance.ConfigError{Variable: prefix + EnvURL, Value: redact.ConnString(c.URL),
			Reason: "want a postgres:// URL or a keyword/value connection string"})
	}
	return errors.Join(errs...)
}

// String describes c for logs; it never shows a password.
func (c Config) String() string {
	url := "(the instance's)"
	if c.URL != "" {
		url = redact.ConnString(c.URL)
	}
	return fmt.Sprintf("mode %s, url %s, lock %s, lock timeout %s, timeout %s", c.Mode, url, c.Lock, c.LockTimeout, c.Timeout)
}

// Format prints String for every verb, so that no verb shows the URL's
// password.
func (c Config) Format(f fmt.State, verb rune) {
	fmt.Fprintf(f, fmt.FormatString(f, verb), c.String())
}

// MarshalJSON encodes c with the URL's password masked.
func (c Config) MarshalJSON() ([]byte, error) {
	type plain Config
	p := plain(c)
	if p.URL != "" {
		p.URL = redact.ConnString(p.URL)
	}
	return json.Marshal(p)
}
