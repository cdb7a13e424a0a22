package sprocketspg

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v10"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zapcore"

	"github.com/sprockets/sprocketspg/internal/redact"

	"github.com/sprockets/sprocketspg/instance"
	"github.com/sprockets/sprocketspg/internal/envconfig"
)

// Config holds the settings of a Pool. LoadConfig fills it from POSTGRES_*
// environment variables; code may change any field before the pool is
// built (with fx.Decorate or fx.Replace under fx, or directly before New).
//
// Printing a Config with fmt, zap or encoding/json never shows the
// password held in URL.
type Config struct {
	// URL is the server to connect to: a postgres:// or postgresql:// URL,
	// a postgresql+srv:// or aws+srv:// URL resolved through DNS SRV
	// records, or a libpq keyword/value string. Required.
	URL string `env:"POSTGRES_URL"`

	// MaxPoolSize is the most connections the pool opens at once.
	MaxPoolSize int `env:"POSTGRES_MAX_POOL_SIZE" envDefault:"10"`

	// MinPoolSize is the number of connections opened at start and kept
	// open while the pool is idle.
	MinPoolSize int `env:"POSTGRES_MIN_POOL_SIZE" envDefault:"1"`

	// ConnectionTimeout bounds the time spent establishing one connection,
	// and the time start-up keeps retrying an unreachable server.
	// LoadConfig also reads it from POSTGRES_CONNECT_TIMEOUT, the name
	// sprockets-postgres 1.8.1 reads.
	ConnectionTimeout time.Duration `env:"POSTGRES_CONNECTION_TIMEOUT" envDefault:"10s"`

	// ConnectionTTL is the age after which a connection is closed and
	// replaced (with up to 10% random jitter, so connections opened
	// together are not all recycled at once).
	ConnectionTTL time.Duration `env:"POSTGRES_CONNECTION_TTL" envDefault:"300s"`

	// QueryTimeout is the server-side statement_timeout of every
	// connection. A caller's context deadline that is earlier wins. A
	// statement whose answer has not arrived within QueryTimeout plus
	// ConnectionTimeout fails on the client side too, with the connection
	// closed, so a query cannot hang on a server host that has vanished.
	// Raise both together: a session that raises statement_timeout itself
	// should use txn.Timeout, which raises the client bound with it.
	QueryTimeout time.Duration `env:"POSTGRES_QUERY_TIMEOUT" envDefault:"60s"`

	// HStore registers the hstore extension's type on every new
	// connection, so hstore values decode to map[string]*string.
	HStore bool `env:"POSTGRES_HSTORE" envDefault:"false"`

	// JSON decodes json and jsonb values in query results; when false they
	// come back as the JSON text.
	JSON bool `env:"POSTGRES_JSON" envDefault:"false"`

	// UUID returns uuid values as github.com/google/uuid.UUID; when false
	// they come back in their string form.
	UUID bool `env:"POSTGRES_UUID" envDefault:"true"`

	// LogQueries logs every statement the pool sends, with its duration
	// and command tag or error, at info level through the pool's logger.
	LogQueries bool `env:"POSTGRES_LOG_QUERIES" envDefault:"false"`

	// LogQueryArgs adds the arguments to the statement logs. Off by
	// default: arguments often hold personal data or secrets.
	LogQueryArgs bool `env:"POSTGRES_LOG_QUERY_ARGS" envDefault:"false"`

	// SlowQueryThreshold logs, at warn level, every statement that takes
	// longer, whether or not LogQueries is on. 0 turns it off.
	SlowQueryThreshold time.Duration `env:"POSTGRES_SLOW_QUERY_THRESHOLD" envDefault:"0"`

	// QueryExecMode is how pgx sends queries: cache_statement (the
	// default), cache_describe, describe_exec, exec or simple_protocol.
	// Behind a pooler in transaction mode, such as PgBouncer, use exec or
	// simple_protocol: prepared statements do not survive a change of
	// server connection. Empty keeps the URL's default_query_exec_mode, if
	// any, else pgx's default.
	QueryExecMode string `env:"POSTGRES_QUERY_EXEC_MODE"`

	// ReadURL, when set, is a read replica (or a list of them, as URL
	// allows) that Pool.Reader hands out for read-only work while it
	// answers; the rest of the settings apply to it as they do to URL.
	// Optional.
	ReadURL string `env:"POSTGRES_READ_URL"`

	// PasswordFile names a file that holds the password. It is read for
	// every new connection, so a rotated secret (a Kubernetes or Vault
	// file) reaches the pool as ConnectionTTL replaces connections, without
	// a restart. Trailing line breaks are not part of the password. A URL
	// with a password of its own and a PasswordFile together are refused.
	PasswordFile string `env:"POSTGRES_PASSWORD_FILE"`

	// SSLMode, SSLRootCert, SSLCert and SSLKey are libpq's sslmode,
	// sslrootcert, sslcert and sslkey. Set here they win over the URL's, and
	// a URL that says otherwise is refused. The files are read for every
	// new connection, so rotated certificates are picked up without a
	// restart.
	SSLMode     string `env:"POSTGRES_SSLMODE"`
	SSLRootCert string `env:"POSTGRES_SSLROOTCERT"`
	SSLCert     string `env:"POSTGRES_SSLCERT"`
	SSLKey      string `env:"POSTGRES_SSLKEY"`

	// ApplicationName is the application_name of every connection, which
	// pg_stat_activity shows. Empty means the URL's application_name, else
	// $SERVICE, else the executable's name.
	ApplicationName string `env:"POSTGRES_APPLICATION_NAME"`

	// SearchPath is the search_path of every connection, sent in the
	// start-up message like QueryTimeout (so it does not pass PgBouncer in
	// transaction mode either). Empty keeps the server's.
	SearchPath string `env:"POSTGRES_SEARCH_PATH"`

	// MaxConnIdleTime is how long a connection may sit idle before it is
	// closed, while more than MinPoolSize are open. 0 keeps pgx's 30m.
	MaxConnIdleTime time.Duration `env:"POSTGRES_MAX_CONN_IDLE_TIME" envDefault:"30m"`

	// MinIdleConns is how many idle connections the pool keeps ready,
	// opening more in the background when fewer are idle.
	MinIdleConns int `env:"POSTGRES_MIN_IDLE_CONNS" envDefault:"0"`

	// HealthCheckPeriod is how often idle connections are checked for age
	// and idleness and the pool is topped up to MinPoolSize and
	// MinIdleConns. 0 keeps pgx's 1m. It is kept within ConnectionTTL.
	HealthCheckPeriod time.Duration `env:"POSTGRES_HEALTH_CHECK_PERIOD" envDefault:"1m"`

	// AcquireTimeout bounds how long Execute, Callproc and Transaction wait
	// for a free connection; then they fail with an error matching
	// ErrPoolExhausted, so that a starved pool fails fast instead of
	// holding every request to its own deadline. 0 waits as long as the
	// caller's context allows.
	AcquireTimeout time.Duration `env:"POSTGRES_ACQUIRE_TIMEOUT" envDefault:"0"`

	// HostConnectTimeout is how long one host may take to answer, where
	// ConnectionTimeout is the whole attempt: each host of a multi-host
	// URL gets this long to accept a new connection before the next is
	// tried (pgx's connect_timeout, which counts per host), pgxpool's
	// ping of an idle connection gets this long, a call whose context
	// ended waits this long for the server to act on its cancel request
	// before the connection is closed, and a statement that
	// has waited this long for its answer makes the pool ask the host
	// whether it still answers at all (a probe that needs no login); a
	// host that does not answer the probe within it is taken for frozen
	// or gone: the statements waiting on it fail with
	// ErrServerNotResponding, its other connections are dropped, and new
	// connections try it last. 0 means ConnectionTimeout. An HA setup
	// sets it to a second or two (see the README's failover section).
	HostConnectTimeout time.Duration `env:"POSTGRES_HOST_CONNECT_TIMEOUT" envDefault:"0"`
}

// Environment variable names, for error messages and documentation.
const (
	EnvURL               = "POSTGRES_URL"
	EnvMaxPoolSize       = "POSTGRES_MAX_POOL_SIZE"
	EnvMinPoolSize       = "POSTGRES_MIN_POOL_SIZE"
	EnvConnectionTimeout = "POSTGRES_CONNECTION_TIMEOUT"
	// EnvConnectTimeout is the name sprockets-postgres 1.8.1 reads for
	// ConnectionTimeout (its documentation says POSTGRES_CONNECTION_TIMEOUT);
	// LoadConfig accepts either, and both only when they agree.
	EnvConnectTimeout     = "POSTGRES_CONNECT_TIMEOUT"
	EnvConnectionTTL      = "POSTGRES_CONNECTION_TTL"
	EnvQueryTimeout       = "POSTGRES_QUERY_TIMEOUT"
	EnvHStore             = "POSTGRES_HSTORE"
	EnvJSON               = "POSTGRES_JSON"
	EnvUUID               = "POSTGRES_UUID"
	EnvLogQueries         = "POSTGRES_LOG_QUERIES"
	EnvLogQueryArgs       = "POSTGRES_LOG_QUERY_ARGS"
	EnvSlowQuery          = "POSTGRES_SLOW_QUERY_THRESHOLD"
	EnvQueryExecMode      = "POSTGRES_QUERY_EXEC_MODE"
	EnvReadURL            = "POSTGRES_READ_URL"
	EnvPasswordFile       = "POSTGRES_PASSWORD_FILE"
	EnvSSLMode            = "POSTGRES_SSLMODE"
	EnvSSLRootCert        = "POSTGRES_SSLROOTCERT"
	EnvSSLCert            = "POSTGRES_SSLCERT"
	EnvSSLKey             = "POSTGRES_SSLKEY"
	EnvApplicationName    = "POSTGRES_APPLICATION_NAME"
	EnvSearchPath         = "POSTGRES_SEARCH_PATH"
	EnvMaxConnIdleTime    = "POSTGRES_MAX_CONN_IDLE_TIME"
	EnvMinIdleConns       = "POSTGRES_MIN_IDLE_CONNS"
	EnvHealthCheckPeriod  = "POSTGRES_HEALTH_CHECK_PERIOD"
	EnvAcquireTimeout     = "POSTGRES_ACQUIRE_TIMEOUT"
	EnvHostConnectTimeout = "POSTGRES_HOST_CONNECT_TIMEOUT"
)

// ErrInvalidConfig is matched by every error LoadConfig and Validate return
// for a bad setting, and by those of the packages that extend an instance
// (migrate): errors.Is(err, ErrInvalidConfig).
var ErrInvalidConfig = instance.ErrInvalidConfig

// ConfigError describes one bad setting. Variable is the environment
// variable that holds it (also when the value was set in code), Value the
// offending value with any password masked. It is instance.ConfigError,
// which the packages that extend an instance return too.
type ConfigError = instance.ConfigError

// forEachConfigError calls fn with every *ConfigError in err's tree,
// joined or wrapped.
func forEachConfigError(err error, fn func(*ConfigError)) {
	switch e := err.(type) {
	case nil:
		return
	case *ConfigError:
		fn(e)
	case interface{ Unwrap() []error }:
		for _, inner := range e.Unwrap() {
			forEachConfigError(inner, fn)
		}
		return
	}
	forEachConfigError(errors.Unwrap(err), fn)
}

// LoadConfig reads the POSTGRES_* environment variables into a Config,
// applying the defaults of the configuration table for unset ones.
//
// Durations accept plain seconds ("10", "1.5") as well as Go durations
// ("1500ms"); booleans accept y, yes, t, true, on, 1 and n, no, f, false,
// off, 0 in any case. ConnectionTimeout is read from
// POSTGRES_CONNECTION_TIMEOUT or POSTGRES_CONNECT_TIMEOUT; two different
// values are an error naming both.
//
// Every variable that is set is checked, for its syntax and for the rules
// of Validate, and every bad one is reported in one joined error: each part
// a *ConfigError that names the variable and the value as it was typed
// (a URL's password masked). LoadConfig does not require POSTGRES_URL, so
// that code can supply it; Validate does. A variable set to the empty
// string counts as unset.
func LoadConfig() (Config, error) {
	return loadConfig(env.Options{})
}

// LoadConfigPrefix is LoadConfig for the variables with prefix in front of
// each name: LoadConfigPrefix("ORDERS_") reads ORDERS_POSTGRES_URL,
// ORDERS_POSTGRES_MAX_POOL_SIZE and the rest, with the same defaults and
// rules, and its errors name the prefixed variables. It is how Named
// instances are configured (EnvPrefix gives an instance's prefix); an
// empty prefix is LoadConfig.
func LoadConfigPrefix(prefix string) (Config, error) {
	return loadConfig(env.Options{Prefix: prefix})
}

// loadConfig is LoadConfig with the environment and the prefix
// injectable.
func loadConfig(opts env.Options) (Config, error) {
	prefix := opts.Prefix
	var cfg Config
	opts.FuncMap = map[reflect.Type]env.ParserFunc{
		reflect.TypeOf(time.Duration(0)): func(v string) (any, error) { return parseSeconds(v) },
		reflect.TypeOf(false):            func(v string) (any, error) { return parseBool(v) },
		reflect.TypeOf(0):                func(v string) (any, error) { return parseInt(v) },
	}
	var errs []error
	// bad holds the variables already reported, so that a value that does
	// not parse is not also reported for what its zero value breaks.
	bad := map[string]bool{}
	if err := env.ParseWithOptions(&cfg, opts); err != nil {
		for _, e := range translateEnvError(err, opts) {
			var ce *ConfigError
			if errors.As(e, &ce) {
				bad[ce.Variable] = true
			}
			errs = append(errs, e)
		}
	}
	if err := applyConnectTimeout(&cfg, opts, bad); err != nil {
		errs = append(errs, err)
	}
	// The value rules apply to what the environment set; a value left to
	// its default is fine, and one code will set is Validate's to check.
	for _, ce := range cfg.problems(prefix) {
		variable := ce.Variable
		if variable == prefix+EnvConnectionTimeout && !isSet(opts, variable) {
			variable = prefix + EnvConnectTimeout
		}
		raw, set := lookupSet(opts, variable)
		if !set || bad[variable] {
			continue
		}
		ce.Variable, ce.Value = variable, raw
		if variable == prefix+EnvURL || variable == prefix+EnvReadURL {
			ce.Value = redact.ConnString(raw)
		}
		errs = append(errs, ce)
	}
	// What pgx and the TLS settings make of the URLs, unless the URLs
	// themselves were reported: a URL that is wrong once is reported once.
	if cfg.URL != "" && !reported(errs, prefix+EnvURL) && !reported(errs, prefix+EnvReadURL) {
		errs = append(errs, cfg.connectionProblems(prefix)...)
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return cfg, nil
}

// reported says whether errs has a ConfigError for variable.
func reported(errs []error, variable string) bool {
	for _, err := range errs {
		var ce *ConfigError
		if errors.As(err, &ce) && ce.Variable == variable {
			return true
		}
	}
	return false
}

// applyConnectTimeout reads POSTGRES_CONNECT_TIMEOUT, the seed's own name
// for the connection timeout, into cfg.
func applyConnectTimeout(cfg *Config, opts env.Options, bad map[string]bool) error {
	alias, documented := opts.Prefix+EnvConnectTimeout, opts.Prefix+EnvConnectionTimeout
	raw, set := lookupSet(opts, alias)
	if !set {
		return nil
	}
	d, err := parseSeconds(raw)
	if err != nil {
		bad[alias] = true
		return &ConfigError{Variable: alias, Value: raw, Reason: err.Error()}
	}
	other, otherSet := lookupSet(opts, documented)
	switch {
	case !otherSet:
		cfg.ConnectionTimeout = d
	case bad[documented]:
		// Already reported; which of the two wins cannot matter yet.
	case d != cfg.ConnectionTimeout:
		bad[alias] = true
		return &ConfigError{Variable: alias, Value: raw,
			Reason: fmt.Sprintf("differs from %s (%q): they are two names for one setting; set one of them",
				documented, other)}
	}
	return nil
}

// translateEnvError turns env's field-named errors into ConfigErrors that
// name the variable and the raw value.
func translateEnvError(err error, opts env.Options) []error {
	params, perr := env.GetFieldParamsWithOptions(&Config{}, env.Options{Prefix: opts.Prefix})
	if perr != nil {
		return []error{fmt.Errorf("%w: %w", ErrInvalidConfig, err)}
	}
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return []error{fmt.Errorf("%w: %w", ErrInvalidConfig, err)}
	}
	t := reflect.TypeOf(Config{})
	var out []error
	for _, e := range agg.Errors {
		var pe env.ParseError
		if !errors.As(e, &pe) {
			out = append(out, fmt.Errorf("%w: %w", ErrInvalidConfig, e))
			continue
		}
		variable := pe.Name
		for i := 0; i < t.NumField(); i++ {
			if t.Field(i).Name == pe.Name {
				variable = params[i].Key
			}
		}
		raw := lookupEnv(opts, variable)
		if variable == opts.Prefix+EnvURL || variable == opts.Prefix+EnvReadURL {
			raw = redact.ConnString(raw)
		}
		ce := &ConfigError{Variable: variable, Value: raw, Reason: describeType(pe.Type)}
		var reason *parseReason
		if errors.As(pe.Err, &reason) {
			ce.Reason = reason.Msg
		} else {
			ce.Err = pe.Err
		}
		out = append(out, ce)
	}
	return out
}

// lookupSet returns the value of the environment variable key and whether
// it is set to something other than the empty string.
func lookupSet(opts env.Options, key string) (string, bool) {
	v := lookupEnv(opts, key)
	return v, v != ""
}

func isSet(opts env.Options, key string) bool {
	_, set := lookupSet(opts, key)
	return set
}

func lookupEnv(opts env.Options, key string) string {
	if opts.Environment != nil {
		return opts.Environment[key]
	}
	return os.Getenv(key)
}

func describeType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "want a whole number"
	default:
		return "want a " + t.String()
	}
}

// parseReason is a parse failure whose message already says what was
// wanted.
type parseReason = envconfig.Reason

// parseSeconds accepts seconds as a number, the way the Python original
// read its timeouts, or a Go duration string.
var parseSeconds = envconfig.ParseSeconds

// parseInt accepts a whole number in decimal.
func parseInt(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return 0, &parseReason{Msg: "want a whole number"}
	}
	return n, nil
}

// parseBool accepts what Python's distutils strtobool accepted.
func parseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "y", "yes", "t", "true", "on", "1":
		return true, nil
	case "n", "no", "f", "false", "off", "0":
		return false, nil
	}
	return false, &parseReason{Msg: "want one of y, yes, t, true, on, 1, n, no, f, false, off, 0"}
}

// urlScheme matches a URL's scheme at the start of a connection string; a
// string without one is a libpq keyword/value string, as pgx decides.
var urlScheme = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*)://`)

// validSchemes are the URL schemes Validate accepts.
var validSchemes = map[string]bool{
	"postgres":       true,
	"postgresql":     true,
	"postgresql+srv": true,
	"aws+srv":        true,
}

// queryExecModes maps the names QueryExecMode accepts to pgx's modes.
var queryExecModes = map[string]pgx.QueryExecMode{
	"":                0, // keep the URL's or pgx's default
	"cache_statement": pgx.QueryExecModeCacheStatement,
	"cache_describe":  pgx.QueryExecModeCacheDescribe,
	"describe_exec":   pgx.QueryExecModeDescribeExec,
	"exec":            pgx.QueryExecModeExec,
	"simple_protocol": pgx.QueryExecModeSimpleProtocol,
}

// Validate reports every setting that cannot work, joined into one error;
// each part is a *ConfigError that names its environment variable. It
// returns nil for a usable Config.
func (c Config) Validate() error {
	return c.validate("")
}

// validate is Validate for the instance whose variables carry prefix.
func (c Config) validate(prefix string) error {
	problems := c.problems(prefix)
	errs := make([]error, len(problems))
	for i, p := range problems {
		errs[i] = p
	}
	return errors.Join(errs...)
}

// problems lists what Validate reports, one entry per bad setting, naming
// the variables with prefix in front.
func (c Config) problems(prefix string) []*ConfigError {
	var errs []*ConfigError
	bad := func(variable, value, reason string) {
		errs = append(errs, &ConfigError{Variable: variable, Value: value, Reason: reason})
	}
	if err := validateURL(EnvURL, c.URL); err != nil {
		errs = append(errs, err)
	}
	if c.ReadURL != "" {
		if err := validateURL(EnvReadURL, c.ReadURL); err != nil {
			errs = append(errs, err)
		}
	}

	if c.MaxPoolSize < 1 {
		bad(EnvMaxPoolSize, strconv.Itoa(c.MaxPoolSize), "must be at least 1")
	}
	if c.MinPoolSize < 0 {
		bad(EnvMinPoolSize, strconv.Itoa(c.MinPoolSize), "must not be negative")
	}
	if c.MaxPoolSize >= 1 && c.MinPoolSize > c.MaxPoolSize {
		bad(EnvMinPoolSize, strconv.Itoa(c.MinPoolSize),
			fmt.Sprintf("must not exceed %s (%d)", EnvMaxPoolSize, c.MaxPoolSize))
	}
	if c.MaxPoolSize > math.MaxInt32 {
		bad(EnvMaxPoolSize, strconv.Itoa(c.MaxPoolSize), "is too large")
	}
	for _, d := range []struct {
		variable string
		value    time.Duration
	}{
		{EnvConnectionTimeout, c.ConnectionTimeout},
		{EnvConnectionTTL, c.ConnectionTTL},
		{EnvQueryTimeout, c.QueryTimeout},
	} {
		if d.value <= 0 {
			bad(d.variable, d.value.String(), "must be greater than zero")
		}
	}
	if c.SlowQueryThreshold < 0 {
		bad(EnvSlowQuery, c.SlowQueryThreshold.String(), "must not be negative (0 turns it off)")
	}
	if _, ok := queryExecModes[c.QueryExecMode]; !ok {
		bad(EnvQueryExecMode, c.QueryExecMode,
			"want one of cache_statement, cache_describe, describe_exec, exec, simple_protocol")
	}
	for _, d := range []struct {
		variable string
		value    time.Duration
	}{
		{EnvMaxConnIdleTime, c.MaxConnIdleTime},
		{EnvHealthCheckPeriod, c.HealthCheckPeriod},
		{EnvAcquireTimeout, c.AcquireTimeout},
		{EnvHostConnectTimeout, c.HostConnectTimeout},
	} {
		if d.value < 0 {
			bad(d.variable, d.value.String(), "must not be negative")
		}
	}
	if c.MinIdleConns < 0 {
		bad(EnvMinIdleConns, strconv.Itoa(c.MinIdleConns), "must not be negative")
	}
	if c.MaxPoolSize >= 1 && c.MinIdleConns > c.MaxPoolSize {
		bad(EnvMinIdleConns, strconv.Itoa(c.MinIdleConns),
			fmt.Sprintf("must not exceed %s (%d)", EnvMaxPoolSize, c.MaxPoolSize))
	}
	if c.ConnectionTimeout > 0 && c.HostConnectTimeout > c.ConnectionTimeout {
		bad(EnvHostConnectTimeout, c.HostConnectTimeout.String(),
			fmt.Sprintf("must not exceed %s (%s), the whole connection attempt", EnvConnectionTimeout, c.ConnectionTimeout))
	}
	if c.QueryTimeout > 0 && c.QueryTimeout < time.Millisecond {
		bad(EnvQueryTimeout, c.QueryTimeout.String(), "must be at least 1ms (statement_timeout counts milliseconds)")
	}
	if prefix != "" {
		for _, e := range errs {
			e.Variable = prefix + e.Variable
			// A reason may name another variable of the same instance.
			e.Reason = strings.ReplaceAll(e.Reason, "POSTGRES_", prefix+"POSTGRES_")
		}
	}
	return errs
}

func validateURL(variable, raw string) *ConfigError {
	if strings.TrimSpace(raw) == "" {
		return &ConfigError{
			Variable: variable,
			Reason:   "is required: set it to the server's URL, for example postgresql://user@localhost:5432/dbname",
		}
	}
	m := urlScheme.FindStringSubmatch(raw)
	if m == nil {
		// A libpq keyword/value string: pgx checks its syntax when the pool
		// is built; here it need only look like key=value pairs.
		if !strings.Contains(raw, "=") {
			return &ConfigError{Variable: variable, Value: redact.ConnString(raw),
				Reason: "want a URL (postgresql://...) or a libpq keyword/value string (host=... dbname=...)"}
		}
		return nil
	}
	scheme := strings.ToLower(m[1])
	if !validSchemes[scheme] {
		return &ConfigError{Variable: variable, Value: redact.ConnString(raw),
			Reason: fmt.Sprintf("unsupported scheme %q: want postgres, postgresql, postgresql+srv or aws+srv", scheme)}
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse quotes the input in its message; keep only its reason.
		var ue *url.Error
		reason := "not a valid URL"
		if errors.As(err, &ue) {
			reason = "not a valid URL: " + ue.Err.Error()
		}
		return &ConfigError{Variable: variable, Value: redact.ConnString(raw), Reason: reason}
	}
	if strings.HasSuffix(scheme, "+srv") && u.Host == "" {
		return &ConfigError{Variable: variable, Value: redact.ConnString(raw),
			Reason: "an SRV URL needs a host name to look up"}
	}
	return nil
}

// hostConnectTimeout is HostConnectTimeout with 0 meaning
// ConnectionTimeout.
func (c Config) hostConnectTimeout() time.Duration {
	if c.HostConnectTimeout > 0 {
		return c.HostConnectTimeout
	}
	return c.ConnectionTimeout
}

// String returns the Config with the URL's password masked.
func (c Config) String() string {
	return fmt.Sprintf("{URL:%s MaxPoolSize:%d MinPoolSize:%d ConnectionTimeout:%s ConnectionTTL:%s QueryTimeout:%s HStore:%t JSON:%t UUID:%t"+
		" LogQueries:%t LogQueryArgs:%t SlowQueryThreshold:%s QueryExecMode:%s ReadURL:%s"+
		" PasswordFile:%s SSLMode:%s SSLRootCert:%s SSLCert:%s SSLKey:%s ApplicationName:%s SearchPath:%s"+
		" MaxConnIdleTime:%s MinIdleConns:%d HealthCheckPeriod:%s AcquireTimeout:%s HostConnectTimeout:%s}",
		redact.ConnString(c.URL), c.MaxPoolSize, c.MinPoolSize, c.ConnectionTimeout,
		c.ConnectionTTL, c.QueryTimeout, c.HStore, c.JSON, c.UUID,
		c.LogQueries, c.LogQueryArgs, c.SlowQueryThreshold, c.QueryExecMode, redact.ConnString(c.ReadURL),
		c.PasswordFile, c.SSLMode, c.SSLRootCert, c.SSLCert, c.SSLKey, c.ApplicationName, c.SearchPath,
		c.MaxConnIdleTime, c.MinIdleConns, c.HealthCheckPeriod, c.AcquireTimeout, c.HostConnectTimeout)
}

// Format makes every fmt verb print the masked form: %#v as
// sprocketspg.Config{...}, any other verb (%v, %s, %q, %x, with their
// flags and width) as it would print String's text.
func (c Config) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprintf(f, "sprocketspg.Config%s", c.String())
		return
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), c.String())
}

// MarshalLogObject writes the Config to a zap log entry, password masked.
func (c Config) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("url", redact.ConnString(c.URL))
	enc.AddInt("max_pool_size", c.MaxPoolSize)
	enc.AddInt("min_pool_size", c.MinPoolSize)
	enc.AddDuration("connection_timeout", c.ConnectionTimeout)
	enc.AddDuration("connection_ttl", c.ConnectionTTL)
	enc.AddDuration("query_timeout", c.QueryTimeout)
	enc.AddBool("hstore", c.HStore)
	enc.AddBool("json", c.JSON)
	enc.AddBool("uuid", c.UUID)
	enc.AddBool("log_queries", c.LogQueries)
	enc.AddBool("log_query_args", c.LogQueryArgs)
	enc.AddDuration("slow_query_threshold", c.SlowQueryThreshold)
	enc.AddString("query_exec_mode", c.QueryExecMode)
	enc.AddString("read_url", redact.ConnString(c.ReadURL))
	enc.AddString("password_file", c.PasswordFile)
	enc.AddString("sslmode", c.SSLMode)
	enc.AddString("sslrootcert", c.SSLRootCert)
	enc.AddString("sslcert", c.SSLCert)
	enc.AddString("sslkey", c.SSLKey)
	enc.AddString("application_name", c.ApplicationName)
	enc.AddString("search_path", c.SearchPath)
	enc.AddDuration("max_conn_idle_time", c.MaxConnIdleTime)
	enc.AddInt("min_idle_conns", c.MinIdleConns)
	enc.AddDuration("health_check_period", c.HealthCheckPeriod)
	enc.AddDuration("acquire_timeout", c.AcquireTimeout)
	enc.AddDuration("host_connect_timeout", c.HostConnectTimeout)
	return nil
}

// MarshalJSON encodes the Config with the URL's password masked, so that
// reflection-based encoders (zap.Reflect, debug endpoints) cannot leak it.
func (c Config) MarshalJSON() ([]byte, error) {
	type plain Config // drops the methods, avoiding recursion
	p := plain(c)
	p.URL = redact.ConnString(c.URL)
	p.ReadURL = redact.ConnString(c.ReadURL)
	return json.Marshal(p)
}
