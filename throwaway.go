package sprocketspg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg/internal/redact"
)

// throwawayStartTimeout bounds the start of a throwaway server, which
// happens while fx.New builds the graph and so has no context of its own.
// It leaves room for pulling a Docker image.
const throwawayStartTimeout = 2 * time.Minute

// throwawayValidationURL stands in for the missing URL while the rest of
// the Config is checked, before any server is started.
const throwawayValidationURL = "postgres://localhost/postgres?sslmode=disable"

// ThrowawayStarter starts a throwaway PostgreSQL server and returns its
// URL and a function that stops it and removes its files. Package
// throwaway's Starter returns one.
type ThrowawayStarter func(ctx context.Context) (url string, stop func() error, err error)

// ThrowawayWhenUnset returns an fx option for development only: when the
// Config that NewPool gets has no URL (POSTGRES_URL unset and no URL set
// in code), NewPool calls start to get a throwaway PostgreSQL server, uses
// its URL and stops the server, removing its data, when the application
// stops. When the URL is set nothing happens: start is not called. Every
// instance without a URL, Module's and each Named one (whose variable is
// ORDERS_POSTGRES_URL, say), gets a server of its own.
//
// It is never on by default, and it must never be used in production: a
// production service without POSTGRES_URL has to fail, not quietly run on
// an empty database that vanishes on stop. Every start is logged at warn
// level through the graph's *zap.Logger (on stderr without one), with the
// URL, any password masked.
//
// Use it next to Module with package throwaway, which the root package
// does not import, so that only applications that ask for a throwaway
// server link it (and the Docker client):
//
//	fx.New(
//		sprocketspg.Module,
//		sprocketspg.ThrowawayWhenUnset(throwaway.Starter()),
//		...
//	)
//
// start gets a context bounded to two minutes, since fx.New has none.
// When it fails, fx.New fails with an error that says POSTGRES_URL is
// unset and why no throwaway server could be started. The rest of the
// Config is checked first (Validate's rules, and the TLS settings against
// the server's sslmode=disable), so such a bad setting fails fx.New
// without a server being started; a conflict with an option, such as
// POSTGRES_PASSWORD_FILE with WithCredentials, is found only once the
// server has started. The server is removed when the application stops,
// after the pool has closed, and when start-up fails; if fx.New fails for
// another reason after the server has started, it lives until the process
// exits (a local server dies with the process and the next start removes
// its files). The Config in the graph keeps its empty URL; Pool.Config
// reports the throwaway server's.
func ThrowawayWhenUnset(start ThrowawayStarter) fx.Option {
	if start == nil {
		return fx.Error(errors.New("sprocketspg.ThrowawayWhenUnset: the start function is nil"))
	}
	return fx.Supply(start)
}

// useThrowaway gives c, which has no URL, the URL of a server from start,
// and stops that server when the application stops.
func useThrowaway(name string, c Config, start ThrowawayStarter, lc fx.Lifecycle, logger *zap.Logger) (Config, error) {
	variable := EnvPrefix(name) + EnvURL
	// A server started here is stopped by a stop hook, which never runs
	// when fx.New fails; a Config that newPool would refuse fails before
	// there is a server to leave behind.
	check := c
	check.URL = throwawayValidationURL
	if err := check.validate(EnvPrefix(name)); err != nil {
		return Config{}, err
	}
	// The TLS settings too: the server's URL turns TLS off, which a
	// POSTGRES_SSLMODE that asks for it contradicts.
	if _, err := newTLSFiles(check, EnvPrefix(name)); err != nil {
		return Config{}, err
	}

	ctx, cancel := context.WithTimeout(context.Background(), throwawayStartTimeout)
	defer cancel()
	url, stop, err := start(ctx)
	if err == nil && strings.TrimSpace(url) == "" {
		err = errors.New("the start function returned no URL")
	}
	if err != nil {
		if stop != nil {
			_ = stop()
		}
		return Config{}, fmt.Errorf("%s is unset and no throwaway PostgreSQL could be started: %w", variable, err)
	}

	warnThrowaway(logger, variable, url)
	// Appended before the pool's hooks, so it runs after the pool has
	// closed; fx also runs it when a later start hook fails.
	lc.Append(fx.StopHook(func() error {
		if stop == nil {
			return nil
		}
		if err := stop(); err != nil {
			return fmt.Errorf("stop throwaway PostgreSQL: %w", err)
		}
		if logger != nil {
			logger.Info("throwaway PostgreSQL stopped and its data deleted")
		}
		return nil
	}))
	c.URL = url
	return c, nil
}

// throwawayMessage is what ThrowawayWhenUnset logs when it starts a
// server, after the name of the variable that is unset.
const throwawayMessage = " is unset: started a throwaway PostgreSQL for this run; " +
	"its data is deleted when the application stops. NEVER use this in production"

func warnThrowaway(logger *zap.Logger, variable, url string) {
	safe := redact.ConnString(url)
	if logger == nil {
		fmt.Fprintf(os.Stderr, "WARN\tsprocketspg: %s%s (url %s)\n", variable, throwawayMessage, safe)
		return
	}
	logger.Warn(variable+throwawayMessage, zap.String("url", safe))
}
