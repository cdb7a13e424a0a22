package sprocketspg_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// TestREADMEMigrationsJob runs the README's migrating service as a
// program, with its embedded migration file, the way its Kubernetes Job
// and Deployment would: with POSTGRES_MIGRATE=only it migrates and exits 0
// without ever listening; with off it serves over the migrated schema
// without touching it, and /readyz reports the schema version.
func TestREADMEMigrationsJob(t *testing.T) {
	bin := buildReadmeProgram(t, "migrating", readmeProgram(t, "// Command orders migrates"))
	dbURL := fxtest_helpers.NewDatabase(t)
	port := freePort(t)

	var logs bytes.Buffer
	job := exec.Command(bin)
	job.Env = readmeEnv("POSTGRES_URL="+dbURL, "PORT="+port, "POSTGRES_MIGRATE=only")
	job.Stdout, job.Stderr = &logs, &logs
	// A listener on the port would make the serving program fail to
	// start; the job must exit 0 all the same, as it never listens.
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	require.NoError(t, err)
	err = job.Run()
	// The control: the same program that does serve fails on that port.
	serving := exec.Command(bin)
	serving.Env = readmeEnv("POSTGRES_URL="+dbURL, "PORT="+port, "POSTGRES_MIGRATE=up")
	servingErr := serving.Run()
	require.NoError(t, ln.Close())
	require.NoError(t, err, "the job exits 0; its log:\n%s", logs.String())
	require.Error(t, servingErr, "a program that listens cannot start while the port is taken")
	assert.Contains(t, logs.String(), `"migration applied"`)
	assert.Contains(t, logs.String(), `"file":"00001_orders.sql"`)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var versions int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM goose_db_version WHERE version_id = 1").Scan(&versions))
	assert.Equal(t, 1, versions, "the migration is recorded once")
	_, err = conn.Exec(ctx, "INSERT INTO orders (total) VALUES (9.5)")
	require.NoError(t, err, "the table exists")

	// The job again: nothing to do, still exit 0.
	logs.Reset()
	again := exec.Command(bin)
	again.Env = job.Env
	again.Stdout, again.Stderr = &logs, &logs
	require.NoError(t, again.Run(), "a second job exits 0; its log:\n%s", logs.String())
	assert.Contains(t, logs.String(), "no migrations to apply")

	logs.Reset()
	app := exec.Command(bin)
	app.Env = readmeEnv("POSTGRES_URL="+dbURL, "PORT="+port, "POSTGRES_MIGRATE=off")
	app.Stdout, app.Stderr = &logs, &logs
	require.NoError(t, app.Start())
	exited := make(chan error, 1)
	go func() { exited <- app.Wait() }()
	t.Cleanup(func() {
		_ = app.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("the service's log:\n%s", logs.String())
		}
	})
	var doc struct {
		Status string `json:"status"`
		Checks map[string][]struct {
			ObservedValue any    `json:"observedValue"`
			Status        string `json:"status"`
		} `json:"checks"`
	}
	require.Eventually(t, func() bool {
		code, body, err := get("http://127.0.0.1:" + port + "/readyz")
		if err != nil || code != http.StatusOK {
			return false
		}
		return json.Unmarshal([]byte(body), &doc) == nil
	}, 30*time.Second, 20*time.Millisecond, "the service becomes ready")
	require.Contains(t, doc.Checks, "postgres:schemaVersion")
	assert.Equal(t, "pass", doc.Checks["postgres:schemaVersion"][0].Status)
	assert.EqualValues(t, 1, doc.Checks["postgres:schemaVersion"][0].ObservedValue)
}

// freePort returns a TCP port of the loopback interface that was free a
// moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	require.NoError(t, ln.Close())
	return port
}
