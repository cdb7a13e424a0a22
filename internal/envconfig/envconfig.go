// Package envconfig holds what the packages of sprocketspg share to read
// settings from environment variables, so that a duration is written the
// same way for every variable of every package.
package envconfig

import (
	"math"
	"strconv"
	"strings"
	"time"
)

// Reason is a parse failure whose message already says what was wanted,
// so that the error naming the variable need not add pgx's or strconv's
// words.
type Reason struct{ Msg string }

func (r *Reason) Error() string { return r.Msg }

// ParseSeconds accepts seconds as a number, the way the Python original
// read its timeouts, or a Go duration string.
func ParseSeconds(v string) (time.Duration, error) {
	s := strings.TrimSpace(v)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) > math.MaxInt64/float64(time.Second) {
			return 0, &Reason{"want seconds (10, 1.5) or a Go duration (1500ms) in range"}
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, &Reason{"want seconds (10, 1.5) or a Go duration (1500ms)"}
	}
	return d, nil
}
