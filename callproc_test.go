package sprocketspg

import (
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseRoutineName(t *testing.T) {
	tests := []struct {
		in   string
		want pgx.Identifier
		sql  string
	}{
		{"uuid_generate_v4", pgx.Identifier{"uuid_generate_v4"}, `SELECT * FROM "uuid_generate_v4"($1, $2)`},
		{"GetUser", pgx.Identifier{"getuser"}, `SELECT * FROM "getuser"($1, $2)`},
		{"billing.charge", pgx.Identifier{"billing", "charge"}, `SELECT * FROM "billing"."charge"($1, $2)`},
		{`"MixedCase"`, pgx.Identifier{"MixedCase"}, `SELECT * FROM "MixedCase"($1, $2)`},
		{`"odd.name"`, pgx.Identifier{"odd.name"}, `SELECT * FROM "odd.name"($1, $2)`},
		{`"has""quote"`, pgx.Identifier{`has"quote`}, `SELECT * FROM "has""quote"($1, $2)`},
		{`public."x y"`, pgx.Identifier{"public", "x y"}, `SELECT * FROM "public"."x y"($1, $2)`},
		{`"a); DROP TABLE t; --"`, pgx.Identifier{"a); DROP TABLE t; --"}, `SELECT * FROM "a); DROP TABLE t; --"($1, $2)`},
		{"db.schema.fn", pgx.Identifier{"db", "schema", "fn"}, `SELECT * FROM "db"."schema"."fn"($1, $2)`},
		{"fn$1", pgx.Identifier{"fn$1"}, `SELECT * FROM "fn$1"($1, $2)`},
		{"ÉTÉ", pgx.Identifier{"ÉtÉ"}, `SELECT * FROM "ÉtÉ"($1, $2)`}, // only A-Z fold, as in PostgreSQL
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseRoutineName(tt.in)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			assert.Equal(t, tt.sql, callSQL(got, 2, false))
		})
	}
}

func TestParseRoutineNameRejects(t *testing.T) {
	for _, in := range []string{
		"",
		"   ",
		"fn(); DROP TABLE t; --",
		"fn()",
		"a b",
		"a;b",
		"a--",
		"a/*",
		"a'b",
		`a"b`,
		`"unterminated`,
		`"x"y`,
		"a.",
		".a",
		"a..b",
		`""`,
		"a.b.c.d",
		"a\x00b",
		`"a` + "\x00" + `b"`,
	} {
		t.Run(in, func(t *testing.T) {
			_, err := parseRoutineName(in)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidRoutineName)
		})
	}
}

func TestCallSQL(t *testing.T) {
	id := pgx.Identifier{"s", "p"}
	assert.Equal(t, `SELECT * FROM "s"."p"()`, callSQL(id, 0, false))
	assert.Equal(t, `CALL "s"."p"($1)`, callSQL(id, 1, true))
	assert.Equal(t, `CALL "s"."p"($1, $2, $3)`, callSQL(id, 3, true))
}
