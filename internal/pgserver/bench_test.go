package pgserver

import (
	"context"
	"testing"
)

// BenchmarkServerStart times a start from nothing to the first connection,
// and separately the cost of the server stopping and starting again.
func BenchmarkServerStart(b *testing.B) {
	binDir, err := findBinDir()
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	run := func(b *testing.B, opts ...Option) {
		for b.Loop() {
			l, err := startLocal(ctx, newConfig(opts), binDir)
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := l.close(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	// Copy of the cached cluster, postgres start, first connection.
	b.Run("cached", func(b *testing.B) { run(b) })
	// initdb instead of the copy.
	b.Run("initdb", func(b *testing.B) { run(b, func(c *config) { c.noCache = true }) })
	// Start after Stop, as an outage test does.
	b.Run("restart", func(b *testing.B) {
		l, err := startLocal(ctx, newConfig(nil), binDir)
		if err != nil {
			b.Fatal(err)
		}
		defer l.close()
		for b.Loop() {
			b.StopTimer()
			if err := l.stop(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := l.start(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
