package sprocketspg

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ErrInvalidRoutineName is matched (errors.Is) by the error Callproc returns
// for a name it cannot turn into an identifier.
var ErrInvalidRoutineName = errors.New("invalid routine name")

// parseRoutineName splits a possibly schema-qualified routine name into its
// parts with SQL's own rules: an unquoted part folds to lower case, a
// double-quoted part is taken literally ("" stands for one quote). The
// parts are quoted again when the statement is built, so nothing in name
// can escape the identifier.
func parseRoutineName(name string) (pgx.Identifier, error) {
	invalid := func(reason string) error {
		return fmt.Errorf("%w %q: %s", ErrInvalidRoutineName, name, reason)
	}
	if strings.TrimSpace(name) == "" {
		return nil, invalid("empty")
	}
	var parts pgx.Identifier
	for i := 0; ; {
		var part strings.Builder
		if i < len(name) && name[i] == '"' {
			i++
			closed := false
			for i < len(name) {
				if name[i] == '"' {
					if i+1 < len(name) && name[i+1] == '"' {
						part.WriteByte('"')
						i += 2
						continue
					}
					i++
					closed = true
					break
				}
				part.WriteByte(name[i])
				i++
			}
			if !closed {
				return nil, invalid("unterminated quoted identifier")
			}
		} else {
			start := i
			for i < len(name) && name[i] != '.' {
				c := name[i]
				if !(c == '_' || c == '$' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' ||
					c >= '0' && c <= '9' || c >= 0x80) {
					return nil, invalid("use double quotes around a name with " + strconv.QuoteRune(rune(c)))
				}
				i++
			}
			part.WriteString(asciiLower(name[start:i]))
		}
		if part.Len() == 0 {
			return nil, invalid("empty name part")
		}
		if strings.IndexByte(part.String(), 0) >= 0 {
			return nil, invalid("contains a NUL byte")
		}
		parts = append(parts, part.String())
		if i == len(name) {
			break
		}
		if name[i] != '.' {
			return nil, invalid("unexpected text after quoted identifier")
		}
		i++
		if i == len(name) {
			return nil, invalid("ends with a dot")
		}
	}
	if len(parts) > 3 {
		return nil, invalid("too many dots")
	}
	return parts, nil
}

// callSQL builds the statement that calls ident with n positional
// arguments, as a function (SELECT * FROM) or a procedure (CALL).
func callSQL(ident pgx.Identifier, n int, procedure bool) string {
	var b strings.Builder
	if procedure {
		b.WriteString("CALL ")
	} else {
		b.WriteString("SELECT * FROM ")
	}
	b.WriteString(ident.Sanitize())
	b.WriteByte('(')
	for i := 1; i <= n; i++ {
		if i > 1 {
			b.WriteString(", ")
		}
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(i))
	}
	b.WriteByte(')')
	return b.String()
}

// asciiLower folds A-Z only, as PostgreSQL folds unquoted identifiers in
// multi-byte encodings.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}
