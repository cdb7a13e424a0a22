package txn

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// beginQuery keeps recent BEGIN strings, and a kept one is never handed
// to settings it was not built for, even when both fall in one slot.
func TestBeginQueryCache(t *testing.T) {
	cases := []Settings{
		{Timeout: 5 * time.Second},
		{Timeout: 5 * time.Second, ReadOnly: true},
		{Timeout: 5 * time.Second, Isolation: pgx.Serializable},
		{Timeout: 5 * time.Second, Isolation: pgx.Serializable, ReadOnly: true, Deferrable: true},
		{Timeout: 13 * time.Second},                   // another slot
		{Timeout: 5*time.Second + 8*time.Millisecond}, // the first one's slot
		{Timeout: 1500 * time.Microsecond},            // rounds up to 2 ms
	}
	for round := range 3 {
		for _, s := range cases {
			if got, want := beginQuery(&s), buildBeginQuery(&s); got != want {
				t.Errorf("round %d, %+v: beginQuery = %q, want %q", round, s, got, want)
			}
		}
	}
	s := Settings{Timeout: 7 * time.Second, ReadOnly: true}
	beginQuery(&s)
	if allocs := testing.AllocsPerRun(100, func() { beginQuery(&s) }); allocs != 0 {
		t.Errorf("a kept BEGIN allocates %v times", allocs)
	}
	if got := beginQuery(&s); got != "begin read only; set local statement_timeout = 7000" {
		t.Errorf("beginQuery = %q", got)
	}
}
