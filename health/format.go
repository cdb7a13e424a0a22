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
// Database's type, never its value, for each of its databases, with the
// names they were given. A Report holds only safe values, but fmt would
// print its Replica as a bare address.

// maxReplicaDepth bounds how deep a Report's chain of Replica and
// Instances reports is printed, so that a Report that refers to itself
// cannot recurse for ever.
const maxReplicaDepth = 4

// String shows the Checker's settings and state, with field names:
//
//	{Application:svc Environment:prod Version:1.2 Ready:true LastStatus:pass Timeout:3s CacheWindow:1s Database:sprocketspg.poolHealth}
//
// followed by the main database's Name and Optional when set, and the
// other databases as Instances:[{Name:orders Database:... Replica:...}].
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
	if s.Name != "" {
		fmt.Fprintf(&b, " Name:%s", s.Name)
	}
	if s.Optional {
		b.WriteString(" Optional:true")
	}
	if len(s.Instances) > 0 {
		b.WriteString(" Instances:[")
		for i, in := range s.Instances {
			if i > 0 {
				b.WriteString(" ")
			}
			fmt.Fprintf(&b, "{Name:%s Database:%s", in.Name, in.Database)
			if in.Replica != "" {
				fmt.Fprintf(&b, " Replica:%s", in.Replica)
			}
			if in.Optional {
				b.WriteString(" Optional:true")
			}
			b.WriteString("}")
		}
		b.WriteString("]")
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
		fmt.Fprintf(f, ", timeout:%d, window:%d, application:%q, environment:%q, version:%q, ready:%t, lastStatus:%q",
			c.timeout, c.window, s.Application, s.Environment, s.Version, s.Ready, s.LastStatus)
		if s.Name != "" || s.Optional {
			fmt.Fprintf(f, ", name:%q, optional:%t", s.Name, s.Optional)
		}
		if len(s.Instances) > 0 {
			_, _ = io.WriteString(f, ", instances:[]health.instance{")
			for i, in := range s.Instances {
				if i > 0 {
					_, _ = io.WriteString(f, ", ")
				}
				fmt.Fprintf(f, "{name:%q, db:%s", in.Name, in.Database)
				if in.Replica != "" {
					fmt.Fprintf(f, ", replica:%s", in.Replica)
				}
				fmt.Fprintf(f, ", optional:%t}", in.Optional)
			}
			_, _ = io.WriteString(f, "}")
		}
		_, _ = io.WriteString(f, "}")
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
	if s.Name != "" {
		enc.AddString("name", s.Name)
	}
	if s.Optional {
		enc.AddBool("optional", true)
	}
	if len(s.Instances) > 0 {
		return enc.AddArray("instances", zapcore.ArrayMarshalerFunc(func(arr zapcore.ArrayEncoder) error {
			for _, in := range s.Instances {
				if err := arr.AppendObject(in); err != nil {
					return err
				}
			}
			return nil
		}))
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
	// Name and Optional describe the main database.
	Name     string `json:"name,omitempty"`
	Optional bool   `json:"optional,omitempty"`
	// Instances are the other databases.
	Instances []instanceSummary `json:"instances,omitempty"`
}

// instanceSummary is what a printed Checker shows of a database other
// than its main one: its name and types, never its value.
type instanceSummary struct {
	Name     string `json:"name"`
	Database string `json:"database"`
	Replica  string `json:"replica,omitempty"`
	Optional bool   `json:"optional,omitempty"`
}

// MarshalLogObject writes the summary with the keys of its JSON form.
func (s instanceSummary) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("name", s.Name)
	enc.AddString("database", s.Database)
	if s.Replica != "" {
		enc.AddString("replica", s.Replica)
	}
	if s.Optional {
		enc.AddBool("optional", true)
	}
	return nil
}

func (c *Checker) summary() checkerSummary {
	// c.mu is held only for this read; nothing prints a Checker while
	// holding it.
	c.mu.Lock()
	// The last cached report's, kept across readiness changes, which
	// only mark it stale.
	last := c.cached.Status
	c.mu.Unlock()
	s := checkerSummary{
		Application: c.application,
		Environment: c.environment,
		Version:     c.version,
		Ready:       c.ready.Load(),
		LastStatus:  last,
		Timeout:     c.timeout.String(),
		CacheWindow: c.window.String(),
		Database:    fmt.Sprintf("%T", c.dbs[0].db),
		Name:        c.dbs[0].name,
		Optional:    c.dbs[0].optional,
	}
	if c.dbs[0].replica != nil {
		s.Replica = fmt.Sprintf("%T", c.dbs[0].replica)
	}
	for _, d := range c.dbs[1:] {
		in := instanceSummary{Name: d.name, Database: fmt.Sprintf("%T", d.db), Optional: d.optional}
		if d.replica != nil {
			in.Replica = fmt.Sprintf("%T", d.replica)
		}
		s.Instances = append(s.Instances, in)
	}
	return s
}

// String shows the Report with its field names, as %+v would, but with
// Error and Name quoted and the Replica's and Instances' reports in full
// instead of addresses.
func (r Report) String() string {
	var b strings.Builder
	r.write(&b, false, 0)
	return b.String()
}

// Format prints String for %v, %+v and %s, and a Go-syntax form for %#v,
// each with the Replica's and Instances' reports in full; %q, %x and the
// rest format String as they would a string.
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
	if goSyntax {
		fmt.Fprintf(b, ", Name:%q, Instances:", r.Name)
	} else {
		fmt.Fprintf(b, " Name:%q Instances:", r.Name)
	}
	switch {
	case r.Instances == nil && goSyntax:
		b.WriteString("[]health.Report(nil)")
	case goSyntax:
		b.WriteString("[]health.Report{")
	default:
		b.WriteString("[")
	}
	if r.Instances != nil {
		for i, in := range r.Instances {
			switch {
			case i > 0 && goSyntax:
				b.WriteString(", ")
			case i > 0:
				b.WriteString(" ")
			}
			if depth >= maxReplicaDepth {
				// Only a Report built by hand nests this deep.
				b.WriteString("...")
				break
			}
			in.write(b, goSyntax, depth+1)
		}
		if goSyntax {
			b.WriteString("}")
		}
	}
	if !goSyntax {
		b.WriteString("]")
	}
	b.WriteString("}")
}

// MarshalLogObject writes the Report to a zap log entry: name (when set),
// status, available, latency, error (when set), time, stats, replica (when
// there is one) and instances (when there are any).
func (r Report) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	return r.marshalLog(enc, 0)
}

func (r Report) marshalLog(enc zapcore.ObjectEncoder, depth int) error {
	if r.Name != "" {
		enc.AddString("name", r.Name)
	}
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
	if depth >= maxReplicaDepth {
		return nil
	}
	if r.Replica != nil {
		err := enc.AddObject("replica", zapcore.ObjectMarshalerFunc(func(enc zapcore.ObjectEncoder) error {
			return r.Replica.marshalLog(enc, depth+1)
		}))
		if err != nil {
			return err
		}
	}
	if len(r.Instances) > 0 {
		return enc.AddArray("instances", zapcore.ArrayMarshalerFunc(func(arr zapcore.ArrayEncoder) error {
			for _, in := range r.Instances {
				err := arr.AppendObject(zapcore.ObjectMarshalerFunc(func(enc zapcore.ObjectEncoder) error {
					return in.marshalLog(enc, depth+1)
				}))
				if err != nil {
					return err
				}
			}
			return nil
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
