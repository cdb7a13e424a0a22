package fxtest_helpers

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
)

func TestMain(m *testing.M) { os.Exit(RunTests(m)) }

// fakeTB stands in for a test whose outcome a test needs to control or
// observe: it records failures and logs and runs cleanups on demand.
// Methods it does not override go to the real test it embeds.
type fakeTB struct {
	testing.TB
	name string

	mu       sync.Mutex
	failed   bool
	fatals   []string
	logs     []string
	cleanups []func()
}

func newFakeTB(t *testing.T, name string) *fakeTB { return &fakeTB{TB: t, name: name} }

func (f *fakeTB) Name() string { return f.name }
func (f *fakeTB) Helper()      {}

func (f *fakeTB) Failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

func (f *fakeTB) Logf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

// Fatalf ends the calling goroutine, as testing.T's does; use run.
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed = true
	f.fatals = append(f.fatals, fmt.Sprintf(format, args...))
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

// run calls fn on a goroutine of its own so that Fatalf ends only fn.
func (f *fakeTB) run(fn func(tb testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
}

func (f *fakeTB) runCleanups() {
	f.mu.Lock()
	fns := f.cleanups
	f.cleanups = nil
	f.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

func (f *fakeTB) setFailed() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failed = true
}
