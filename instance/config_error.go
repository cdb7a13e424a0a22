package instance

import (
	"errors"
	"strconv"
	"strings"
)

// ErrInvalidConfig is matched by every error that a database instance or
// one of its extensions returns for a bad setting:
// errors.Is(err, ErrInvalidConfig). sprocketspg.ErrInvalidConfig is this
// error.
var ErrInvalidConfig = errors.New("invalid postgres configuration")

// ConfigError describes one bad setting of a database instance or of an
// extension of it. Variable is the environment variable that holds it
// (also when the value was set in code), Value the offending value with
// any password masked. sprocketspg.ConfigError is this type.
type ConfigError struct {
	Variable string
	Value    string
	Reason   string
	Err      error
}

// Error reports the variable, the value it got and why it was refused.
func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString("invalid ")
	b.WriteString(e.Variable)
	if e.Value != "" {
		b.WriteString(" ")
		b.WriteString(strconv.Quote(e.Value))
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the underlying parse error, if any.
func (e *ConfigError) Unwrap() error { return e.Err }

// Is reports whether target is ErrInvalidConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }
