//go:build !linux

package sprocketspg

import "net"

// idleProbe is not available on this platform: only pgxpool's own rule
// (a ping for connections idle for more than a second) applies.
type idleProbe struct{}

func newIdleProbe(net.Conn) *idleProbe { return nil }

func (*idleProbe) pending() bool { return false }
