package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

func TestMain(m *testing.M) { os.Exit(fxtest_helpers.RunTests(m)) }

// TestRunWithNothingConfigured is what `go run ./examples/service` does on
// a fresh machine: no POSTGRES_URL, so the service starts a throwaway
// server, serves, and on stop removes the server and its files.
func TestRunWithNothingConfigured(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &lockedBuffer{}
	env := map[string]string{"PORT": "0"}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, out, func(k string) string { return env[k] }) }()

	base := waitForAddress(t, out, done, 2*time.Minute)
	client := newClient(t)
	r := call(t, client, http.MethodGet, base+"/status", "")
	require.Equal(t, http.StatusOK, r.code, "%s", r.body)
	assert.Equal(t, "ok", r.object(t)["status"])
	r = call(t, client, http.MethodGet, base+"/callproc", "")
	require.Equal(t, http.StatusOK, r.code, "%s", r.body)

	logs := out.String()
	require.Contains(t, logs, "POSTGRES_URL is unset: starting a throwaway PostgreSQL")
	pgURL := logField(t, logs, "url")
	assert.NotContains(t, pgURL, "password")
	parsed, err := url.Parse(pgURL)
	require.NoError(t, err)
	dir := ""
	if strings.Contains(logs, `"backend": "local"`) {
		dir = logField(t, logs, "dir")
		require.DirExists(t, dir)
	}

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30s of its context ending")
	}
	client.CloseIdleConnections()

	logs = out.String()
	assert.Contains(t, logs, "INFO\tstopped\n")
	assert.Contains(t, logs, "throwaway PostgreSQL stopped and its files removed")
	if dir != "" {
		assert.NoDirExists(t, dir, "the throwaway server's files are left behind")
	}
	conn, err := net.DialTimeout("tcp", parsed.Host, time.Second)
	if err == nil {
		_ = conn.Close()
		t.Errorf("something still listens on the throwaway server's address %s", parsed.Host)
	}
}

// TestRunKeepsExistingTables starts the service twice on one database:
// the first start creates the tables, the second finds them and keeps
// their rows. Neither starts a server of its own.
func TestRunKeepsExistingTables(t *testing.T) {
	env := map[string]string{"POSTGRES_URL": fxtest_helpers.NewDatabase(t), "PORT": "0"}
	client := newClient(t)
	for i, wantCreated := range []bool{true, false} {
		ctx, cancel := context.WithCancel(context.Background())
		out := &lockedBuffer{}
		done := make(chan error, 1)
		go func() { done <- run(ctx, nil, out, func(k string) string { return env[k] }) }()
		base := waitForAddress(t, out, done, time.Minute)

		r := call(t, client, http.MethodPost, base+"/count", "")
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		assert.Equal(t, float64(i+1), r.object(t)["count"], "start %d", i+1)

		cancel()
		require.NoError(t, <-done)
		client.CloseIdleConnections()
		logs := out.String()
		assert.Equal(t, wantCreated, strings.Contains(logs, "migration applied"), "start %d:\n%s", i+1, logs)
		assert.Equal(t, !wantCreated, strings.Contains(logs, "no migrations to apply"), "start %d:\n%s", i+1, logs)
		assert.NotContains(t, logs, "throwaway")
	}
}

// lockedBuffer is an io.Writer for the service's logs that a test can
// read while the service writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var listeningRE = regexp.MustCompile(`listening on (http://\S+)`)

// waitForAddress waits until the service logs its address in out and
// returns it. It fails t when exited reports that the service ended
// first, or after within.
func waitForAddress(t *testing.T, out fmt.Stringer, exited <-chan error, within time.Duration) string {
	t.Helper()
	deadline := time.After(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if m := listeningRE.FindStringSubmatch(out.String()); m != nil {
			return m[1]
		}
		select {
		case err := <-exited:
			t.Fatalf("service ended before listening: %v\n%s", err, out.String())
		case <-deadline:
			t.Fatalf("service did not log its address within %s:\n%s", within, out.String())
		case <-tick.C:
		}
	}
}

// logField returns the value of the string field name of the log line
// that has one.
func logField(t *testing.T, logs, name string) string {
	t.Helper()
	m := regexp.MustCompile(`"` + regexp.QuoteMeta(name) + `": "([^"]+)"`).FindStringSubmatch(logs)
	require.NotNil(t, m, "no %q in the logs:\n%s", name, logs)
	return m[1]
}

// newClient returns an HTTP client whose idle connections are closed when
// the test ends, so that none outlives it.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{}, Timeout: 15 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// response is what a call got.
type response struct {
	code   int
	header http.Header
	body   []byte
}

// object decodes the body as a JSON object.
func (r response) object(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.body, &m), "body %s", r.body)
	return m
}

func call(t *testing.T, c *http.Client, method, url, body string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return response{code: resp.StatusCode, header: resp.Header, body: b}
}
