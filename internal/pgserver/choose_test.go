package pgserver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestChoose(t *testing.T) {
	errNoBin := errors.New("no binaries here")
	errNoDocker := errors.New("no docker here")
	tests := []struct {
		name      string
		envURL    string
		binDir    string
		binErr    error
		dockerErr error

		want        string
		wantBinDir  string
		wantBinCall bool
		wantPing    bool
		wantErr     []string
	}{
		{
			name:   "env url wins over everything",
			envURL: "postgres://u@h/db", binDir: "/bin", dockerErr: nil,
			want: BackendURL,
		},
		{
			name:   "local binaries before docker",
			binDir: "/opt/pg/bin", dockerErr: nil,
			want: BackendLocal, wantBinDir: "/opt/pg/bin", wantBinCall: true,
		},
		{
			name:   "docker when no binaries",
			binErr: errNoBin, dockerErr: nil,
			want: BackendDocker, wantBinCall: true, wantPing: true,
		},
		{
			name:   "nothing available",
			binErr: errNoBin, dockerErr: errNoDocker,
			wantBinCall: true, wantPing: true,
			wantErr: []string{
				EnvURL, "apt-get install postgresql", EnvBinDir, "Docker engine",
				errNoBin.Error(), errNoDocker.Error(),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var binCalled, pinged bool
			findBin := func() (string, error) {
				binCalled = true
				return tt.binDir, tt.binErr
			}
			dockerUp := func(ctx context.Context) error {
				pinged = true
				deadline, ok := ctx.Deadline()
				assert.True(t, ok, "docker ping must be bounded")
				assert.LessOrEqual(t, time.Until(deadline), dockerPingTimeout)
				return tt.dockerErr
			}
			got, err := choose(context.Background(), tt.envURL, true, findBin, dockerUp)
			assert.Equal(t, tt.wantBinCall, binCalled, "findBin called")
			assert.Equal(t, tt.wantPing, pinged, "docker pinged")
			if tt.wantErr != nil {
				require.Error(t, err)
				for _, s := range tt.wantErr {
					assert.Contains(t, err.Error(), s)
				}
				assert.ErrorIs(t, err, errNoBin)
				assert.ErrorIs(t, err, errNoDocker)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got.kind)
			assert.Equal(t, tt.wantBinDir, got.binDir)
			if tt.want == BackendURL {
				assert.Equal(t, tt.envURL, got.url)
			}
			if tt.want == BackendDocker {
				assert.NotEmpty(t, got.skipped)
			}
		})
	}
}

func TestChooseDockerPingStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := choose(ctx, "", true, func() (string, error) { return "", errors.New("none") },
		func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	require.Error(t, err)
	assert.ErrorIs(t, err, context.Canceled)
}

// fakeBinDir makes root/<name>/bin, with executable initdb and postgres
// when complete.
func fakeBinDir(t *testing.T, root, name string, complete bool) string {
	t.Helper()
	dir := filepath.Join(root, name, "bin")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "postgres"), []byte("#!/bin/sh\n"), 0o755))
	if complete {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "initdb"), []byte("#!/bin/sh\n"), 0o755))
	}
	return dir
}

func TestFindBinDirIn(t *testing.T) {
	root := t.TempDir()
	v96 := fakeBinDir(t, root, "9.6", true)
	fakeBinDir(t, root, "10", true)
	v15 := fakeBinDir(t, root, "15", true)
	fakeBinDir(t, root, "17", false) // newest, but incomplete
	empty := t.TempDir()
	noPgConfig := func() (string, error) { return "", errors.New("pg_config: not found") }

	t.Run("PG_BIN", func(t *testing.T) {
		got, err := findBinDirIn(v96, noPgConfig, root)
		require.NoError(t, err)
		assert.Equal(t, v96, got)
	})
	t.Run("PG_BIN without binaries is an error", func(t *testing.T) {
		_, err := findBinDirIn(empty, noPgConfig, root)
		require.Error(t, err)
		assert.Contains(t, err.Error(), EnvBinDir+"="+empty)
	})
	t.Run("pg_config", func(t *testing.T) {
		got, err := findBinDirIn("", func() (string, error) { return v96, nil }, root)
		require.NoError(t, err)
		assert.Equal(t, v96, got)
	})
	t.Run("newest complete version", func(t *testing.T) {
		got, err := findBinDirIn("", noPgConfig, root)
		require.NoError(t, err)
		assert.Equal(t, v15, got)
	})
	t.Run("pg_config without binaries falls back", func(t *testing.T) {
		got, err := findBinDirIn("", func() (string, error) { return empty, nil }, root)
		require.NoError(t, err)
		assert.Equal(t, v15, got)
	})
	t.Run("nothing", func(t *testing.T) {
		_, err := findBinDirIn("", noPgConfig, empty)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "pg_config: not found")
		assert.Contains(t, err.Error(), empty+"/*/bin")
	})
}

func TestSortByVersionDesc(t *testing.T) {
	dirs := []string{"/x/9.6/bin", "/x/15/bin", "/x/10/bin", "/x/beta/bin", "/x/9.5/bin", "/x/16/bin"}
	sortByVersionDesc(dirs)
	assert.Equal(t, []string{"/x/16/bin", "/x/15/bin", "/x/10/bin", "/x/9.6/bin", "/x/9.5/bin", "/x/beta/bin"}, dirs)
}

func TestDockerHost(t *testing.T) {
	tests := []struct{ endpoint, host, hostIP string }{
		{"unix:///var/run/docker.sock", "127.0.0.1", "127.0.0.1"},
		{"tcp://docker.example.com:2376", "docker.example.com", ""},
		{"http://localhost:2375", "127.0.0.1", "127.0.0.1"},
		{"tcp://10.0.0.5:2375", "10.0.0.5", ""},
	}
	for _, tt := range tests {
		host, hostIP := dockerHost(tt.endpoint)
		assert.Equal(t, tt.host, host, tt.endpoint)
		assert.Equal(t, tt.hostIP, hostIP, tt.endpoint)
	}
}
