package sprocketspg_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// readmeService returns the README's complete service: the block that is
// a whole program and drains on stop.
func readmeService(t *testing.T) string {
	t.Helper()
	return readmeProgram(t, "// Command orders serves orders").source
}

// readmeProgramBlock is a README block that is a whole program, with the
// files its file directives give it.
type readmeProgramBlock struct {
	source string
	files  []readmeFile
}

// readmeProgram returns the one README block that is a whole program and
// starts with the comment head.
func readmeProgram(t *testing.T, head string) readmeProgramBlock {
	t.Helper()
	md, err := os.ReadFile("README.md")
	require.NoError(t, err)
	blocks, problems := extractGoBlocks(string(md))
	require.Empty(t, problems)
	var found []readmeProgramBlock
	for _, b := range blocks {
		src := strings.Join(b.lines, "\n")
		if strings.HasPrefix(src, head) && strings.Contains(src, "package main") {
			found = append(found, readmeProgramBlock{source: src, files: b.files})
		}
	}
	require.Len(t, found, 1, "README.md must hold one program whose block starts with %q", head)
	return found[0]
}

// buildReadmeProgram builds p as a program and returns the binary's path.
func buildReadmeProgram(t *testing.T, name string, p readmeProgramBlock) string {
	t.Helper()
	root, err := os.Getwd()
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), name)
	tmp := t.TempDir()
	src := filepath.Join(tmp, "main.go")
	require.NoError(t, os.WriteFile(src, []byte(p.source), 0o644))
	// The program is built in a directory that exists only in the
	// overlay, inside the module so that the module's packages resolve.
	dir := filepath.Join(root, "_readme_overlay", name)
	overlay := map[string]string{filepath.Join(dir, "main.go"): src}
	for i, f := range p.files {
		real := filepath.Join(tmp, "file"+strconv.Itoa(i))
		require.NoError(t, os.WriteFile(real, []byte(f.content), 0o644))
		overlay[filepath.Join(dir, filepath.FromSlash(f.path))] = real
	}
	flags := goFlags(t, t.TempDir(), overlay)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, stderr, err := runGo(ctx, root, append(append([]string{"build"}, flags...), "-o", bin, dir)...)
	require.NoError(t, err, "build the README's %s: %s", name, stderr)
	return bin
}

// readmeEnv is the environment of a README program: the test's, without
// any POSTGRES_* of the machine, and then extra.
func readmeEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "POSTGRES_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// TestREADMEServiceDrains runs the README's complete service as a program,
// as a reader would: it serves, and on SIGTERM /readyz answers 503 for
// SHUTDOWN_DELAY while requests are still served through the pool, then
// it exits 0.
func TestREADMEServiceDrains(t *testing.T) {
	bin := buildReadmeProgram(t, "service", readmeProgramBlock{source: readmeService(t)})

	dbURL := fxtest_helpers.NewDatabase(t, fxtest_helpers.WithSchema(
		`CREATE TABLE orders (id bigint PRIMARY KEY, total numeric NOT NULL); INSERT INTO orders VALUES (1, 19.99);`))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	require.NoError(t, ln.Close())

	var logs bytes.Buffer
	cmd := exec.Command(bin)
	// Only the settings of this run: none of the machine's POSTGRES_*.
	cmd.Env = readmeEnv("POSTGRES_URL="+dbURL, "PORT="+port, "SHUTDOWN_DELAY=2")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("the service's log:\n%s", logs.String())
		}
	})

	base := "http://127.0.0.1:" + port
	require.Eventually(t, func() bool {
		code, _, err := get(base + "/readyz")
		return err == nil && code == http.StatusOK
	}, 30*time.Second, 20*time.Millisecond, "the service becomes ready")
	code, body, err := get(base + "/orders/1")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, body)
	assert.JSONEq(t, `{"id": 1, "total": 19.99}`, body)
	code, _, err = get(base + "/orders/2")
	require.NoError(t, err)
	assert.Equal(t, http.StatusNotFound, code)
	code, body, err = get(base + "/metrics")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "sprocketspg_query_duration_seconds")

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	began := time.Now()
	require.Eventually(t, func() bool {
		code, _, err := get(base + "/readyz")
		return err == nil && code == http.StatusServiceUnavailable
	}, time.Second, 5*time.Millisecond, "readiness fails as soon as stop begins")
	code, body, err = get(base + "/orders/1")
	require.NoError(t, err, "the listener still accepts during the delay")
	assert.Equal(t, http.StatusOK, code, "and the pool still serves: %s", body)

	select {
	case err := <-exited:
		exited <- err // for the cleanup
		require.NoError(t, err, "the service exits 0 after a clean stop")
	case <-time.After(15 * time.Second):
		t.Fatal("the service did not stop")
	}
	assert.GreaterOrEqual(t, time.Since(began), 1900*time.Millisecond, "it waited out SHUTDOWN_DELAY")
	_, _, err = get(base + "/livez")
	assert.Error(t, err, "the listener is closed")
}
