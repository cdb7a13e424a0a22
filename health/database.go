package health

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Database is what a Checker needs from a connection pool.
type Database interface {
	// Ping makes a round trip to the server through one of the pool's
	// connections, waiting for a free one if need be, and returns an
	// error when the server cannot be reached or ctx ends first. It must
	// go through the application's own pool, not a connection of its own,
	// so that the check sees what queries see. The error's text is shown
	// to probes and must not contain a password.
	Ping(ctx context.Context) error
	// Stats returns a snapshot of the pool's counters. It must not do
	// I/O: a Checker reads it before deciding whether to ping.
	Stats() Stats
}

// Stats is a snapshot of a connection pool, as pgxpool.Stat reports it.
type Stats struct {
	// Size is the number of open connections, including those being
	// established.
	Size int32
	// Idle is the number of open connections not in use.
	Idle int32
	// Acquired is the number of connections in use.
	Acquired int32
	// Max is the most connections the pool may open; 0 when unknown.
	Max int32
	// Constructing is the number of connections being established.
	Constructing int32
	// AcquireCount is the number of successful acquires since the pool
	// was created.
	AcquireCount int64
	// EmptyAcquireCount is the number of successful acquires that had to
	// wait because no connection was idle.
	EmptyAcquireCount int64
	// EmptyAcquireWaitTime is the total time those acquires waited.
	EmptyAcquireWaitTime time.Duration
}

// FromPgxpool returns a Database backed by p, for services that use pgx
// directly. Ping uses pgxpool.Pool.Ping, which borrows a connection from
// p; Stats reads p.Stat. p must not be nil.
func FromPgxpool(p *pgxpool.Pool) Database {
	return pgxpoolDatabase{p: p}
}

type pgxpoolDatabase struct {
	p *pgxpool.Pool
}

func (d pgxpoolDatabase) Ping(ctx context.Context) error {
	return d.p.Ping(ctx)
}

func (d pgxpoolDatabase) Stats() Stats {
	return StatsFromPgxpool(d.p.Stat())
}

// StatsFromPgxpool converts pgxpool's statistics to Stats, for Database
// implementations that wrap a *pgxpool.Pool. A nil s gives zero Stats.
func StatsFromPgxpool(s *pgxpool.Stat) Stats {
	if s == nil {
		return Stats{}
	}
	return Stats{
		Size:                 s.TotalConns(),
		Idle:                 s.IdleConns(),
		Acquired:             s.AcquiredConns(),
		Max:                  s.MaxConns(),
		Constructing:         s.ConstructingConns(),
		AcquireCount:         s.AcquireCount(),
		EmptyAcquireCount:    s.EmptyAcquireCount(),
		EmptyAcquireWaitTime: s.EmptyAcquireWaitTime(),
	}
}
