package sprocketspg

import (
	"time"

	"github.com/jackc/pgx/v5"
)

// ResponseDeadlineOf returns the read deadline p knows it set on conn, in
// Unix nanoseconds; 0 when none is known to be set. For tests of the
// response deadline in package sprocketspg_test.
func ResponseDeadlineOf(p *Pool, conn *pgx.Conn) int64 {
	st, _ := conn.PgConn().CustomData()[connDeadlineKey].(*connDeadline)
	if st == nil {
		return -1
	}
	until := st.until.Load()
	if until == 0 {
		return 0
	}
	return p.deadline.base.Add(time.Duration(until)).UnixNano()
}
