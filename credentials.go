package sprocketspg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sprockets/sprocketspg/internal/redact"
)

// ErrCredentials is matched (errors.Is) by the error of a connection
// attempt whose credentials could not be had: a PasswordFile that cannot
// be read, or a WithCredentials function that failed. Start fails on the
// first such error rather than retrying it as an unreachable server.
var ErrCredentials = errors.New("postgres credentials unavailable")

// CredentialsFunc returns the user and the password of a new connection:
// a short-lived token such as an AWS RDS IAM authentication token or a
// Cloud SQL IAM token, or a secret fetched from a vault. An empty user
// keeps the URL's. Its error should say what failed without the secret.
type CredentialsFunc func(ctx context.Context) (user, password string, err error)

// WithCredentials makes the pool call fn for every new connection, after
// SRV resolution and before TLS is set up, within Config.ConnectionTimeout,
// and log in with what it returns: rotated or short-lived credentials
// reach the pool as ConnectionTTL replaces connections, without a restart.
// An error of fn fails that attempt with an error matching ErrCredentials;
// at start it fails start at once. fn is called concurrently when several
// connections open at once (as MinPoolSize's do at start), so it must be
// safe for concurrent use. It cannot be combined with Config.PasswordFile,
// and a nil fn is ignored.
func WithCredentials(fn CredentialsFunc) Option {
	return optionFunc(func(o *options) {
		if fn != nil {
			o.credentials, o.instanceCredentials = fn, nil
		}
	})
}

// WithInstanceCredentials is WithCredentials for an application with
// several instances: newFn is called once per pool with the name of the
// pool's instance ("" for the default; see Named and WithName) and returns
// the CredentialsFunc of that instance, or nil for an instance that logs in
// with its URL's password or its PasswordFile. It is for an option shared
// by every instance, from OptionsGroup: a WithCredentials there applies to
// every instance alike. When both are given, the one given last applies.
func WithInstanceCredentials(newFn func(instance string) CredentialsFunc) Option {
	return optionFunc(func(o *options) {
		if newFn != nil {
			o.credentials, o.instanceCredentials = nil, newFn
		}
	})
}

// credentialsFunc is the CredentialsFunc of the pool o builds, if any.
func (o options) credentialsFunc() CredentialsFunc {
	if o.instanceCredentials != nil {
		return o.instanceCredentials(o.name)
	}
	return o.credentials
}

// credentials sets the user and password of each new connection from a
// password file or a CredentialsFunc.
type credentials struct {
	file     string // the password file, "" for none
	variable string // its variable, for errors
	fn       CredentialsFunc
	timeout  time.Duration
	// lastUser is the user fn last returned, for start's errors.
	lastUser atomic.Pointer[string]
}

// newCredentials returns what sets each new connection's credentials, or
// nil when the URL's are used as they are. It does no I/O.
func newCredentials(cfg Config, prefix string, o options) (*credentials, error) {
	variable := prefix + EnvPasswordFile
	fn := o.credentialsFunc()
	switch {
	case cfg.PasswordFile == "" && fn == nil:
		return nil, nil
	case cfg.PasswordFile != "" && fn != nil:
		return nil, &ConfigError{Variable: variable, Value: cfg.PasswordFile,
			Reason: "is set, and so is WithCredentials: use one source of the password"}
	case cfg.PasswordFile != "" && urlHasPassword(cfg.URL):
		return nil, &ConfigError{Variable: variable, Value: cfg.PasswordFile,
			Reason: "is set, and " + prefix + EnvURL + " holds a password too: keep one of them"}
	}
	return &credentials{file: cfg.PasswordFile, variable: variable, fn: fn, timeout: cfg.ConnectionTimeout}, nil
}

// urlHasPassword reports whether a connection string carries a password.
func urlHasPassword(raw string) bool {
	return redact.Password(raw) != ""
}

// beforeConnect reads the password file, or calls the function, for cc.
func (c *credentials) beforeConnect(ctx context.Context, cc *pgx.ConnConfig) error {
	if c.file != "" {
		data, err := os.ReadFile(c.file)
		if err != nil {
			// os's error names the file and says why; the content is never
			// in it.
			return fmt.Errorf("%w: read the password file of %s: %w", ErrCredentials, c.variable, err)
		}
		cc.Password = strings.TrimRight(string(data), "\r\n")
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	user, password, err := c.fn(ctx)
	if err != nil {
		return fmt.Errorf("%w: the WithCredentials function failed: %w", ErrCredentials, err)
	}
	if user != "" {
		cc.User = user
		c.lastUser.Store(&user)
	}
	cc.Password = password
	return nil
}
