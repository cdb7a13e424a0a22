package sprocketspg

import (
	"net"
	"syscall"
)

// idleProbe peeks at a connection's socket without blocking. It is used
// by one goroutine at a time: the one acquiring the connection.
type idleProbe struct {
	raw    syscall.RawConn
	buf    [1]byte
	unread bool
	// peek is built once so that each check allocates nothing.
	peek func(fd uintptr)
}

// newIdleProbe returns a probe of nc's socket, or nil when nc is not a
// socket the probe can read (then only pgxpool's own rule applies).
func newIdleProbe(nc net.Conn) *idleProbe {
	// A TLS connection's records arrive on the socket underneath.
	for {
		inner, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		nc = inner.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &idleProbe{raw: raw}
	p.peek = func(fd uintptr) {
		n, _, err := syscall.Recvfrom(int(fd), p.buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// Data (n > 0), the end of the stream (n == 0 without error) and
		// any error but "nothing to read" all mean the connection is not
		// the quiet idle connection it should be.
		p.unread = n > 0 || err == nil || (err != syscall.EAGAIN && err != syscall.EWOULDBLOCK)
	}
	return p
}

func (p *idleProbe) pending() bool {
	p.unread = false
	// Control, not Read: Read takes the descriptor's read lock, which
	// pgconn's background reader may hold for as long as it waits for the
	// server, and the peek must never wait.
	if err := p.raw.Control(p.peek); err != nil {
		return true
	}
	return p.unread
}
