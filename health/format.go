package health

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"go.uber.org/zap/zapcore"
)

// The methods in this file decide what a Checker and a Report show when
// they are printed with fmt, encoded with encoding/json or logged with
// zap. A Checker holds the Database it was given, which may be any type
// at all: left to reflection, %v would print that value's fields, a
// password among them for all the Checker knows. So a Checker shows the
// Database's type, never its value. A Report holds only safe values, but
// fmt would print its Replica as a bare address.

// maxReplicaDepth bounds how deep a Report's chain of Replica reports is
// printed, so that a Report that refers to itself cannot recurse for ever.
const maxReplicaDepth = 4

// String shows the Checker's settings and state, with field names:
//
//	{Application:svc Environment:prod Version:1.2 Ready:true LastStatus:pass Timeout:3s CacheWindow:1s Database:sprocketspg.poolHealth}
func (c *Checker) String() string {
	if c == nil {
		return "<nil>"
	}
	s := c.summary()
	var b strings.Builder
	fmt.Fprintf(&b, "{Application:%s Environment:%s Version:%s Ready:%t LastStatus:%s Timeout:%s CacheWindow:%s Database:%s",
		s.Application, s.Environment, s.Version, s.Ready, s.LastStatus, c.timeout, c.window, s.Database)
	if s.Replica != "" {
		b.WriteString(" Replica:")
		b.WriteString(s.Replica)
	}
	b.WriteString("}")
	return b.String()
}

// Format prints String for %v, %+v and %s, and a Go-syntax-like form for
// %#v; %q, %x and the rest format String as they would a string. No verb
// reaches the Database's value.
func (c *Checker) Format(f fmt.State, verb rune) {
	switch {
	case c == nil && verb == 'v' && f.Flag('#'):
		_, _ = io.WriteString(f, "(*health.Checker)(nil)")
	case verb == 'v' && f.Flag('#'):
		s := c.summary()
		fmt.Fprintf(f, "&health.Checker{db:%s", s.Database)
		if s.Replica != "" {
			fmt.Fprintf(f, ", replica:%s", s.Replica)
		}
		fmt.Fprintf(f, ", timeout:%d, window:%d, application:%q, environment:%q, version:%q, ready:%t, lastStatus:%q}",
			c.timeout, c.window, s.Application, s.Environment, s.Version, s.Ready, s.LastStatus)
	default:
		fmt.Fprintf(f, fmt.FormatString(f, verb), c.String())
	}
}

// MarshalJSON encodes the Checker's settings and state; durations are in
// Go's notation ("3s").
func (c *Checker) MarshalJSON() ([]byte, error) {
	if c == nil {
		return []byte("null"), nil
	}
	return json.Marshal(c.summary())
}

// MarshalLogObject writes the Checker to a zap log entry with the keys of
// MarshalJSON.
func (c *Checker) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	if c == nil {
		return nil
	}
	s := c.summary()
	enc.AddString("application", s.Application)
	enc.AddString("environment", s.Environment)
	enc.AddString("version", s.Version)
	enc.AddBool("ready", s.Ready)
	if s.LastStatus != "" {
		enc.AddString("last_status", string(s.LastStatus))
	}
	enc.AddDuration("timeout", c.timeout)
	enc.AddDuration("cache_window", c.window)
	enc.AddString("database", s.Database)
	if s.Replica != "" {
		enc.AddString("replica", s.Replica)
	}
	return nil
}

// checkerSummary is what a printed Checker shows.
type checkerSummary struct {
	Application string `json:"application"`
	Environment string `json:"environment"`
	Version     string `json:"version"`
	Ready       bool   `json:"ready"`
	// LastStatus is the status of the last check that was cached; empty
	// before the first.
	LastStatus  Status `json:"last_status,omitempty"`
	Timeout     string `json:"timeout"`
	CacheWindow string `json:"cache_window"`
	// Database and Replica are the types of the Databases checked.
	Database string `json:"database"`
	Replica  string `json:"replica,omitempty"`
}

func (c *Checker) summary() checkerSummary {
	// c.mu is held only for this read; nothing prints a Checker while
	// holding it.
	c.mu.Lock()
	last := c.lastStatus
	c.mu.Unlock()
	s := checkerSummary{
		Application: c.application,
		Environment: c.environment,
		Version:     c.version,
		Ready:       c.ready.Load(),
		LastStatus:  last,
		Timeout:     c.timeout.String(),
		CacheWindow: c.window.String(),
		Database:    fmt.Sprintf("%T", c.db),
	}
	if c.replica != nil {
		s.Replica = fmt.Sprintf("%T", c.replica)
	}
	return s
}

// String shows the Report with its field names, as %+v would, but with
// Error quoted and the Replica's report in full instead of its address.
func (r Report) String() string {
	var b strings.Builder
	r.write(&b, false, 0)
	return b.String()
}

// Format prints String for %v, %+v and %s, and a Go-syntax form for %#v,
// each with the Replica's report in full; %q, %x and the rest format
// String as they would a string.
func (r Report) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		var b strings.Builder
		r.write(&b, true, 0)
		_, _ = io.WriteString(f, b.String())
	default:
		fmt.Fprintf(f, fmt.FormatString(f, verb), r.String())
	}
}

// write writes r in the %+v form or, with goSyntax, the %#v form.
func (r Report) write(b *strings.Builder, goSyntax bool, depth int) {
	if goSyntax {
		fmt.Fprintf(b, "health.Report{Status:%q, Available:%t, Stats:%#v, Latency:%d, Error:%q, Time:%#v, Replica:",
			string(r.Status), r.Available, r.Stats, r.Latency, r.Error, r.Time)
	} else {
		fmt.Fprintf(b, "{Status:%s Available:%t Stats:%+v Latency:%s Error:%q Time:%s Replica:",
			r.Status, r.Available, r.Stats, r.Latency, r.Error, r.Time)
	}
	switch {
	case r.Replica == nil && goSyntax:
		b.WriteString("(*health.Report)(nil)")
	case r.Replica == nil:
		b.WriteString("<nil>")
	case depth >= maxReplicaDepth:
		fmt.Fprintf(b, "%p", r.Replica)
	default:
		b.WriteString("&")
		r.Replica.write(b, goSyntax, depth+1)
	}
	b.WriteString("}")
}

// MarshalLogObject writes the Report to a zap log entry: status,
// available, latency, error (when set), time, stats and replica (when
// there is one).
func (r Report) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	return r.marshalLog(enc, 0)
}

func (r Report) marshalLog(enc zapcore.ObjectEncoder, depth int) error {
	enc.AddString("status", string(r.Status))
	enc.AddBool("available", r.Available)
	enc.AddDuration("latency", r.Latency)
	if r.Error != "" {
		enc.AddString("error", r.Error)
	}
	enc.AddTime("time", r.Time)
	if err := enc.AddObject("stats", r.Stats); err != nil {
		return err
	}
	if r.Replica != nil && depth < maxReplicaDepth {
		return enc.AddObject("replica", zapcore.ObjectMarshalerFunc(func(enc zapcore.ObjectEncoder) error {
			return r.Replica.marshalLog(enc, depth+1)
		}))
	}
	return nil
}

// MarshalLogObject writes the Stats to a zap log entry, with the field
// names in snake case.
func (s Stats) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddInt32("size", s.Size)
	enc.AddInt32("idle", s.Idle)
	enc.AddInt32("acquired", s.Acquired)
	enc.AddInt32("max", s.Max)
	enc.AddInt32("constructing", s.Constructing)
	enc.AddInt64("acquire_count", s.AcquireCount)
	enc.AddInt64("empty_acquire_count", s.EmptyAcquireCount)
	enc.AddDuration("empty_acquire_wait_time", s.EmptyAcquireWaitTime)
	return nil
}
