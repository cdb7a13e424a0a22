package sprocketspg_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/health"
)

// drainServer is an HTTP server wired as the README's service wires its
// own: a constructor that takes the checker and appends the server's
// hooks, whose OnStop drains before it shuts the server down.
func drainServer(lc fx.Lifecycle, mux *http.ServeMux, checker *health.Checker) *http.Server {
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			srv.Addr = ln.Addr().String()
			go func() { _ = srv.Serve(ln) }()
			return nil
		},
		OnStop: func(ctx context.Context) error {
			if err := checker.Drain(ctx); err != nil {
				return err
			}
			return srv.Shutdown(ctx)
		},
	})
	return srv
}

func get(url string) (int, string, error) {
	client := http.Client{Timeout: 2 * time.Second}
	res, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	return res.StatusCode, string(body), err
}

func TestDrainKeepsServingWhileReadinessFails(t *testing.T) {
	t.Setenv(sprocketspg.EnvShutdownDelay, "2")
	var srv *http.Server
	app := fx.New(
		fx.NopLogger,
		fx.Supply(zaptest.NewLogger(t)),
		sprocketspg.Module,
		fx.Replace(testConfig(fxtest_helpers.NewDatabase(t))),
		fx.Provide(http.NewServeMux, drainServer),
		fx.Invoke(func(mux *http.ServeMux, checker *health.Checker, db *sprocketspg.Pool) {
			health.Register(mux, checker)
			mux.HandleFunc("GET /now", func(w http.ResponseWriter, r *http.Request) {
				res, err := db.Execute(r.Context(), "SELECT 'still here' AS answer")
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				_, _ = io.WriteString(w, res.Row["answer"].(string))
			})
		}),
		fx.Populate(&srv),
	)
	require.NoError(t, app.Start(ctxT(t)))
	base := "http://" + srv.Addr
	code, _, err := get(base + "/readyz")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)

	stopped := make(chan error, 1)
	began := time.Now()
	go func() { stopped <- app.Stop(ctxT(t)) }()

	require.Eventually(t, func() bool {
		code, _, err := get(base + "/readyz")
		return err == nil && code == http.StatusServiceUnavailable
	}, time.Second, 5*time.Millisecond, "readiness fails as soon as stop begins")
	code, body, err := get(base + "/now")
	require.NoError(t, err, "the listener still accepts during the delay")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "still here", body, "and the pool still serves")
	code, _, err = get(base + "/status")
	require.NoError(t, err)
	assert.Equal(t, http.StatusServiceUnavailable, code)

	require.NoError(t, <-stopped)
	assert.GreaterOrEqual(t, time.Since(began), 2*time.Second, "stop waited out the delay")
	_, _, err = get(base + "/livez")
	assert.Error(t, err, "the listener is closed after the delay")
}

func TestDrainWithoutDelayReturnsAtOnce(t *testing.T) {
	pool, _ := newPool(t, nil)
	checker := sprocketspg.NewChecker(pool)
	require.True(t, checker.Ready())
	began := time.Now()
	require.NoError(t, checker.Drain(context.Background()))
	assert.Less(t, time.Since(began), 100*time.Millisecond)
	assert.False(t, checker.Ready())
}

func TestDrainEndsWithItsContext(t *testing.T) {
	pool, _ := newPool(t, nil)
	checker := sprocketspg.NewChecker(pool, health.WithDrainDelay(time.Minute), health.WithLogger(zap.NewNop()))
	assert.Equal(t, time.Minute, checker.DrainDelay())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := checker.Drain(ctx)
	require.Error(t, err)
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
	assert.False(t, checker.Ready())
}

func TestShutdownDelayMustParse(t *testing.T) {
	for _, value := range []string{"soon", "-1"} {
		t.Setenv(sprocketspg.EnvShutdownDelay, value)
		app := fx.New(fx.NopLogger, sprocketspg.Module,
			fx.Replace(testConfig("postgres://u@127.0.0.1:1/db")), fx.Invoke(func(*health.Checker) {}))
		err := app.Err()
		require.Error(t, err, value)
		assert.ErrorIs(t, err, sprocketspg.ErrInvalidConfig)
		assert.Contains(t, err.Error(), `invalid SHUTDOWN_DELAY "`+value+`"`)
	}
}
