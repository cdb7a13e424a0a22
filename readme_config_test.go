package sprocketspg

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestREADMEConfigTableMatchesConfig holds the README's table of variables
// to what LoadConfig reads: every variable of Config is a row naming its
// field, with the default LoadConfig gives it, and every POSTGRES_ row is a
// variable LoadConfig reads.
func TestREADMEConfigTableMatchesConfig(t *testing.T) {
	md, err := os.ReadFile("README.md")
	require.NoError(t, err)
	row := regexp.MustCompile("(?m)^\\| `([A-Z_]+)` \\| ([^|]*) \\| ([^|]*) \\| ([^|]*) \\|")
	type readmeRow struct{ field, typ, def string }
	rows := map[string]readmeRow{}
	for _, m := range row.FindAllStringSubmatch(string(md), -1) {
		rows[m[1]] = readmeRow{field: m[2], typ: strings.TrimSpace(m[3]), def: strings.TrimSpace(m[4])}
	}
	require.NotEmpty(t, rows, "README.md has no table of variables")

	read := map[string]bool{EnvConnectTimeout: true}
	ct := reflect.TypeFor[Config]()
	for i := range ct.NumField() {
		f := ct.Field(i)
		variable := f.Tag.Get("env")
		if variable == "" {
			continue
		}
		read[variable] = true
		r, ok := rows[variable]
		if !assert.True(t, ok, "README.md's table has no row for %s", variable) {
			continue
		}
		assert.Contains(t, r.field, "`"+f.Name+"`", "%s's row names its Config field", variable)
		def, hasDefault := f.Tag.Lookup("envDefault")
		if !hasDefault {
			assert.NotRegexp(t, `^[0-9]`, r.def, "%s has no default in Config; its row says %q", variable, r.def)
			continue
		}
		// The row's default is its first word, in the variable's syntax.
		first := strings.Fields(r.def)[0]
		want, err := loadFrom(t, map[string]string{variable: def})
		require.NoError(t, err, variable)
		got, err := loadFrom(t, map[string]string{variable: first})
		if assert.NoError(t, err, "%s's default in README.md, %q, must be a value of the variable", variable, first) {
			assert.Equal(t, reflect.ValueOf(want).Field(i).Interface(), reflect.ValueOf(got).Field(i).Interface(),
				"%s: README.md says the default is %q, Config's is %q", variable, first, def)
		}
	}
	for variable := range rows {
		if strings.HasPrefix(variable, "POSTGRES_") {
			assert.True(t, read[variable], "README.md's table lists %s, which LoadConfig does not read", variable)
		}
	}
	// The alias shares the field and default of the name it stands for.
	assert.Equal(t, rows[EnvConnectionTimeout].def, rows[EnvConnectTimeout].def)
}
