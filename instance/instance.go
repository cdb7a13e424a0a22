package instance

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg/health"
)

// HandlesGroup is the fx value group in which every database instance of
// an application, sprocketspg.Module's and each of sprocketspg.Named, puts
// its Handle. An extension's fx option takes the group and attaches to the
// instance it names; an instance that is not in the application is then an
// error of fx.New rather than an extension that never runs.
const HandlesGroup = "sprocketspg_handles"

// EnvPrefix returns the prefix of the environment variables of the
// instance called name: "ORDERS_" for "orders", "" for the default
// instance. Extensions read their own variables with it, so that
// Named("orders") has ORDERS_POSTGRES_MIGRATE as it has ORDERS_POSTGRES_URL.
func EnvPrefix(name string) string {
	if name == "" {
		return ""
	}
	return strings.ToUpper(name) + "_"
}

// Handle is a database instance as an Extension sees it. Its methods are
// safe for concurrent use.
type Handle interface {
	// Name is the instance's name; "" for the default one.
	Name() string
	// Logger is the instance's logger, which names the instance; never nil.
	Logger() *zap.Logger
	// Pool is the instance's pgx pool: set from the moment its first
	// connections are open, including while Extensions start, and nil
	// before that.
	Pool() *pgxpool.Pool
	// ConnConfig returns the configuration of one new connection to the
	// instance's database outside its pool, prepared as the pool prepares
	// its own: SRV hosts resolved, credentials and TLS files read, the
	// application name, statement timeout and search path of the
	// instance's Config, and the user's pgx hooks. The pool's tracers
	// (query logs, observers, deadlines) are not part of it. With url
	// empty it connects where the pool does; otherwise to url, which then
	// replaces the instance's URL with every other setting kept, and whose
	// errors name variable, the environment variable url came from.
	// Connecting is up to the caller: pgx.ConnectConfig, or
	// stdlib.OpenDB for database/sql.
	ConnConfig(ctx context.Context, url, variable string) (*pgx.ConnConfig, error)
	// Attach adds ext to the instance. It fails once the instance has
	// started.
	Attach(ext Extension) error
}

// Extension is something that a database instance starts and stops with
// its pool.
type Extension struct {
	// Name says what the extension is ("migrate"), in the errors and logs
	// of the instance.
	Name string
	// Start, when not nil, runs in the instance's start, after its pool
	// has connected and before the application's readiness opens, within
	// the start context. An error fails start: the extensions started
	// before it are stopped and the pool is closed.
	Start func(ctx context.Context, h Handle) error
	// Stop, when not nil, runs at the beginning of the instance's stop,
	// before its pool closes, within the stop context; extensions stop in
	// the reverse order of their start. It runs only when Start succeeded.
	Stop func(ctx context.Context) error
	// Components are reported by the instance's health checks, under the
	// instance's check names ("postgres:<name>"), from the moment the
	// extension is attached.
	Components []health.Component
}

// ErrNoInstance is matched by the error of Find for a name that no
// instance of the application has.
var ErrNoInstance = errors.New("no such database instance in the application")

// Find returns the Handle among handles (HandlesGroup) of the instance
// called name, or an error, matching ErrNoInstance, that says which
// option adds it: sprocketspg.Module for "", sprocketspg.Named(name)
// otherwise.
func Find(handles []Handle, name string) (Handle, error) {
	for _, h := range handles {
		if h.Name() == name {
			return h, nil
		}
	}
	if name == "" {
		return nil, fmt.Errorf("%w: the default instance: add sprocketspg.Module", ErrNoInstance)
	}
	return nil, fmt.Errorf("%w: instance %q: add sprocketspg.Named(%q)", ErrNoInstance, name, name)
}

// Tag returns the fx tag of the values of the instance called name,
// `name:"<name>"`, and "" for the default instance, whose values have no
// name.
func Tag(name string) string {
	if name == "" {
		return ""
	}
	return `name:"` + name + `"`
}

// ModuleName is the name of package base's fx module for the instance
// called name: base for the default instance, base_<name> for another, so
// that fx's errors say whose module failed.
func ModuleName(base, name string) string {
	if name == "" {
		return base
	}
	return base + "_" + name
}
