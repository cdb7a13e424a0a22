package sprocketspg_test

// The README is compiled, not copied: TestREADME turns every ```go block of
// README.md into a package of its own and compiles it, so that a snippet a
// reader could not compile fails go test.
//
// The convention a ```go block follows:
//
//   - A block whose first token is `package` is a complete file. It is
//     compiled as written, as its own package, and imports what it uses.
//
//   - Any other block is a fragment: declarations (func, method, type, var,
//     const), then statements; either part may be missing. A fragment does
//     not import: it may name the packages of readmeImports, and the
//     harness imports those it names and uses each once, so that none has
//     to be used. The declarations go at file level. The statements go in
//     a block of their own in the body of a function whose parameters are
//     readmeParams (ctx, db, pool, cfg, logger, mux, w, r, t): those names
//     need no declaration, the fragment may declare them again, and since
//     unused parameters are legal, only the fragment's own variables must
//     be used. In place of statements the block may end in fx options
//     separated by commas (the last comma is optional), compiled as the
//     arguments of fx.Options, so each must be an fx.Option. The
//     declarations end at the first line where the text above parses as
//     declarations and the text below as statements (or else as options),
//     so that a block is compiled as statements wherever it can be.
//
//   - An HTML comment on the last non-blank line before the fence, which
//     GitHub does not show, changes that for one block.
//     <!-- readme: func(team string, accountID int64) error --> compiles
//     the statements in a function literal of that signature (inside the
//     function above), so that they may use its parameters and return its
//     results; statements that may not have returned by their end are
//     taken for the start of the function body, and the harness ends it.
//     <!-- readme: skip REASON --> compiles nothing: the block's subtest
//     is skipped, saying REASON.
//     <!-- readme: module DIR --> compiles the block in the Go module at
//     DIR, relative to this one, instead of this module: for a snippet
//     that needs packages this module does not depend on (a cloud SDK),
//     which DIR's go.mod requires.
//
//   - <!-- readme: file PATH --> right before a fenced block of any
//     language (```sql) makes that block's text the file PATH, relative
//     and within, in the package of the next ```go block, so that the
//     block can embed it (//go:embed) or read it as the reader's program
//     would. Any other <!-- readme ... --> comment, or one that is not
//     right before a block it applies to, fails the test.
//
// Each block is a subtest named after the line of its opening fence
// (README.md:153). Messages carry README lines and columns, since the
// generated files hold //line directives; a message that points into the
// harness instead comes with the generated file.
//
// The go command sees the generated files through -overlay only, so that
// no generated Go file ever sits in the module for gofmt or a concurrent
// build to pick up. go list -export compiles the packages, reporting every
// compile error and linking nothing, in directories that exist only in the
// overlay and are named after the blocks (_readme_overlay/README_L153), so
// that the build cache remembers blocks that did not change. go vet then
// checks the packages that compiled; it runs in each package's directory,
// so those are made, empty, under a directory of the run's own whose name
// starts with "_" (which ./... ignores), and removed when vet is done.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/scanner"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readmeParams are the names a fragment may use without declaring them:
// what a reader takes to be in scope in a start hook, a handler or a test.
var readmeParams = []string{
	"ctx context.Context",
	"db *sprocketspg.Pool",
	"pool *sprocketspg.Pool",
	"cfg sprocketspg.Config",
	"logger *zap.Logger",
	"mux *http.ServeMux",
	"w http.ResponseWriter",
	"r *http.Request",
	"t *testing.T",
}

// readmeImports are the packages a fragment may use without importing
// them, each with the var spec that uses it once in the harness. A
// fragment's file imports those it names (and its harness needs), so
// that the compiler and vet load no more than they must.
var readmeImports = []struct{ name, path, use string }{
	{"context", "context", "_ context.Context"},
	{"errors", "errors", "_ = errors.New"},
	{"fmt", "fmt", "_ = fmt.Sprint"},
	{"log", "log", "_ = log.Print"},
	{"http", "net/http", "_ http.Handler"},
	{"os", "os", "_ = os.Getenv"},
	{"strings", "strings", "_ = strings.TrimSpace"},
	{"atomic", "sync/atomic", "_ atomic.Int64"},
	{"testing", "testing", "_ testing.TB"},
	{"time", "time", "_ time.Duration"},
	{"pgx", "github.com/jackc/pgx/v5", "_ pgx.Tx"},
	{"pgconn", "github.com/jackc/pgx/v5/pgconn", "_ *pgconn.PgError"},
	{"pgxpool", "github.com/jackc/pgx/v5/pgxpool", "_ *pgxpool.Pool"},
	{"promhttp", "github.com/prometheus/client_golang/prometheus/promhttp", "_ = promhttp.Handler"},
	{"fx", "go.uber.org/fx", "_ fx.Option"},
	{"zap", "go.uber.org/zap", "_ *zap.Logger"},
	{"sprocketspg", "github.com/sprockets/sprocketspg", "_ *sprocketspg.Pool"},
	{"discovery", "github.com/sprockets/sprocketspg/discovery", "_ discovery.Resolver"},
	{"fxtest_helpers", "github.com/sprockets/sprocketspg/fxtest_helpers", "_ *fxtest_helpers.TestServer"},
	{"health", "github.com/sprockets/sprocketspg/health", "_ *health.Checker"},
	{"otelpg", "github.com/sprockets/sprocketspg/otelpg", "_ = otelpg.Module"},
	{"prompg", "github.com/sprockets/sprocketspg/prompg", "_ = prompg.Module"},
	{"throwaway", "github.com/sprockets/sprocketspg/throwaway", "_ *throwaway.Server"},
	{"txn", "github.com/sprockets/sprocketspg/txn", "_ txn.Option"},
}

func TestREADME(t *testing.T) {
	t.Parallel()
	path, err := filepath.Abs("README.md")
	require.NoError(t, err)
	md, err := os.ReadFile(path)
	require.NoError(t, err)

	rep := checkMarkdown(t, path, string(md))
	for _, p := range rep.problems {
		t.Error(p)
	}
	// An extractor that finds nothing would pass everything.
	require.NotEmpty(t, rep.blocks, "README.md has no ```go block")
	for _, b := range rep.blocks {
		t.Run(fmt.Sprintf("README.md:%d", b.block.fence), b.report)
	}
}

// TestReadmeHarnessCatchesBrokenSnippets feeds the harness a markdown file
// with one block per kind of mistake a reader would hit, and blocks that
// must pass, so that the README check is known to be able to fail.
func TestReadmeHarnessCatchesBrokenSnippets(t *testing.T) {
	t.Parallel()
	root, err := os.Getwd()
	require.NoError(t, err)
	const md = "# synthetic\n" + // line 1
		"\n" +
		"```go\n" + // 3: statements that compile
		"res, err := db.Execute(ctx, \"SELECT 1\")\n" +
		"if err != nil {\n" +
		"\tlog.Fatal(err)\n" +
		"}\n" +
		"fmt.Println(res.Row)\n" +
		"```\n" +
		"\n" +
		"```go\n" + // 11: an unused variable
		"url := fxtest_helpers.NewDatabase(t)\n" +
		"```\n" +
		"\n" +
		"```go\n" + // 15: an unknown identifier
		"fmt.Println(nosuch)\n" +
		"```\n" +
		"\n" +
		"```go\n" + // 19: a wrong signature
		"\tres, err := db.Execute(\"SELECT 1\")\n" +
		"```\n" +
		"\n" +
		"```go\n" + // 23: a complete file missing an import
		"package main\n" +
		"\n" +
		"func main() { fmt.Println(\"hi\") }\n" +
		"```\n" +
		"\n" +
		"```go\n" + // 29: declarations, then fx options, the last without a comma
		"type timing struct{}\n" +
		"\n" +
		"func (timing) ObserveQuery(sprocketspg.QueryEvent) {}\n" +
		"\n" +
		"sprocketspg.Module,\n" +
		"fx.Provide(sprocketspg.AsObserver(func() timing { return timing{} })) // comment\n" +
		"```\n" +
		"\n" +
		"```go\n" + // 38: an option of the wrong type
		"sprocketspg.Module,\n" +
		"42,\n" +
		"```\n" +
		"\n" +
		"<!-- readme: func(team string) error -->\n" + // 43
		"```go\n" + // 44: names and results from the directive
		"_, err := db.Execute(ctx, \"SELECT $1\", team)\n" +
		"return err\n" +
		"```\n" +
		"\n" +
		"```go\n" + // 49: a result the harness function cannot return
		"return nil\n" +
		"```\n" +
		"\n" +
		"```go\n" + // 53: a vet finding, not a compile error
		"fmt.Printf(\"%d\\n\", \"s\")\n" +
		"```\n" +
		"\n" +
		"```go\n" + // 57: the README's old placeholder
		"fx.New(sprocketspg.Module, prompg.Module, ...)\n" +
		"```\n" +
		"\n" +
		"<!-- readme: skip pseudo-code -->\n" + // 61
		"```go\n" + // 62: skipped, visibly
		"this is not Go\n" +
		"```\n" +
		"\n" +
		"<!-- readme: sikp typo -->\n" + // 66
		"```go\n" + // 67: an unknown directive
		"fmt.Println()\n" +
		"```\n" +
		"\n" +
		"<!-- readme: func(x int) -->\n" + // 71: not before a go block
		"\n" +
		"```sh\n" + // 73: not Go, not checked
		"go test ./...\n" +
		"```\n" +
		"\n" +
		"```go\n" + // 77: a fragment that imports
		"import \"fmt\"\n" +
		"\n" +
		"func f() { fmt.Println() }\n" +
		"```\n" +
		"\n" +
		"<!-- readme: func() (int, error) -->\n" +
		"```go\n" + // 84: the start of a function that returns
		"fmt.Println()\n" +
		"```\n" +
		"\n" +
		"<!-- readme: func(ok bool) error -->\n" +
		"```go\n" + // 89: a function body that returns on every path
		"if ok {\n" +
		"\treturn nil\n" +
		"} else {\n" +
		"\treturn errors.New(\"no\")\n" +
		"}\n" +
		"```\n" +
		"\n" +
		"```go\n" + // 97: a complete program, compiled and not linked
		"package main\n" +
		"\n" +
		"import \"fmt\"\n" +
		"\n" +
		"func main() { fmt.Println(\"hi\") }\n" +
		"```\n"
	rep := checkMarkdown(t, filepath.Join(root, "synthetic.md"), md)

	assert.Equal(t, []string{
		"synthetic.md:71: <!-- readme: ... --> comment is not right before a ```go block",
	}, rep.problems)
	byLine := map[int]*blockReport{}
	var fences []int
	for _, b := range rep.blocks {
		byLine[b.block.fence] = b
		fences = append(fences, b.block.fence)
	}
	require.Equal(t, []int{3, 11, 15, 19, 23, 29, 38, 44, 49, 53, 57, 62, 67, 77, 84, 89, 97}, fences,
		"every ```go block is found, and nothing else")

	for _, fence := range []int{3, 29, 44, 84, 89, 97} {
		assert.Empty(t, byLine[fence].problems, "block at line %d", fence)
	}
	assert.Equal(t, "pseudo-code", byLine[62].skip)
	assert.Empty(t, byLine[62].problems)

	// Positions are the markdown file's lines and columns.
	wants := map[int]string{
		11: "synthetic.md:12:1: declared and not used: url",
		15: "synthetic.md:16:13: undefined: nosuch",
		19: "synthetic.md:20:25: not enough arguments in call to db.Execute",
		23: "synthetic.md:26:15: undefined: fmt",
		38: "synthetic.md:40:1: cannot use 42 (constant of type int) as fx.Option value",
		49: "synthetic.md:50:8: too many return values",
		53: "synthetic.md:54:13: fmt.Printf format %d has arg \"s\" of wrong type string (printf)",
		57: "synthetic.md:58:",
		67: `unknown directive "sikp typo"`,
		77: "a fragment cannot import",
	}
	for fence, want := range wants {
		b := byLine[fence]
		assert.NotEmpty(t, b.problems, "block at line %d passed", fence)
		assert.Contains(t, strings.Join(b.problems, "\n"), want, "block at line %d", fence)
	}
	// A fragment's harness function does not hide the variables it declares.
	assert.Contains(t, strings.Join(byLine[19].problems, "\n"), "declared and not used: res")
}

// TestReadmeExtractGoBlocks checks, without compiling, that the extractor
// finds ```go blocks however they are fenced and refuses directives it
// cannot place.
func TestReadmeExtractGoBlocks(t *testing.T) {
	const md = "<!-- readme: skip shown elsewhere -->\r\n" + // 1
		"\r\n" +
		"```go\r\n" + // 3: after a blank line, with CRLF
		"a()\r\n" +
		"```\r\n" +
		"- a list item:\n" + // 6
		"\n" +
		"    ~~~~ golang title\n" + // 8: indented, tildes, another name
		"    b()\n" +
		"    ```\n" + // 10: not the closing fence
		"    ~~~~\n" +
		"````markdown\n" + // 12: not Go, holding what looks like Go
		"```go\n" +
		"c()\n" +
		"```\n" +
		"````\n" +
		"<!-- readme:func(x int)-->\n" + // 17: no spaces needed
		"```Go\n" + // 18
		"d(x)\n" +
		"```\n" +
		"<!-- README skip -->\n" + // 21: malformed
		"<!-- readme: skip -->\n" + // 22: then not before a block
		"text\n" +
		"```go\n" + // 24: never closed
		"e()\n"
	blocks, problems := extractGoBlocks(md)
	assert.Equal(t, []string{
		`21: malformed directive "<!-- README skip -->", want <!-- readme: func(...) -->, <!-- readme: skip REASON -->, <!-- readme: module DIR --> or <!-- readme: file PATH -->`,
		"22: <!-- readme: ... --> comment is not right before a ```go block",
		"24: ```go block is never closed",
	}, problems)
	require.Len(t, blocks, 3)
	assert.Equal(t, 3, blocks[0].fence)
	assert.Equal(t, []string{"a()"}, blocks[0].lines)
	require.NotNil(t, blocks[0].dir)
	assert.Equal(t, readmeDirective{line: 1, col: 14, text: "skip shown elsewhere"}, *blocks[0].dir)
	assert.Equal(t, 8, blocks[1].fence)
	assert.Equal(t, []string{"    b()", "    ```"}, blocks[1].lines)
	assert.Nil(t, blocks[1].dir)
	assert.Equal(t, 18, blocks[2].fence)
	require.NotNil(t, blocks[2].dir)
	assert.Equal(t, "func(x int)", blocks[2].dir.text)
	assert.Equal(t, 13, blocks[2].dir.col)
}

func TestReadmeFileDirective(t *testing.T) {
	const md = "<!-- readme: file migrations/00001_a.sql -->\n" + // 1
		"```sql\n" +
		"-- +goose Up\n" +
		"CREATE TABLE a ();\n" +
		"```\n" +
		"text\n" +
		"<!-- readme: file ../escape.sql -->\n" + // 7: outside the package
		"```sql\n" +
		"x\n" +
		"```\n" +
		"```go\n" + // 11: gets the first file
		"package main\n" +
		"```\n" +
		"<!-- readme: file left.txt -->\n" + // 14: no Go block after it
		"```\n" +
		"y\n" +
		"```\n"
	blocks, problems := extractGoBlocks(md)
	assert.Equal(t, []string{
		`7: file directive "file ../escape.sql": want a clean relative path within the package`,
		"14: file directive with no ```go block after it",
	}, problems)
	require.Len(t, blocks, 1)
	assert.Equal(t, 11, blocks[0].fence)
	assert.Equal(t, []readmeFile{{line: 1, path: "migrations/00001_a.sql", content: "-- +goose Up\nCREATE TABLE a ();\n"}}, blocks[0].files)
}

// readmeBlock is a ```go block of a markdown file.
type readmeBlock struct {
	fence int      // line of the opening fence, from 1
	lines []string // the lines between the fences, as written
	dir   *readmeDirective
	files []readmeFile // from file directives before the block
}

// readmeFile is a block that a file directive makes a file of the next
// ```go block's package.
type readmeFile struct {
	line    int    // of the directive
	path    string // slash-separated, relative to the package
	content string
}

// first returns the markdown line of the block's first line of code.
func (b readmeBlock) first() int { return b.fence + 1 }

// readmeDirective is a <!-- readme: ... --> comment before a block.
type readmeDirective struct {
	line, col int    // where text starts in the markdown file
	text      string // what follows "readme:", trimmed
	skip      string // the reason of a skip directive
	sig       string // a func directive's signature, as written
	module    string // a module directive's directory, slash-separated
}

// blockReport is what checking one block found.
type blockReport struct {
	block    readmeBlock
	skip     string   // why the block is not compiled, from its directive
	problems []string // parse, compile and vet messages, at markdown positions
	name     string   // the block's package directory, README_L21
	source   string   // the generated file, "" when none was compiled
	real     string   // where source is written
	// files are the block's other files (file directives), by path
	// within its package, each with where it is written.
	files map[string]string
}

// report fails t with the block's problems, or skips it.
func (b *blockReport) report(t *testing.T) {
	if b.skip != "" {
		t.Skipf("<!-- readme: skip %s -->", b.skip)
	}
	for _, p := range b.problems {
		t.Error(p)
	}
	if b.source == "" {
		return
	}
	// A message about the harness means nothing without the harness.
	for _, p := range b.problems {
		if strings.Contains(p, b.name+"/readme.go") {
			t.Logf("generated file %s/readme.go:\n%s", b.name, numberLines(b.source))
			break
		}
	}
}

// markdownReport is what checking a markdown file found.
type markdownReport struct {
	problems []string // about the file rather than one block
	blocks   []*blockReport
}

// checkMarkdown extracts, generates and compiles every ```go block of md,
// the contents of the file at path (absolute, in the module at the current
// directory). It fails t only when the check itself cannot run.
func checkMarkdown(t *testing.T, path, md string) markdownReport {
	t.Helper()
	root, err := os.Getwd()
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(root, "go.mod"), "the test must run in the module root")

	blocks, problems := extractGoBlocks(md)
	rep := markdownReport{}
	for _, p := range problems {
		rep.problems = append(rep.problems, fmt.Sprintf("%s:%s", filepath.Base(path), p))
	}

	// The generated files live outside the module and reach the go command
	// through -overlay, so that no Go file of ours ever sits in the module
	// for gofmt or a concurrent build to see. go list is pointed at package
	// directories that exist only in the overlay, named after the block, so
	// that they are the same in every run and the build cache remembers
	// blocks that did not change.
	genDir := t.TempDir()
	stem := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	// The blocks of each module, this one ("") and those of module
	// directives, compile together.
	byModule := map[string][]*blockReport{}
	var modules []string
	for _, b := range blocks {
		br := &blockReport{block: b}
		rep.blocks = append(rep.blocks, br)
		modRoot := root
		if b.dir != nil {
			if err := parseDirective(b.dir); err != nil {
				br.problems = append(br.problems, fmt.Sprintf("%s:%d: %v", filepath.Base(path), b.dir.line, err))
				continue
			}
			if b.dir.skip != "" {
				br.skip = b.dir.skip
				continue
			}
			if b.dir.module != "" {
				modRoot = filepath.Join(root, filepath.FromSlash(b.dir.module))
				if _, err := os.Stat(filepath.Join(modRoot, "go.mod")); err != nil {
					br.problems = append(br.problems, fmt.Sprintf("%s:%d: module directive: %v", filepath.Base(path), b.dir.line, err))
					continue
				}
			}
		}
		br.name = fmt.Sprintf("%s_L%d", stem, b.fence)
		genPath := filepath.Join(modRoot, "_readme_overlay", br.name, "readme.go")
		src, err := generateBlock(path, genPath, b)
		if err != nil {
			br.problems = append(br.problems, relativize(root, err.Error()))
			continue
		}
		br.source = src
		br.real = filepath.Join(genDir, br.name+".go")
		require.NoError(t, os.WriteFile(br.real, []byte(src), 0o644))
		br.files = map[string]string{}
		for i, f := range b.files {
			real := filepath.Join(genDir, fmt.Sprintf("%s_file%d", br.name, i))
			require.NoError(t, os.WriteFile(real, []byte(f.content), 0o644))
			br.files[filepath.FromSlash(f.path)] = real
		}
		if byModule[modRoot] == nil {
			modules = append(modules, modRoot)
		}
		byModule[modRoot] = append(byModule[modRoot], br)
	}
	for _, modRoot := range modules {
		compileBlocks(t, root, modRoot, genDir, byModule[modRoot], &rep)
	}
	return rep
}

// compileBlocks compiles and vets brs, the generated blocks of the module
// at modRoot, adding what it finds to each block's report and to rep;
// root is the module of the markdown file, to which messages are relative.
func compileBlocks(t *testing.T, root, modRoot, genDir string, brs []*blockReport, rep *markdownReport) {
	t.Helper()
	listRoot := filepath.Join(modRoot, "_readme_overlay")
	overlay := map[string]string{}
	var listDirs []string
	byDir := map[string]*blockReport{}
	for _, br := range brs {
		pkgDir := filepath.Join(listRoot, br.name)
		overlay[filepath.Join(pkgDir, "readme.go")] = br.real
		for rel, real := range br.files {
			overlay[filepath.Join(pkgDir, rel)] = real
		}
		listDirs = append(listDirs, "./"+filepath.ToSlash(filepath.Join(filepath.Base(listRoot), br.name)))
		byDir[pkgDir] = br
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// go list -export compiles each package, reporting every compile
	// error, without linking the ones that are programs.
	args := append([]string{"list", "-e", "-export", "-json=Dir,ImportPath,Export,Error,DepsErrors"}, goFlags(t, genDir, overlay)...)
	args = append(args, listDirs...)
	began := time.Now()
	stdout, stderr, err := runGo(ctx, modRoot, args...)
	require.NoError(t, err, "go %s:\n%s", strings.Join(args, " "), stderr)
	t.Logf("go list -export of %d packages: %s", len(listDirs), time.Since(began).Round(time.Millisecond))
	modPath := ""
	var compiled []*blockReport
	dec := json.NewDecoder(bytes.NewReader(stdout))
	for {
		var p struct {
			Dir, ImportPath, Export string
			Error                   *struct{ Err string }
			DepsErrors              []struct{ Err string }
		}
		err := dec.Decode(&p)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err, "go list output:\n%s", stdout)
		br, ok := byDir[p.Dir]
		require.True(t, ok, "go list reported a package it was not asked for: %s", p.Dir)
		modPath = strings.TrimSuffix(p.ImportPath, "/"+filepath.Base(listRoot)+"/"+br.name)
		if p.Error != nil {
			br.problems = append(br.problems, compilerLines(root, p.Error.Err)...)
		}
		for _, e := range p.DepsErrors {
			br.problems = append(br.problems, "a package the block imports does not build: "+relativize(root, e.Err))
		}
		if p.Error == nil && len(p.DepsErrors) == 0 {
			require.NotEmpty(t, p.Export, "go list compiled %s to nothing", p.ImportPath)
			compiled = append(compiled, br)
		}
	}
	if len(compiled) == 0 {
		return
	}

	// go vet then runs the analyzers that go test runs on a reader's
	// code, and more. It runs in each package's directory, so those must
	// exist: empty ones, under a directory of this run's own (./...
	// ignores names starting with "_"), removed when vet is done.
	vetRoot, err := os.MkdirTemp(modRoot, "_readme_vet")
	require.NoError(t, err)
	defer func() { assert.NoError(t, os.RemoveAll(vetRoot)) }()
	overlay = map[string]string{}
	var vetDirs []string
	byImport := map[string]*blockReport{}
	for _, br := range compiled {
		dir := filepath.Join(vetRoot, br.name)
		require.NoError(t, os.Mkdir(dir, 0o755))
		overlay[filepath.Join(dir, "readme.go")] = br.real
		for rel, real := range br.files {
			overlay[filepath.Join(dir, rel)] = real
		}
		rel := filepath.ToSlash(filepath.Join(filepath.Base(vetRoot), br.name))
		vetDirs = append(vetDirs, "./"+rel)
		byImport[modPath+"/"+rel] = br
	}
	args = append(append([]string{"vet", "-json"}, goFlags(t, genDir, overlay)...), vetDirs...)
	began = time.Now()
	stdout, stderr, err = runGo(ctx, modRoot, args...)
	t.Logf("go vet of %d packages: %s", len(vetDirs), time.Since(began).Round(time.Millisecond))
	if err != nil {
		// vet failed as a whole or on a type error, in text, not JSON:
		// attribute what it printed by its package headers.
		for pkg, lines := range splitByPackage(string(stderr)) {
			msg := relativize(root, strings.Join(lines, "\n"))
			if br, ok := byImport[pkg]; ok {
				br.problems = append(br.problems, "go vet: "+msg)
			} else if strings.TrimSpace(msg) != "" {
				rep.problems = append(rep.problems, fmt.Sprintf("%v: %s", err, msg))
			}
		}
	}
	dec = json.NewDecoder(bytes.NewReader(stdout))
	for {
		var tree map[string]map[string]json.RawMessage
		err := dec.Decode(&tree)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err, "go vet output:\n%s", stdout)
		for pkg, analyzers := range tree {
			br, ok := byImport[pkg]
			require.True(t, ok, "go vet reported a package it was not asked for: %s", pkg)
			for analyzer, raw := range analyzers {
				var diags []struct{ Posn, Message string }
				if json.Unmarshal(raw, &diags) != nil {
					// An analyzer that failed reports {"error": "..."}.
					br.problems = append(br.problems, fmt.Sprintf("go vet %s: %s", analyzer, raw))
					continue
				}
				for _, d := range diags {
					br.problems = append(br.problems, relativize(root, fmt.Sprintf("%s: %s (%s)", d.Posn, d.Message, analyzer)))
				}
			}
		}
	}
}

// goFlags writes overlay to a file in dir and returns the go command's
// flags for it, and those the test binary was built with.
func goFlags(t *testing.T, dir string, overlay map[string]string) []string {
	t.Helper()
	data, err := json.Marshal(map[string]any{"Replace": overlay})
	require.NoError(t, err)
	f, err := os.CreateTemp(dir, "overlay*.json")
	require.NoError(t, err)
	_, err = f.Write(data)
	require.NoError(t, errors.Join(err, f.Close()))
	return append([]string{"-overlay", f.Name()}, goBuildFlags()...)
}

var (
	// fenceRE matches the opening of a fenced code block and captures the
	// fence and the first word of its info string.
	fenceRE = regexp.MustCompile("^\\s*(`{3,}|~{3,})\\s*([^\\s`]*)")
	// directiveRE matches a whole harness directive line.
	directiveRE = regexp.MustCompile(`^\s*<!--\s*readme:\s*(.*?)\s*-->\s*$`)
	// anyDirectiveRE matches whatever looks like a directive, so that a
	// malformed one fails rather than being ignored.
	anyDirectiveRE = regexp.MustCompile(`(?i)<!--\s*readme`)
)

// extractGoBlocks returns the ```go blocks of md with their directives,
// and problems ("LINE: message") with the markdown itself.
func extractGoBlocks(md string) ([]readmeBlock, []string) {
	var (
		blocks   []readmeBlock
		problems []string
		fence    string       // the open fence, "" outside code blocks
		cur      *readmeBlock // the open block, when it is Go
		pending  *readmeDirective
		file     *readmeFile  // the open block, when a file directive made it a file
		files    []readmeFile // files for the next ```go block
	)
	for i, line := range strings.Split(md, "\n") {
		n := i + 1
		line = strings.TrimSuffix(line, "\r")
		if fence != "" {
			switch {
			case closesFence(line, fence):
				if cur != nil {
					blocks = append(blocks, *cur)
				}
				if file != nil {
					files = append(files, *file)
				}
				fence, cur, file = "", nil, nil
			case cur != nil:
				cur.lines = append(cur.lines, line)
			case file != nil:
				file.content += line + "\n"
			}
			continue
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		if m := fenceRE.FindStringSubmatch(line); m != nil {
			fence = m[1]
			if pending != nil && strings.HasPrefix(pending.text, "file ") {
				path := strings.TrimSpace(strings.TrimPrefix(pending.text, "file "))
				if clean := filepath.ToSlash(filepath.Clean(path)); path == "" || clean != path || filepath.IsAbs(path) || strings.HasPrefix(clean, "../") || clean == ".." {
					problems = append(problems, fmt.Sprintf("%d: file directive %q: want a clean relative path within the package", pending.line, pending.text))
				} else {
					file = &readmeFile{line: pending.line, path: path}
				}
				pending = nil
				continue
			}
			if lang := strings.ToLower(m[2]); lang == "go" || lang == "golang" {
				cur = &readmeBlock{fence: n, dir: pending, files: files}
				pending, files = nil, nil
				continue
			}
		}
		if pending != nil {
			problems = append(problems, fmt.Sprintf("%d: <!-- readme: ... --> comment is not right before a ```go block", pending.line))
			pending = nil
		}
		if fence != "" || !anyDirectiveRE.MatchString(line) {
			continue
		}
		m := directiveRE.FindStringSubmatch(line)
		if m == nil {
			problems = append(problems, fmt.Sprintf("%d: malformed directive %q, want <!-- readme: func(...) -->, <!-- readme: skip REASON -->, <!-- readme: module DIR --> or <!-- readme: file PATH -->", n, line))
			continue
		}
		pending = &readmeDirective{line: n, col: strings.Index(line, m[1]) + 1, text: m[1]}
	}
	if pending != nil {
		problems = append(problems, fmt.Sprintf("%d: <!-- readme: ... --> comment is not right before a ```go block", pending.line))
	}
	for _, f := range files {
		problems = append(problems, fmt.Sprintf("%d: file directive with no ```go block after it", f.line))
	}
	if cur != nil {
		problems = append(problems, fmt.Sprintf("%d: ```go block is never closed", cur.fence))
	}
	return blocks, problems
}

// closesFence reports whether line closes a code block opened by fence.
func closesFence(line, fence string) bool {
	s := strings.TrimSpace(line)
	return len(s) >= len(fence) && strings.Trim(s, fence[:1]) == ""
}

// generateBlock returns the Go file that compiles b, from the markdown
// file at mdPath, when the go command sees it at genPath.
func generateBlock(mdPath, genPath string, b readmeBlock) (string, error) {
	pos := func(line int) string { return fmt.Sprintf("%s:%d", mdPath, line) }
	text := strings.Join(b.lines, "\n")
	if firstToken(text) == token.PACKAGE {
		if b.dir != nil && b.dir.module == "" {
			return "", fmt.Errorf("%s: a func directive has no effect on a complete file", pos(b.dir.line))
		}
		return fmt.Sprintf("//line %s:1\n%s\n", pos(b.first()), text), nil
	}
	if f, err := parseDecls(mdPath, b.first(), text); err == nil && len(f.Imports) > 0 {
		return "", fmt.Errorf("%s: a fragment cannot import: start the block with a package clause to make it a complete file", pos(b.first()))
	}
	k, options, err := splitFragment(mdPath, b)
	if err != nil {
		return "", err
	}
	decls, body := b.lines[:k], b.lines[k:]
	if b.dir != nil && blank(body) {
		return "", fmt.Errorf("%s: a func directive needs statements to apply to", pos(b.dir.line))
	}

	params := strings.Join(readmeParams, ", ")
	named := selectorBases(params, text, "fx.Options")
	if b.dir != nil {
		named = selectorBases(params, text, "fx.Options", b.dir.sig)
	}
	g := genWriter{genPath: genPath}
	g.printf("//line %s:2:1\n", genPath) // so that every harness line has one name
	g.printf("package readme\n\nimport (\n")
	for _, imp := range readmeImports {
		if named[imp.name] {
			g.printf("\t%q\n", imp.path)
		}
	}
	g.printf(")\n\n// Each import is used once, so that a fragment need not use them all.\nvar (\n")
	for _, imp := range readmeImports {
		if named[imp.name] {
			g.printf("\t%s\n", imp.use)
		}
	}
	g.printf(")\n\n")
	if k > 0 {
		g.markdown(mdPath, b.first(), 1, strings.Join(decls, "\n"))
	}
	if blank(body) {
		return g.String(), nil
	}
	g.printf("\nfunc _(%s) {\n", params)
	if b.dir != nil {
		// The literal's own parameters shadow the function's, so the
		// directive can retype any of them.
		g.printf("_ =\n")
		g.markdown(mdPath, b.dir.line, b.dir.col, b.dir.sig+" {")
	}
	// A block of its own, so that the fragment may declare the names of
	// the parameters again.
	g.printf("{\n")
	if options {
		g.printf("_ = fx.Options(\n")
		g.markdown(mdPath, b.first()+k, 1, withTrailingComma(strings.Join(body, "\n")))
		g.printf(")\n")
	} else {
		g.markdown(mdPath, b.first()+k, 1, strings.Join(body, "\n"))
	}
	g.printf("}\n")
	if b.dir != nil {
		if needsEnd(b.dir.sig, options, mdPath, b.first()+k, strings.Join(body, "\n")) {
			// A fragment may be the start of a function body: what a reader
			// writes after it returns.
			g.printf("panic(\"the README shows the start of this function only\")\n")
		}
		g.printf("}\n")
	}
	g.printf("}\n")
	return g.String(), nil
}

// needsEnd reports whether a fragment compiled in a function of signature
// sig needs an end the harness writes: the function has results, and the
// fragment is options or statements that do not end in a terminating
// statement (one that return, panic or goto ends).
func needsEnd(sig string, options bool, mdPath string, line int, body string) bool {
	expr, err := parser.ParseExpr(sig)
	if err != nil {
		return false // parseDirective reported it
	}
	if ft, ok := expr.(*ast.FuncType); !ok || ft.Results.NumFields() == 0 {
		return false
	}
	if options {
		return true
	}
	src := fmt.Sprintf("package p\nfunc _() {\n//line %s:%d:1\n%s\n}\n", mdPath, line, body)
	f, err := parser.ParseFile(token.NewFileSet(), "", src, parser.SkipObjectResolution)
	if err != nil {
		return false // splitFragment parsed it
	}
	list := f.Decls[0].(*ast.FuncDecl).Body.List
	return len(list) == 0 || !isTerminating(list[len(list)-1])
}

// isTerminating reports whether s is a terminating statement as the Go
// specification defines one. It is conservative about break statements:
// a loop, switch or select with any break in it is not terminating.
func isTerminating(s ast.Stmt) bool {
	switch s := s.(type) {
	case *ast.ReturnStmt:
		return true
	case *ast.BranchStmt:
		return s.Tok == token.GOTO
	case *ast.ExprStmt:
		call, ok := s.X.(*ast.CallExpr)
		if !ok {
			return false
		}
		id, ok := call.Fun.(*ast.Ident)
		return ok && id.Name == "panic"
	case *ast.BlockStmt:
		return endsTerminating(s.List)
	case *ast.IfStmt:
		return s.Else != nil && isTerminating(s.Body) && isTerminating(s.Else)
	case *ast.LabeledStmt:
		return isTerminating(s.Stmt)
	case *ast.ForStmt:
		return s.Cond == nil && !hasBreak(s.Body)
	case *ast.SwitchStmt:
		return clausesTerminate(s.Body, true)
	case *ast.TypeSwitchStmt:
		return clausesTerminate(s.Body, true)
	case *ast.SelectStmt:
		return clausesTerminate(s.Body, false)
	}
	return false
}

func endsTerminating(list []ast.Stmt) bool {
	return len(list) > 0 && isTerminating(list[len(list)-1])
}

// clausesTerminate reports whether a switch or select body terminates:
// no break, every clause ends terminating (or, in a switch, falls
// through), and a switch has a default.
func clausesTerminate(body *ast.BlockStmt, needDefault bool) bool {
	if hasBreak(body) {
		return false
	}
	hasDefault := false
	for _, c := range body.List {
		var list []ast.Stmt
		switch c := c.(type) {
		case *ast.CaseClause:
			hasDefault = hasDefault || c.List == nil
			list = c.Body
		case *ast.CommClause:
			list = c.Body
		}
		if n := len(list); n > 0 {
			if br, ok := list[n-1].(*ast.BranchStmt); ok && br.Tok == token.FALLTHROUGH {
				continue
			}
		}
		if !endsTerminating(list) {
			return false
		}
	}
	return hasDefault || !needDefault
}

// hasBreak reports whether n holds a break statement, outside function
// literals.
func hasBreak(n ast.Node) bool {
	found := false
	ast.Inspect(n, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.FuncLit:
			return false
		case *ast.BranchStmt:
			found = found || n.Tok == token.BREAK
		}
		return !found
	})
	return found
}

// parseDirective fills in d from its text.
func parseDirective(d *readmeDirective) error {
	switch {
	case d.text == "skip" || strings.HasPrefix(d.text, "skip "):
		d.skip = strings.TrimSpace(strings.TrimPrefix(d.text, "skip"))
		if d.skip == "" {
			return errors.New("a skip directive needs a reason: <!-- readme: skip REASON -->")
		}
	case strings.HasPrefix(d.text, "func"):
		expr, err := parser.ParseExpr(d.text)
		if err != nil {
			return fmt.Errorf("directive %q: %w", d.text, err)
		}
		ft, ok := expr.(*ast.FuncType)
		if !ok {
			return fmt.Errorf("directive %q is not a function signature", d.text)
		}
		for _, f := range ft.Params.List {
			if len(f.Names) == 0 {
				return fmt.Errorf("directive %q: parameters need names", d.text)
			}
		}
		d.sig = d.text
	case strings.HasPrefix(d.text, "module "):
		dir := strings.TrimSpace(strings.TrimPrefix(d.text, "module "))
		if clean := filepath.ToSlash(filepath.Clean(dir)); dir == "" || clean != dir || filepath.IsAbs(dir) || strings.HasPrefix(clean, "../") || clean == ".." || clean == "." {
			return fmt.Errorf("module directive %q: want a clean relative path to a module within this one", d.text)
		}
		d.module = dir
	default:
		return fmt.Errorf("unknown directive %q, want func(...), skip REASON or module DIR", d.text)
	}
	return nil
}

// splitFragment returns the number k of b's lines that are declarations;
// the rest are statements, or fx options when options is true.
func splitFragment(mdPath string, b readmeBlock) (k int, options bool, err error) {
	lastDecls := 0
	for k = 0; k <= len(b.lines); k++ {
		if f, err := parseDecls(mdPath, b.first(), strings.Join(b.lines[:k], "\n")); err != nil || len(f.Imports) > 0 {
			continue
		}
		lastDecls = k
		body := strings.Join(b.lines[k:], "\n")
		if blank(b.lines[k:]) || parseStmts(mdPath, b.first()+k, body) == nil {
			return k, false, nil
		}
		if parseOptions(mdPath, b.first()+k, body) == nil {
			return k, true, nil
		}
	}
	// Where the declarations stop is most likely where the mistake is.
	body := strings.Join(b.lines[lastDecls:], "\n")
	err = parseStmts(mdPath, b.first()+lastDecls, body)
	return 0, false, fmt.Errorf("not declarations followed by statements or fx options: %w", err)
}

// parseDecls parses text, from line of the markdown file, as file-level
// declarations.
func parseDecls(mdPath string, line int, text string) (*ast.File, error) {
	src := fmt.Sprintf("package p\n//line %s:%d:1\n%s\n", mdPath, line, text)
	return parser.ParseFile(token.NewFileSet(), "", src, parser.SkipObjectResolution)
}

// parseStmts parses text, from line of the markdown file, as statements.
func parseStmts(mdPath string, line int, text string) error {
	src := fmt.Sprintf("package p\nfunc _() {\n//line %s:%d:1\n%s\n}\n", mdPath, line, text)
	return parseOneDecl(src)
}

// parseOptions parses text, from line of the markdown file, as a list of
// arguments.
func parseOptions(mdPath string, line int, text string) error {
	src := fmt.Sprintf("package p\nvar _ = f(\n//line %s:%d:1\n%s\n)\n", mdPath, line, withTrailingComma(text))
	return parseOneDecl(src)
}

// parseOneDecl parses src and checks that it holds one declaration, the
// harness's, so that text closing it early and declaring more is not
// taken for a fragment.
func parseOneDecl(src string) error {
	f, err := parser.ParseFile(token.NewFileSet(), "", src, parser.SkipObjectResolution)
	if err != nil {
		return err
	}
	if len(f.Decls) != 1 {
		return errors.New("the text closes the harness early")
	}
	return nil
}

// withTrailingComma adds a comma after the last token of text, unless it
// is one, so that the last of a list of options needs none.
func withTrailingComma(text string) string {
	fset := token.NewFileSet()
	file := fset.AddFile("", -1, len(text))
	var s scanner.Scanner
	s.Init(file, []byte(text), nil, 0)
	last, end := token.ILLEGAL, -1
	for {
		pos, tok, lit := s.Scan()
		if tok == token.EOF {
			break
		}
		if tok == token.SEMICOLON && lit == "\n" {
			continue // inserted by the scanner, not written
		}
		last, end = tok, file.Offset(pos)+len(tok.String())
		if lit != "" {
			end = file.Offset(pos) + len(lit)
		}
	}
	if end < 0 || last == token.COMMA {
		return text
	}
	return text[:end] + "," + text[end:]
}

// selectorBases returns the identifiers that come before a "." in texts:
// the packages the texts may name.
func selectorBases(texts ...string) map[string]bool {
	bases := map[string]bool{}
	for _, text := range texts {
		fset := token.NewFileSet()
		var s scanner.Scanner
		s.Init(fset.AddFile("", -1, len(text)), []byte(text), nil, 0)
		prev, prevLit := token.ILLEGAL, ""
		for {
			_, tok, lit := s.Scan()
			if tok == token.EOF {
				break
			}
			if tok == token.PERIOD && prev == token.IDENT {
				bases[prevLit] = true
			}
			prev, prevLit = tok, lit
		}
	}
	return bases
}

// firstToken returns the first token of text that is not a comment.
func firstToken(text string) token.Token {
	fset := token.NewFileSet()
	var s scanner.Scanner
	s.Init(fset.AddFile("", -1, len(text)), []byte(text), nil, 0)
	_, tok, _ := s.Scan()
	return tok
}

func blank(lines []string) bool {
	return strings.TrimSpace(strings.Join(lines, "")) == ""
}

// genWriter builds a generated file, keeping positions right with //line
// directives: markdown text reports its markdown lines, and the harness
// after it its own lines again.
type genWriter struct {
	bytes.Buffer
	genPath string
}

func (g *genWriter) printf(format string, args ...any) { fmt.Fprintf(&g.Buffer, format, args...) }

// markdown writes text, which starts at line and col of the markdown file
// at mdPath.
func (g *genWriter) markdown(mdPath string, line, col int, text string) {
	g.printf("//line %s:%d:%d\n%s\n", mdPath, line, col, text)
	// The directive below is on the next line; the harness resumes after.
	next := bytes.Count(g.Bytes(), []byte("\n")) + 2
	g.printf("//line %s:%d:1\n", g.genPath, next)
}

// goBuildFlags returns the build tags the test binary was built with,
// which decide what the blocks' imports contain. It leaves out -race on
// purpose: go vet needs the dependencies compiled without it, and their
// vet facts, which go vet ./... and go build leave in the build cache, so
// compiling the blocks without it too shares that work.
func goBuildFlags() []string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	for _, s := range info.Settings {
		if s.Key == "-tags" && s.Value != "" {
			return []string{"-tags=" + s.Value}
		}
	}
	return nil
}

// runGo runs the go command in dir; err is set when it exits non-zero.
func runGo(ctx context.Context, dir string, args ...string) (stdout, stderr []byte, err error) {
	// go test puts its own toolchain first in PATH.
	bin, err := exec.LookPath("go")
	if err != nil {
		return nil, nil, fmt.Errorf("find the go command: %w", err)
	}
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.Bytes(), errOut.Bytes(), fmt.Errorf("go %s: %w", args[0], err)
	}
	return out.Bytes(), errOut.Bytes(), nil
}

// compilerLines returns the messages of a go list error, without the
// "# package" headers, each with its indented continuation lines.
func compilerLines(root, text string) []string {
	var msgs []string
	for _, l := range strings.Split(strings.TrimSpace(text), "\n") {
		switch {
		case l == "" || strings.HasPrefix(l, "# "):
		case strings.HasPrefix(l, "\t") && len(msgs) > 0:
			msgs[len(msgs)-1] += "\n" + l
		default:
			msgs = append(msgs, relativize(root, l))
		}
	}
	return msgs
}

// splitByPackage groups the go command's output by its "# package"
// headers; lines before any header are under "".
func splitByPackage(text string) map[string][]string {
	out := map[string][]string{}
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "# ") {
			pkg = strings.TrimPrefix(l, "# ")
		} else {
			out[pkg] = append(out[pkg], l)
		}
	}
	return out
}

// relativize writes paths in the module at root relative to it, as the go
// command does on its own for some messages and not others.
func relativize(root, msg string) string {
	msg = strings.ReplaceAll(msg, root+string(filepath.Separator), "")
	return strings.ReplaceAll(strings.TrimPrefix(msg, "./"), "\n./", "\n")
}

func numberLines(src string) string {
	var b strings.Builder
	for i, l := range strings.Split(strings.TrimSuffix(src, "\n"), "\n") {
		fmt.Fprintf(&b, "%4d  %s\n", i+1, l)
	}
	return b.String()
}

// A module directive names a directory of a module within this one.
func TestReadmeModuleDirective(t *testing.T) {
	d := readmeDirective{text: "module examples/cloud"}
	require.NoError(t, parseDirective(&d))
	assert.Equal(t, "examples/cloud", d.module)
	for _, bad := range []string{"module ", "module ../other", "module /abs", "module ./examples/cloud", "module ."} {
		d := readmeDirective{text: bad}
		assert.Error(t, parseDirective(&d), bad)
	}
	// A directory without go.mod is reported on the block.
	root, err := os.Getwd()
	require.NoError(t, err)
	md := "<!-- readme: module testdata -->\n```go\npackage main\n\nfunc main() {}\n```\n"
	rep := checkMarkdown(t, filepath.Join(root, "MODULE.md"), md)
	require.Len(t, rep.blocks, 1)
	require.Len(t, rep.blocks[0].problems, 1)
	assert.Contains(t, rep.blocks[0].problems[0], "module directive")
}
