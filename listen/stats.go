package listen

import (
	"slices"
	"strings"
)

// Stats are a Listener's counters, for metrics (package prompg exports
// them).
type Stats struct {
	// Instance is the name of the listener's instance; "" for the default.
	Instance string
	// Connected is Listening: the listener listens to every channel it
	// has, or has started with no channel (and so no connection).
	Connected bool
	// Reconnects counts the outages the listener came back from.
	Reconnects uint64
	// Channels are the channels' counters, sorted by name.
	Channels []ChannelStats
}

// ChannelStats are one channel's counters since the listener was made.
type ChannelStats struct {
	Channel string
	// Received counts the notifications that arrived, Delivered those
	// handed to the handler (which may have failed or panicked), Dropped
	// those thrown away because the queue was full.
	Received, Delivered, Dropped uint64
	// Failed counts handler and backlog errors, Panicked recovered panics,
	// Backlogs the runs of the backlog handler.
	Failed, Panicked, Backlogs uint64
}

// Stats returns a snapshot of the counters.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	s := Stats{Instance: l.instName, Reconnects: l.reconnects.Load(), Connected: l.listeningLocked()}
	for _, c := range l.channels {
		s.Channels = append(s.Channels, ChannelStats{
			Channel:   c.name,
			Received:  c.received.Load(),
			Delivered: c.delivered.Load(),
			Dropped:   c.dropped.Load(),
			Failed:    c.failed.Load(),
			Panicked:  c.panicked.Load(),
			Backlogs:  c.backlogs.Load(),
		})
	}
	l.mu.Unlock()
	slices.SortFunc(s.Channels, func(a, b ChannelStats) int { return strings.Compare(a.Channel, b.Channel) })
	return s
}

// Instance is the name of the listener's instance: ForInstance's, or
// the instance's once started; "" for the default.
func (l *Listener) Instance() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.instName
}
