package sprocketspg_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestImportRules checks the package map's arrows with the go command's
// own view of the dependencies: the packages that the root one wires
// together never import it, and the root package does not link goose, so
// that a service that does not migrate does not carry it.
func TestImportRules(t *testing.T) {
	t.Parallel()
	const root = "github.com/sprockets/sprocketspg"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	deps := func(pkg string) []string {
		stdout, stderr, err := runGo(ctx, ".", "list", "-deps", "-f", "{{.ImportPath}}", pkg)
		require.NoError(t, err, "go list -deps %s: %s", pkg, stderr)
		return strings.Fields(string(stdout))
	}

	for _, sub := range []string{"discovery", "txn", "health", "instance", "migrate", "listen"} {
		assert.NotContains(t, deps(root+"/"+sub), root, "%s must not import the root package", sub)
	}
	for _, d := range deps(root) {
		assert.False(t, strings.HasPrefix(d, "github.com/pressly/goose"), "the root package links %s", d)
		assert.NotEqual(t, root+"/migrate", d, "the root package imports migrate")
	}
	// The check can fail: migrate does link goose.
	assert.Contains(t, deps(root+"/migrate"), "github.com/pressly/goose/v3")
}
