package main

import (
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// TestServiceEndToEnd builds the service, runs it as a process against a
// fresh database, calls every endpoint over HTTP and stops it with
// SIGTERM, as a deployment would.
func TestServiceEndToEnd(t *testing.T) {
	bin := buildService(t)
	dbURL := fxtest_helpers.NewDatabase(t)

	cmd := exec.Command(bin)
	cmd.Env = append(environWithout("POSTGRES_", "PORT=", "SHUTDOWN_DELAY=", "SERVICE="),
		"POSTGRES_URL="+dbURL, "PORT=0", "SHUTDOWN_DELAY=1s", "SERVICE=e2e")
	out := &lockedBuffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("service output:\n%s", out.String())
		}
	})

	base := waitForAddress(t, out, exited, time.Minute)
	assert.Contains(t, out.String(), "migration applied")
	assert.Contains(t, out.String(), "00001_test_tables.sql")
	assert.NotContains(t, out.String(), "throwaway", "POSTGRES_URL is set; no server of its own")
	c := newClient(t)
	get := func(path string) response { return call(t, c, http.MethodGet, base+path, "") }
	post := func(path, body string) response { return call(t, c, http.MethodPost, base+path, body) }

	t.Run("status", func(t *testing.T) {
		r := get("/status")
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		doc := r.object(t)
		assert.Equal(t, "ok", doc["status"])
		assert.Equal(t, "e2e", doc["application"])
		assert.Contains(t, doc, "postgres")
		assert.Equal(t, http.StatusOK, get("/livez").code)
		r = get("/readyz")
		assert.Equal(t, http.StatusOK, r.code, "%s", r.body)
		assert.Equal(t, "pass", r.object(t)["status"])
	})

	t.Run("callproc", func(t *testing.T) {
		r := get("/callproc")
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		_, err := uuid.Parse(r.object(t)["value"].(string))
		assert.NoError(t, err)
	})

	t.Run("execute", func(t *testing.T) {
		r := get("/execute?value=h%C3%A9llo+world")
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		assert.JSONEq(t, `{"value": "héllo world"}`, string(r.body))

		r = get("/execute?value=x&timeout=5")
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		assert.JSONEq(t, `{"value": "x"}`, string(r.body))

		// A deadline that has passed before the query is sent.
		r = get("/execute?value=x&timeout=1ns")
		assertProblem(t, r, http.StatusInternalServerError, "Query Timeout")

		assert.Equal(t, http.StatusBadRequest, get("/execute").code)
		assert.Equal(t, http.StatusBadRequest, get("/execute?value=x&timeout=soon").code)
	})

	t.Run("count", func(t *testing.T) {
		r := get("/count")
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		assert.Equal(t, float64(0), counter(t, r, "test"))
		for want := 1; want <= 2; want++ {
			r = post("/count", "")
			require.Equal(t, http.StatusOK, r.code, "%s", r.body)
			assert.Equal(t, float64(want), r.object(t)["count"])
		}
		assert.Equal(t, float64(2), counter(t, get("/count"), "test"))
	})

	t.Run("no-row", func(t *testing.T) {
		r := get("/no-row")
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		assert.JSONEq(t, `{"count": 0, "row": null, "rows": []}`, string(r.body))
	})

	t.Run("multi-row and row-count-no-rows", func(t *testing.T) {
		r := get("/multi-row")
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		doc := r.object(t)
		assert.Equal(t, float64(5), doc["count"])
		assert.Nil(t, doc["row"])
		assert.Len(t, doc["rows"], 5)

		r = post("/multi-row", "")
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		doc = r.object(t)
		require.Len(t, doc["rows"], 5)
		for _, row := range doc["rows"].([]any) {
			assert.Equal(t, true, row.(map[string]any)["toggle"])
			assert.NotNil(t, row.(map[string]any)["last_modified_at"])
		}

		r = get("/row-count-no-rows")
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		assert.JSONEq(t, `{"count": 5}`, string(r.body))
		assert.Equal(t, float64(10), get("/multi-row").object(t)["count"])
	})

	t.Run("transaction", func(t *testing.T) {
		id := uuid.NewString()
		body := `{"id": "` + id + `", "value": "first"}`
		r := post("/transaction", body)
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		assert.JSONEq(t, `{"count": 1, "id": "`+id+`", "value": "first"}`, string(r.body))

		// The counter is bumped before the insert fails; the rollback
		// must take the bump back.
		r = post("/transaction", `{"id": "`+id+`", "value": "second"}`)
		assertProblem(t, r, http.StatusConflict, "Unique Violation")
		assert.Equal(t, "23505", r.object(t)["sqlstate"])
		assert.Equal(t, float64(1), counter(t, get("/count"), "transaction"))

		r = get("/transaction/" + id)
		require.Equal(t, http.StatusOK, r.code, "%s", r.body)
		assert.Equal(t, "first", r.object(t)["value"])
		assert.Equal(t, id, r.object(t)["id"])

		r = get("/transaction/" + uuid.NewString())
		assertProblem(t, r, http.StatusNotFound, "Not Found")
		assert.Equal(t, http.StatusBadRequest, get("/transaction/not-a-uuid").code)
		assert.Equal(t, http.StatusBadRequest, post("/transaction", `{"id": 1}`).code)
		assert.Equal(t, http.StatusBadRequest, post("/transaction", `{"value": "no id"}`).code)
	})

	t.Run("timeout-error", func(t *testing.T) {
		began := time.Now()
		r := get("/timeout-error")
		// The query sleeps 2 s; its 100 ms timeout must end it sooner.
		assert.Less(t, time.Since(began), 2*time.Second)
		assertProblem(t, r, http.StatusInternalServerError, "Query Timeout")
		assert.Equal(t, "57014", r.object(t)["sqlstate"])
	})

	t.Run("unhandled-exception", func(t *testing.T) {
		r := get("/unhandled-exception")
		assertProblem(t, r, http.StatusUnprocessableEntity, "Unprocessable Entity")
		assert.Equal(t, "22012", r.object(t)["sqlstate"])
	})

	t.Run("metrics", func(t *testing.T) {
		// Query events reach the metrics on a goroutine of their own, so
		// the last ones may take a moment.
		var body string
		for deadline := time.Now().Add(5 * time.Second); ; {
			r := get("/metrics")
			require.Equal(t, http.StatusOK, r.code, "%s", r.body)
			body = string(r.body)
			if strings.Contains(body, `metric_name="unhandled-exception"`) || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		assert.Contains(t, body, "sprocketspg_query_duration_seconds")
		assert.Contains(t, body, `metric_name="transaction"`)
		assert.Contains(t, body, `metric_name="unhandled-exception",operation="execute",outcome="error"`)
		assert.Contains(t, body, "pgxpool_")
		assert.Contains(t, body, "go_goroutines")
	})

	// Stop: readiness fails during the shutdown delay while the process
	// still serves, then it exits 0.
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	deadline := time.Now().Add(time.Second)
	for {
		r := get("/readyz")
		if r.code == http.StatusServiceUnavailable {
			assert.Equal(t, "fail", r.object(t)["status"])
			assert.Equal(t, http.StatusOK, get("/livez").code)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still answers %d %s after SIGTERM", r.code, r.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.CloseIdleConnections()
	select {
	case err := <-exited:
		stopped = true
		require.NoError(t, err, "the service must exit 0 on SIGTERM")
	case <-time.After(stopTimeout):
		t.Fatalf("the service did not exit within %s of SIGTERM", stopTimeout)
	}
	assert.Contains(t, out.String(), "INFO\tstopped\n")
}

// buildService builds the service into a temporary directory and returns
// the binary's path.
func buildService(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "service")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = os.Environ()
	if out, err := build.CombinedOutput(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			t.Fatalf("go build: %v\n%s", err, out)
		}
		t.Fatalf("go build: %v", err)
	}
	return bin
}

// environWithout returns the process environment without the variables
// whose "NAME=value" starts with one of prefixes.
func environWithout(prefixes ...string) []string {
	var env []string
outer:
	for _, kv := range os.Environ() {
		for _, p := range prefixes {
			if strings.HasPrefix(kv, p) {
				continue outer
			}
		}
		env = append(env, kv)
	}
	return env
}

// counter returns the count of key in a GET /count answer.
func counter(t *testing.T, r response, key string) any {
	t.Helper()
	require.Equal(t, http.StatusOK, r.code, "%s", r.body)
	for _, row := range r.object(t)["rows"].([]any) {
		if m := row.(map[string]any); m["key"] == key {
			return m["count"]
		}
	}
	t.Fatalf("no counter %q in %s", key, r.body)
	return nil
}

// assertProblem checks that r is an RFC 9457 problem with status and
// title.
func assertProblem(t *testing.T, r response, status int, title string) {
	t.Helper()
	require.Equal(t, status, r.code, "%s", r.body)
	assert.Equal(t, "application/problem+json", r.header.Get("Content-Type"))
	doc := r.object(t)
	assert.Equal(t, float64(status), doc["status"])
	assert.Equal(t, title, doc["title"])
}
