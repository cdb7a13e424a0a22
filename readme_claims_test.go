package sprocketspg_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/sprockets/sprocketspg"
	"github.com/sprockets/sprocketspg/fxtest_helpers"
)

// The README's claims that no compiler checks: the packages it lists, the
// Go version, what NewApp provides, the script that drops the helpers'
// template databases, and the test file of its Tests section, run.

func readREADME(t *testing.T) string {
	t.Helper()
	md, err := os.ReadFile("README.md")
	require.NoError(t, err)
	return string(md)
}

// TestREADMEListsEveryPackage checks the README's table of import paths
// against the module: every package a user can import (not internal, not
// an example, not a command, not tests alone) is listed, and every listed
// path is such a package.
func TestREADMEListsEveryPackage(t *testing.T) {
	md := readREADME(t)
	rowRE := regexp.MustCompile("(?m)^\\|\\s*`(github\\.com/sprockets/sprocketspg(?:/[^`\\s]*)?)`\\s*\\|")
	listed := map[string]bool{}
	for _, m := range rowRE.FindAllStringSubmatch(md, -1) {
		assert.False(t, listed[m[1]], "%s is listed twice", m[1])
		listed[m[1]] = true
	}
	require.NotEmpty(t, listed, "README.md has a table of import paths")

	root, err := os.Getwd()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, stderr, err := runGo(ctx, root, "list", "-e", "-f", "{{.ImportPath}}\t{{.Name}}\t{{len .GoFiles}}", "./...")
	require.NoError(t, err, "go list: %s", stderr)
	importable := map[string]bool{}
	all := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "\t")
		require.Len(t, f, 3, "go list line %q", line)
		path, name := f[0], f[1]
		all[path] = true
		n, err := strconv.Atoi(f[2])
		require.NoError(t, err)
		rel := strings.TrimPrefix(path, "github.com/sprockets/sprocketspg")
		switch {
		case name == "main", n == 0,
			strings.Contains(rel+"/", "/internal/"),
			strings.HasPrefix(rel+"/", "/examples/"),
			strings.Contains(rel+"/", "/testdata/"):
			continue
		}
		importable[path] = true
	}
	require.True(t, importable["github.com/sprockets/sprocketspg"], "go list found the module: %s", out)
	for _, p := range sortedKeys(importable) {
		assert.True(t, listed[p], "README.md does not list the package %s", p)
	}
	for _, p := range sortedKeys(listed) {
		if !importable[p] {
			if all[p] {
				t.Errorf("README.md lists %s, which users cannot import", p)
			} else {
				t.Errorf("README.md lists %s, which is no package of the module", p)
			}
		}
	}
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TestREADMEGoVersionIsGoMods checks that the Go version the README
// requires is go.mod's go directive (major.minor).
func TestREADMEGoVersionIsGoMods(t *testing.T) {
	md := readREADME(t)
	claims := regexp.MustCompile(`needs Go (\d+\.\d+)`).FindAllStringSubmatch(md, -1)
	require.Len(t, claims, 1, "README.md states the Go version it needs once")
	mod, err := os.ReadFile("go.mod")
	require.NoError(t, err)
	directive := regexp.MustCompile(`(?m)^go\s+(\d+\.\d+)(?:\.\d+)?\s*$`).FindStringSubmatch(string(mod))
	require.NotNil(t, directive, "go.mod has a go directive")
	assert.Equal(t, directive[1], claims[0][1], "README.md says Go %s, go.mod says go %s", claims[0][1], directive[1])
}

// readmeClaimsTB stands in for a test to see what a helper fails it with:
// it records Errorf and Fatalf, ends the goroutine on FailNow as a test
// would, and keeps cleanups for runCleanups. The rest (Name, Logf,
// Failed) is the real test's, so that databases are dropped as usual.
type readmeClaimsTB struct {
	testing.TB
	mu       sync.Mutex
	errs     []string
	cleanups []func()
}

func (r *readmeClaimsTB) Helper() {}

func (r *readmeClaimsTB) record(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, msg)
}

func (r *readmeClaimsTB) Errorf(format string, args ...any) { r.record(fmt.Sprintf(format, args...)) }
func (r *readmeClaimsTB) Error(args ...any)                 { r.record(fmt.Sprint(args...)) }
func (r *readmeClaimsTB) Fail()                             { r.record("Fail") }
func (r *readmeClaimsTB) FailNow()                          { runtime.Goexit() }
func (r *readmeClaimsTB) Fatalf(format string, args ...any) {
	r.record(fmt.Sprintf(format, args...))
	runtime.Goexit()
}
func (r *readmeClaimsTB) Fatal(args ...any) {
	r.record(fmt.Sprint(args...))
	runtime.Goexit()
}

func (r *readmeClaimsTB) Cleanup(fn func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, fn)
}

// runReadmeClaimsTB runs fn with a readmeClaimsTB on a goroutine of its own, then
// its cleanups, and returns what it was failed with.
func runReadmeClaimsTB(t *testing.T, fn func(tb testing.TB)) []string {
	t.Helper()
	r := &readmeClaimsTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(r)
	}()
	<-done
	r.mu.Lock()
	fns, errs := r.cleanups, r.errs
	r.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
	return errs
}

// TestREADMENewAppAlreadyProvidesLoggerAndModule checks the README's word
// that NewApp and NewAppWithDatabase already provide a *zap.Logger and
// Module: an app's own logger or Module passed to them fails as "already
// provided", while the app's other options work.
func TestREADMENewAppAlreadyProvidesLoggerAndModule(t *testing.T) {
	md := strings.Join(strings.Fields(readREADME(t)), " ")
	require.Regexp(t, "already provide[^.]*`\\*zap\\.Logger`[^.]*`Module`", md, "the claim under test")
	require.Contains(t, md, `"already provided"`)

	helpers := map[string]func(tb testing.TB, opts ...fx.Option){
		"NewApp": func(tb testing.TB, opts ...fx.Option) { fxtest_helpers.NewApp(tb, opts...) },
		"NewAppWithDatabase": func(tb testing.TB, opts ...fx.Option) {
			fxtest_helpers.NewAppWithDatabase(tb, fxtest_helpers.NewDatabase(tb), opts...)
		},
	}
	refused := map[string]fx.Option{
		"Module":                        sprocketspg.Module,
		"fx.Supply(*zap.Logger)":        fx.Supply(zap.NewNop()),
		"fx.Provide(zap.NewProduction)": fx.Provide(zap.NewProduction),
	}
	for hname, helper := range helpers {
		t.Run(hname+"/own options work", func(t *testing.T) {
			var pool *sprocketspg.Pool
			var logger *zap.Logger
			var ran bool
			errs := runReadmeClaimsTB(t, func(tb testing.TB) {
				helper(tb, fx.Populate(&pool, &logger))
				_, err := pool.Execute(ctxT(t), "SELECT 1")
				assert.NoError(t, err)
				ran = true
			})
			assert.Empty(t, errs)
			assert.True(t, ran, "the helper returned")
			assert.NotNil(t, logger, "the helpers' logger")
		})
		for oname, opt := range refused {
			t.Run(hname+"/"+oname, func(t *testing.T) {
				var returned bool
				errs := runReadmeClaimsTB(t, func(tb testing.TB) {
					helper(tb, opt)
					returned = true
				})
				assert.False(t, returned, "the helper fails the test")
				require.NotEmpty(t, errs)
				assert.Contains(t, strings.Join(errs, "\n"), "already provided")
			})
		}
	}
}

// readmeDropScript returns the README's shell script that drops the
// template databases, from its psql line to the end of its here-document,
// without the indentation of the list it sits in.
func readmeDropScript(t *testing.T) string {
	t.Helper()
	lines := strings.Split(readREADME(t), "\n")
	for i, l := range lines {
		if !strings.Contains(l, `psql "$SPROCKETSPG_TEST_POSTGRES_URL" <<'SQL'`) {
			continue
		}
		indent := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
		var script []string
		for _, s := range lines[i:] {
			script = append(script, strings.TrimPrefix(s, indent))
			if strings.TrimSpace(s) == "SQL" {
				return strings.Join(script, "\n") + "\n"
			}
		}
		t.Fatalf("README.md:%d: the here-document does not end", i+1)
	}
	t.Fatal("README.md has no script that drops the template databases")
	return ""
}

// findPsql returns the directory of a psql binary.
func findPsql(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("psql"); err == nil {
		return filepath.Dir(p)
	}
	dirs := []string{os.Getenv("PG_BIN")}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Sort(sort.Reverse(sort.StringSlice(matches)))
	for _, d := range append(dirs, matches...) {
		if d == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "psql")); err == nil {
			return d
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("the README's script needs psql: install the PostgreSQL client (Debian: postgresql-client), or put its bin directory in PG_BIN")
	}
	t.Skip("the README's script needs psql, which is not installed")
	return ""
}

// TestREADMETemplateDropScript runs the README's script for dropping the
// helpers' template databases, with psql as the README does, against a
// server holding such templates: they are gone, everything else stays.
func TestREADMETemplateDropScript(t *testing.T) {
	script := readmeDropScript(t)
	psqlDir := findPsql(t)
	// A server of the test's own: the shared one's templates are in use.
	srv := fxtest_helpers.StartServer(t)
	dbA := srv.NewDatabase(t, fxtest_helpers.WithSchema("CREATE TABLE readme_drop_a (id int);"))
	dbB := srv.NewDatabase(t, fxtest_helpers.WithSchema("CREATE TABLE readme_drop_b (id int);"))
	admin := adminConn(t, srv.AdminURL())
	ctx := ctxT(t)

	databases := func() map[string]bool {
		rows, err := admin.Query(ctx, "SELECT datname FROM pg_database")
		require.NoError(t, err)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		m := map[string]bool{}
		for _, n := range names {
			m[n] = true
		}
		return m
	}
	helperTemplate := regexp.MustCompile(`^tmpl_[0-9a-f]{16}$`)
	var templates []string
	for n := range databases() {
		if helperTemplate.MatchString(n) {
			templates = append(templates, n)
		}
	}
	require.Len(t, templates, 2, "one template per schema")

	// Databases that look like templates but are not the helpers'.
	decoys := []string{"tmpl_keep", "tmpl_0123456789abcdef0", "xtmpl_0123456789abcdef", "tmpl_0123456789ABCDEF"}
	for _, d := range decoys {
		ident := pgx.Identifier{d}.Sanitize()
		_, err := admin.Exec(ctx, "CREATE DATABASE "+ident)
		require.NoError(t, err)
		t.Cleanup(func() {
			_, _ = admin.Exec(context.Background(), "ALTER DATABASE "+ident+" IS_TEMPLATE false")
			_, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+ident)
		})
	}
	_, err := admin.Exec(ctx, "ALTER DATABASE tmpl_keep IS_TEMPLATE true")
	require.NoError(t, err)

	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "SPROCKETSPG_") {
			env = append(env, kv)
		}
	}
	env = append(env, "PATH="+psqlDir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"SPROCKETSPG_TEST_POSTGRES_URL="+srv.AdminURL(), "PSQLRC="+os.DevNull)
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Run(), "the script:\n%s\nits output:\n%s", script, out.String())
	t.Logf("the script's output:\n%s", out.String())
	assert.Equal(t, len(templates), strings.Count(out.String(), "DROP DATABASE"), "one DROP per template")

	after := databases()
	for _, n := range templates {
		assert.False(t, after[n], "template %s is dropped", n)
	}
	for _, n := range append(decoys, "postgres", "template0", "template1", databaseName(t, dbA), databaseName(t, dbB)) {
		assert.True(t, after[n], "%s stays", n)
	}
}

// readmeTestFile returns the README's example test file: the block of
// package orders_test.
func readmeTestFile(t *testing.T) string {
	t.Helper()
	blocks, problems := extractGoBlocks(readREADME(t))
	require.Empty(t, problems)
	var found []string
	for _, b := range blocks {
		if src := strings.Join(b.lines, "\n"); strings.HasPrefix(src, "package orders_test") {
			found = append(found, src)
		}
	}
	require.Len(t, found, 1, "README.md holds one test file of package orders_test")
	return found[0]
}

// buildReadmeTest compiles src as the only file of a test package and
// returns the test binary's path.
func buildReadmeTest(t *testing.T, name, src string) string {
	t.Helper()
	root, err := os.Getwd()
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), name+".test")
	file := filepath.Join(t.TempDir(), "orders_test.go")
	require.NoError(t, os.WriteFile(file, []byte(src), 0o644))
	// A directory that exists only in the overlay, inside the module, as
	// buildReadmeProgram does for programs. go vet, which cannot run in
	// such a directory, is off: TestREADME vets every block.
	dir := filepath.Join(root, "_readme_overlay", name)
	flags := goFlags(t, t.TempDir(), map[string]string{filepath.Join(dir, "orders_test.go"): file})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, stderr, err := runGo(ctx, root, append(append([]string{"test", "-c", "-vet=off"}, flags...), "-o", bin, dir)...)
	require.NoError(t, err, "build the README's test file: %s", stderr)
	return bin
}

// runDirsOf returns the run directories that a local server started by
// the process pid keeps, in the places pgserver puts them.
func runDirsOf(pid int) []string {
	var found []string
	seen := map[string]bool{}
	for _, base := range []string{"/dev/shm", os.TempDir(), "/tmp"} {
		matches, _ := filepath.Glob(filepath.Join(base, "sprocketspg-pg-"+strconv.Itoa(pid)+"-*"))
		for _, m := range matches {
			if !seen[m] {
				seen[m] = true
				found = append(found, m)
			}
		}
	}
	return found
}

// runReadmeTest runs a test binary built from the README's test file and
// returns its output and PID; it fails t unless the binary exits 0.
func runReadmeTest(t *testing.T, bin string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, "-test.v", "-test.count=1")
	cmd.Dir = t.TempDir()
	cmd.Env = readmeEnv()
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	require.NoError(t, cmd.Start())
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "the README's test passes; its output:\n%s", out.String())
	case <-time.After(3 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("the README's test still runs after 3 minutes; its output:\n%s", out.String())
	}
	return out.String(), cmd.Process.Pid
}

// TestREADMETestsSectionRuns runs the README's example test file as a
// test package of its own, the way a service would: it passes on the
// schema NewAppWithDatabase gets, and with its TestMain it leaves no
// server directory behind. The same file without TestMain leaves one,
// which is why the README asks for it.
func TestREADMETestsSectionRuns(t *testing.T) {
	src := readmeTestFile(t)
	bin := buildReadmeTest(t, "tests_section", src)
	out, pid := runReadmeTest(t, bin)
	assert.Contains(t, out, "--- PASS: TestOrderTotal")
	assert.NotContains(t, out, "--- FAIL")
	assert.NotContains(t, out, "goleak")
	ownServer := os.Getenv("SPROCKETSPG_TEST_POSTGRES_URL") == ""
	if ownServer {
		assert.Empty(t, runDirsOf(pid), "RunTests removes the directory of the server the test started")
	}

	t.Run("without TestMain", func(t *testing.T) {
		if !ownServer {
			t.Skip("with SPROCKETSPG_TEST_POSTGRES_URL set the test starts no server of its own")
		}
		testMain := regexp.MustCompile(`(?m)^func TestMain\(m \*testing\.M\) \{.*\}\n`)
		require.Regexp(t, testMain, src)
		bare := testMain.ReplaceAllString(src, "var _ = os.Exit\n")
		out, pid := runReadmeTest(t, buildReadmeTest(t, "tests_section_bare", bare))
		assert.Contains(t, out, "--- PASS: TestOrderTotal")
		left := runDirsOf(pid)
		t.Logf("test process %d left %v", pid, left)
		t.Cleanup(func() {
			for _, d := range left {
				_ = os.RemoveAll(d)
			}
		})
		if _, err := os.Stat("/dev/shm"); err != nil {
			t.Skip("no /dev/shm here")
		}
		assert.NotEmpty(t, left, "without RunTests the server's directory stays")
		for _, d := range left {
			// The server itself did not outlive the test process.
			pidFile, err := os.ReadFile(filepath.Join(d, "data", "postmaster.pid"))
			if err != nil {
				t.Logf("no postmaster.pid in %s: %v", d, err)
				continue
			}
			t.Logf("the server's postmaster.pid:\n%s", pidFile)
			serverPID, err := strconv.Atoi(strings.SplitN(string(pidFile), "\n", 2)[0])
			require.NoError(t, err)
			assert.Eventually(t, func() bool {
				_, err := os.Stat(fmt.Sprintf("/proc/%d", serverPID))
				return os.IsNotExist(err)
			}, 10*time.Second, 20*time.Millisecond, "the server of a dead test process is killed")
		}
	})
}
