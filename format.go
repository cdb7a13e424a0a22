package sprocketspg

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"go.uber.org/zap/zapcore"

	"github.com/sprockets/sprocketspg/internal/redact"
)

// The methods in this file decide what a Pool and a Status show when they
// are printed with fmt, encoded with encoding/json or logged with zap.
// Left to reflection, fmt prints a Pool's unexported fields, the URL and
// the password among them, and %#v prints the fields of an error a Status
// holds; encoding/json and zap.Reflect show nothing useful of either.
// Everything here reads only fields fixed when the Pool was built, and
// atomics, so printing a Pool never waits for start or stop (which hold
// p.mu while they talk to the server) and never races with them.

// String describes the pool by the server it connects to, without the
// password, and says whether it is connected, for example
//
//	postgres pool 127.0.0.1:5432 (database "app", user "app"), connected
func (p *Pool) String() string {
	if p == nil {
		return "<nil>"
	}
	kind := "postgres pool"
	if p.replicaOf != nil {
		kind = "postgres read pool"
	}
	return kind + " " + p.target + ", " + p.state()
}

// Format handles every verb, so that none reaches the pool's fields. %v
// and %s print String; %+v adds the masked URL and
// the pool's counters; %#v prints a Go-syntax-like form with the URL
// masked; %q, %x and the rest format String as they would a string.
func (p *Pool) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		_, _ = io.WriteString(f, p.goString())
	case verb == 'v' && f.Flag('+'):
		fmt.Fprintf(f, fmt.FormatString(f, verb), p.detail())
	default:
		fmt.Fprintf(f, fmt.FormatString(f, verb), p.String())
	}
}

// goString is the %#v form of the pool.
func (p *Pool) goString() string {
	if p == nil {
		return "(*sprocketspg.Pool)(nil)"
	}
	s := p.summary()
	var b strings.Builder
	fmt.Fprintf(&b, "&sprocketspg.Pool{url:%q", s.URL)
	if s.ReadURL != "" {
		fmt.Fprintf(&b, ", readURL:%q", s.ReadURL)
	}
	fmt.Fprintf(&b, ", target:%q, connected:%t}", s.Target, s.Connected)
	return b.String()
}

// detail is the %+v form of the pool: String, then the masked URLs and,
// once the pool has started, its counters.
func (p *Pool) detail() string {
	if p == nil {
		return "<nil>"
	}
	s := p.summary()
	var b strings.Builder
	b.WriteString(p.String())
	b.WriteString(" {URL:")
	b.WriteString(s.URL)
	if s.ReadURL != "" {
		b.WriteString(" ReadURL:")
		b.WriteString(s.ReadURL)
	}
	if s.PoolSize != nil {
		fmt.Fprintf(&b, " PoolSize:%d PoolFree:%d Acquired:%d MaxPoolSize:%d",
			*s.PoolSize, *s.PoolFree, *s.Acquired, *s.MaxPoolSize)
	}
	b.WriteString("}")
	return b.String()
}

// MarshalJSON encodes what the pool connects to, with the password
// masked, whether it is connected and, once it has started, its counters.
// Without it encoding/json (and zap.Reflect) would encode the embedded
// pgxpool.Pool, which shows nothing useful.
func (p *Pool) MarshalJSON() ([]byte, error) {
	if p == nil {
		return []byte("null"), nil
	}
	return json.Marshal(p.summary())
}

// MarshalLogObject writes the pool to a zap log entry with the keys of
// MarshalJSON, so that zap.Any and zap.Object log it safely.
func (p *Pool) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	if p == nil {
		return nil
	}
	s := p.summary()
	enc.AddString("target", s.Target)
	enc.AddString("url", s.URL)
	if s.ReadURL != "" {
		enc.AddString("read_url", s.ReadURL)
	}
	if s.ReadPool {
		enc.AddBool("read_pool", true)
	}
	enc.AddBool("connected", s.Connected)
	if s.PoolSize != nil {
		enc.AddInt32("pool_size", *s.PoolSize)
		enc.AddInt32("pool_free", *s.PoolFree)
		enc.AddInt32("acquired", *s.Acquired)
		enc.AddInt32("max_pool_size", *s.MaxPoolSize)
	}
	return nil
}

// poolSummary is what a printed Pool shows. Its counters are pointers so
// that a pool that never started leaves them out instead of showing zeros.
type poolSummary struct {
	Target      string `json:"target"`
	URL         string `json:"url"`
	ReadURL     string `json:"read_url,omitempty"`
	ReadPool    bool   `json:"read_pool,omitempty"`
	Connected   bool   `json:"connected"`
	PoolSize    *int32 `json:"pool_size,omitempty"`
	PoolFree    *int32 `json:"pool_free,omitempty"`
	Acquired    *int32 `json:"acquired,omitempty"`
	MaxPoolSize *int32 `json:"max_pool_size,omitempty"`
}

func (p *Pool) summary() poolSummary {
	s := poolSummary{
		Target:    p.target,
		URL:       redact.ConnString(p.cfg.URL),
		ReadURL:   redact.ConnString(p.cfg.ReadURL),
		ReadPool:  p.replicaOf != nil,
		Connected: p.connected.Load(),
	}
	// pgxpool's Stat takes its own lock for a moment; it is the only
	// cost of printing a started pool.
	if pool := p.pool.Load(); pool != nil {
		st := pool.Stat()
		size, free, acquired, maxSize := st.TotalConns(), st.IdleConns(), st.AcquiredConns(), st.MaxConns()
		s.PoolSize, s.PoolFree, s.Acquired, s.MaxPoolSize = &size, &free, &acquired, &maxSize
	}
	return s
}

// state is "connected" while IsConnected is true, "not connected" before
// start and from the moment Shutdown begins.
func (p *Pool) state() string {
	if p.connected.Load() {
		return "connected"
	}
	return "not connected"
}

// String shows the Status with its field names, and Err by its text:
//
//	{Available:false PoolSize:0 PoolFree:0 Err:"postgres pool is not connected"}
func (s Status) String() string {
	return fmt.Sprintf("{Available:%t PoolSize:%d PoolFree:%d Err:%s}", s.Available, s.PoolSize, s.PoolFree, s.errText())
}

// Format prints String for %v, %+v and %s, and a Go-syntax-like form for
// %#v. Err appears only as the text of its Error method: left to fmt, %#v
// would print the fields of whatever error Err holds, and an error's
// fields may keep what its text leaves out.
func (s Status) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		errText := "error(nil)"
		if s.Err != nil {
			errText = "errors.New(" + strconv.Quote(s.Err.Error()) + ")"
		}
		fmt.Fprintf(f, "sprocketspg.Status{Available:%t, PoolSize:%d, PoolFree:%d, Err:%s}",
			s.Available, s.PoolSize, s.PoolFree, errText)
		return
	}
	fmt.Fprintf(f, fmt.FormatString(f, verb), s.String())
}

// MarshalJSON encodes the Status with the keys of the Python original's
// postgres_status() (available, pool_size, pool_free), and error with
// Err's text when it is set. Left to encoding/json, Err would encode as
// {} whatever it said.
func (s Status) MarshalJSON() ([]byte, error) {
	doc := struct {
		Available bool   `json:"available"`
		PoolSize  int    `json:"pool_size"`
		PoolFree  int    `json:"pool_free"`
		Error     string `json:"error,omitempty"`
	}{s.Available, s.PoolSize, s.PoolFree, ""}
	if s.Err != nil {
		doc.Error = s.Err.Error()
	}
	return json.Marshal(doc)
}

// MarshalLogObject writes the Status to a zap log entry with the keys of
// MarshalJSON.
func (s Status) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddBool("available", s.Available)
	enc.AddInt("pool_size", s.PoolSize)
	enc.AddInt("pool_free", s.PoolFree)
	if s.Err != nil {
		enc.AddString("error", s.Err.Error())
	}
	return nil
}

// errText is Err's text quoted, or <nil>.
func (s Status) errText() string {
	if s.Err == nil {
		return "<nil>"
	}
	return strconv.Quote(s.Err.Error())
}
