package discovery

import (
	"errors"
	"fmt"
)

var (
	// ErrNoRecords reports an SRV name without usable records: the name does
	// not exist (NXDOMAIN), it has no SRV records, or its only target is ".".
	ErrNoRecords = errors.New("no SRV records")

	// ErrInvalidTarget reports an SRV record whose target is neither a valid
	// host name nor an IP address, or whose port is 0. Such a target is
	// refused rather than copied into a connection string.
	ErrInvalidTarget = errors.New("invalid SRV target")

	// ErrInvalidURL reports an SRV connection string that cannot name one SRV
	// name: no host, several hosts, a port, or a host that is not a DNS name.
	ErrInvalidURL = errors.New("invalid SRV connection string")
)

// LookupError reports a failed SRV lookup. Name is the SRV name that was
// looked up and Err the cause, which may be ErrNoRecords, a context error or
// a network error.
type LookupError struct {
	// Name is the SRV name looked up.
	Name string
	// Err is the cause of the failure.
	Err error
}

// Error returns a message naming the SRV name and the cause.
func (e *LookupError) Error() string {
	return fmt.Sprintf("look up SRV %q: %v", e.Name, e.Err)
}

// Unwrap returns the cause, so that errors.Is(err, ErrNoRecords) works.
func (e *LookupError) Unwrap() error { return e.Err }
