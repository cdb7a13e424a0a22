package migrate_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
	"github.com/sprockets/sprocketspg/migrate"
)

// In mode only, start applies the migrations and ends the process with
// status 0 before anything after the pool starts; with WithExit in place
// of os.Exit, start fails with ErrOnly so that the application does not
// serve.
func TestOnlyModeAppliesAndExits(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t)
	t.Setenv(sprocketspg.EnvURL, url)
	t.Setenv(migrate.EnvMode, "only")
	var codes []int
	served := false
	var m *migrate.Migrator
	app := newApp(t, sprocketspg.Module,
		migrate.Migrations(basicFS, migrate.WithExit(func(code int) { codes = append(codes, code) })),
		fx.Populate(&m), servedHook(&served))
	assert.Equal(t, migrate.ModeOnly, m.Config().Mode)

	err := app.Start(ctxT(t))
	require.Error(t, err)
	assert.ErrorIs(t, err, migrate.ErrOnly)
	assert.Equal(t, []int{0}, codes, "the exit function was called once, with status 0")
	assert.False(t, served, "the hook after the pool never ran")
	conn := connect(t, url)
	assert.Equal(t, []int64{1, 2}, appliedVersions(t, conn))
	assert.True(t, tableExists(t, conn, "widgets"))
	require.Len(t, m.Applied(), 2)
}

// With mode only and nothing pending, the process still ends with status 0.
func TestOnlyModeWithNothingPendingExits(t *testing.T) {
	url := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithMigrations(basicFS))
	t.Setenv(sprocketspg.EnvURL, url)
	t.Setenv(migrate.EnvMode, "only")
	var codes []int
	served := false
	var m *migrate.Migrator
	app := newApp(t, sprocketspg.Module,
		migrate.Migrations(basicFS, migrate.WithExit(func(code int) { codes = append(codes, code) })),
		fx.Populate(&m), servedHook(&served))
	err := app.Start(ctxT(t))
	assert.ErrorIs(t, err, migrate.ErrOnly)
	assert.Equal(t, []int{0}, codes)
	assert.False(t, served)
	assert.Empty(t, m.Applied())
}

// helperEnv names the migrations folder of TestOnlyModeHelperProcess; the
// helper does nothing without it.
const (
	helperEnv       = "MIGRATE_TEST_HELPER_MIGRATIONS"
	helperServedEnv = "MIGRATE_TEST_HELPER_SERVED"
	// helperServedStatus is the helper's status when the app served.
	helperServedStatus = 3
)

// TestOnlyModeHelperProcess is the process TestOnlyModeProcessExit runs:
// an application with migrations, run as a service runs it (fx's Run),
// whose hook after the pool writes a file and exits with
// helperServedStatus.
func TestOnlyModeHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		return
	}
	marker := os.Getenv(helperServedEnv)
	fx.New(sprocketspg.Module, migrate.Migrations(os.DirFS(dir)),
		fx.Invoke(func(_ *sprocketspg.Pool, lc fx.Lifecycle) {
			lc.Append(fx.Hook{OnStart: func(context.Context) error {
				_ = os.WriteFile(marker, []byte("served"), 0o600)
				os.Exit(helperServedStatus)
				return nil
			}})
		}),
	).Run()
	os.Exit(helperServedStatus + 1) // Run returned: the app ran and was stopped
}

// runHelper runs TestOnlyModeHelperProcess with the migrations in dir and
// the variables in env, and returns its exit status, its output and
// whether it served.
func runHelper(t *testing.T, dir string, env ...string) (int, string, bool) {
	t.Helper()
	marker := filepath.Join(t.TempDir(), "served")
	cmd := exec.CommandContext(ctxT(t), os.Args[0], "-test.run=^TestOnlyModeHelperProcess$", "-test.count=1")
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); !strings.Contains(name, "POSTGRES") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, helperEnv+"="+dir, helperServedEnv+"="+marker)
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	code := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code = exitErr.ExitCode()
	} else {
		require.NoError(t, err, "run the helper process: %s", out)
	}
	_, statErr := os.Stat(marker)
	return code, string(out), statErr == nil
}

// The real thing: a process in mode only exits with status 0 once the
// migrations are applied, without serving, and with a non-zero status
// when a migration fails.
func TestOnlyModeProcessExit(t *testing.T) {
	t.Run("applied", func(t *testing.T) {
		url := fxtest_helpers.NewDatabase(t)
		code, out, served := runHelper(t, "testdata/basic", sprocketspg.EnvURL+"="+url, migrate.EnvMode+"=only")
		assert.Equal(t, 0, code, "exit status; output:\n%s", out)
		assert.False(t, served, "the application served:\n%s", out)
		conn := connect(t, url)
		assert.Equal(t, []int64{1, 2}, appliedVersions(t, conn))
		assert.True(t, tableExists(t, conn, "widgets"))
	})
	t.Run("broken migration", func(t *testing.T) {
		url := fxtest_helpers.NewDatabase(t)
		code, out, served := runHelper(t, "testdata/broken", sprocketspg.EnvURL+"="+url, migrate.EnvMode+"=only")
		assert.NotEqual(t, 0, code, "exit status; output:\n%s", out)
		assert.NotEqual(t, helperServedStatus, code, "output:\n%s", out)
		assert.False(t, served, "the application served:\n%s", out)
		assert.Contains(t, out, "00002_broken.sql")
		conn := connect(t, url)
		assert.Equal(t, []int64{1}, appliedVersions(t, conn))
	})
	t.Run("mode up serves", func(t *testing.T) {
		// The helper's own check: without mode only it serves.
		url := fxtest_helpers.NewDatabase(t)
		code, out, served := runHelper(t, "testdata/basic", sprocketspg.EnvURL+"="+url)
		assert.Equal(t, helperServedStatus, code, "exit status; output:\n%s", out)
		assert.True(t, served, "output:\n%s", out)
		assert.Equal(t, []int64{1, 2}, appliedVersions(t, connect(t, url)))
	})
}
