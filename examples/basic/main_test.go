package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// runMainEnv makes the test binary run main instead of the tests, so that
// a test can watch everything the program prints.
const runMainEnv = "SPROCKETSPG_EXAMPLE_BASIC_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		return
	}
	goleak.VerifyTestMain(m)
}

// TestRunWithNothingConfigured is what `go run ./examples/basic` does on a
// fresh machine: no POSTGRES_URL, so a throwaway server is started, said
// so at warn level, and removed at the end.
func TestRunWithNothingConfigured(t *testing.T) {
	t.Setenv("POSTGRES_URL", "")
	core, logs := observer.New(zapcore.InfoLevel)
	logger := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core()))

	require.NoError(t, run(logger), "a throwaway server needs PostgreSQL's server binaries (apt-get install postgresql) or a Docker engine")

	warns := logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("POSTGRES_URL is unset: started a throwaway PostgreSQL for this run").All()
	require.Len(t, warns, 1)
	assert.Contains(t, warns[0].Message, "production")
	require.Equal(t, 1, logs.FilterMessage("connected to postgres").Len())
	require.Equal(t, 3, logs.FilterMessage("query done").Len())
	require.Equal(t, 1, logs.FilterMessage("duplicate insert refused, as the original answered with 409 Conflict").Len())
	status := logs.FilterMessage("status").All()
	require.Len(t, status, 1)
	require.Equal(t, true, status[0].ContextMap()["available"])
	require.Equal(t, 1, logs.FilterMessage("throwaway PostgreSQL stopped and its data deleted").Len())
}

// TestBadSettingIsOneLine runs the program with a setting that cannot
// work: it prints one line that names the variable (no stack traces, no
// account of fx's constructors), starts no server and exits 1.
func TestBadSettingIsOneLine(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		want     []string
		mustHide string
	}{
		{
			name: "pool size not a number",
			env:  map[string]string{"POSTGRES_MAX_POOL_SIZE": "abc"},
			want: []string{"POSTGRES_MAX_POOL_SIZE", `"abc"`},
		},
		{
			name: "timeout not a duration",
			env:  map[string]string{"POSTGRES_QUERY_TIMEOUT": "soon"},
			want: []string{"POSTGRES_QUERY_TIMEOUT", `"soon"`},
		},
		{
			name:     "URL with a bad port",
			env:      map[string]string{"POSTGRES_URL": "postgres://app:hunter2-secret@db:notaport/app"},
			want:     []string{"POSTGRES_URL"},
			mustHide: "hunter2-secret",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(cleanEnv(), runMainEnv+"=1")
			for k, v := range tt.env {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			require.True(t, errors.As(err, &exit), "want exit status 1, got %v; output:\n%s", err, out)
			assert.Equal(t, 1, exit.ExitCode())

			text := strings.TrimRight(string(out), "\n")
			lines := strings.Split(text, "\n")
			require.Len(t, lines, 1, "want one line, got:\n%s", out)
			assert.True(t, strings.HasPrefix(lines[0], "basic: invalid "), lines[0])
			for _, w := range tt.want {
				assert.Contains(t, lines[0], w)
			}
			if tt.mustHide != "" {
				assert.NotContains(t, lines[0], tt.mustHide)
			}
			assert.NotContains(t, lines[0], "throwaway", "no server is started for a bad setting")
		})
	}
}

// cleanEnv is the test's environment without POSTGRES_* variables, which
// each case sets for itself.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "POSTGRES_") {
			env = append(env, kv)
		}
	}
	return env
}
