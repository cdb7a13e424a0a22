// Package pgchannel holds the rules of PostgreSQL notification channels and
// payloads, which the pool's Notify and the listener's Handle both apply.
package pgchannel

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxNameLen is the longest identifier PostgreSQL keeps (NAMEDATALEN - 1);
// a longer one is cut, so LISTEN and NOTIFY would disagree on its name.
const MaxNameLen = 63

// MaxPayloadLen is the longest payload NOTIFY takes: the server refuses
// 8000 bytes or more.
const MaxPayloadLen = 7999

// ErrInvalid is matched by the errors of Validate and ValidatePayload.
var ErrInvalid = errors.New("invalid notification channel or payload")

// Validate checks that name can be a channel: an identifier of 1 to 63
// bytes of UTF-8 without NUL, which LISTEN takes quoted, so that case and
// any other character are kept as written.
func Validate(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: channel name is empty", ErrInvalid)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: channel name %q is %d bytes; PostgreSQL keeps at most %d", ErrInvalid, name, len(name), MaxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: channel name %q is not valid UTF-8", ErrInvalid, name)
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("%w: channel name %q holds a NUL byte", ErrInvalid, name)
	}
	return nil
}

// ValidatePayload checks that payload fits a notification.
func ValidatePayload(payload string) error {
	if len(payload) > MaxPayloadLen {
		return fmt.Errorf("%w: payload is %d bytes; PostgreSQL takes at most %d", ErrInvalid, len(payload), MaxPayloadLen)
	}
	if !utf8.ValidString(payload) {
		return fmt.Errorf("%w: payload is not valid UTF-8", ErrInvalid)
	}
	if strings.ContainsRune(payload, 0) {
		return fmt.Errorf("%w: payload holds a NUL byte", ErrInvalid)
	}
	return nil
}
