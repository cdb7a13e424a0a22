package health_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sprockets/sprocketspg/health"
)

// componentDB is a real pool as a Database with Components, which a test
// may add to at any time.
type componentDB struct {
	health.Database

	mu         sync.Mutex
	components []health.Component
}

var _ health.ComponentSource = (*componentDB)(nil)

// newComponentDB returns a componentDB over a fresh pool with cs.
func newComponentDB(t *testing.T, cs ...health.Component) *componentDB {
	t.Helper()
	return &componentDB{Database: health.FromPgxpool(newPgxpool(t, nil)), components: cs}
}

func (d *componentDB) Components() []health.Component {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.components)
}

func (d *componentDB) add(cs ...health.Component) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.components = append(d.components, cs...)
}

// fixed is a component that always reports status with output.
func fixed(name string, status health.Status, output string) health.Component {
	return health.Component{Name: name, Check: func(context.Context) health.ComponentReport {
		return health.ComponentReport{Status: status, Output: output}
	}}
}

// componentNames returns the names of reports, in order.
func componentNames(reports []health.ComponentReport) []string {
	out := make([]string, 0, len(reports))
	for _, r := range reports {
		out = append(out, r.Name)
	}
	return out
}

func TestComponentsFoldIntoReport(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		components []health.Component
		status     health.Status
		errParts   []string
	}{
		{"all pass", []health.Component{
			fixed("schemaVersion", health.StatusPass, ""),
			fixed("listener", health.StatusPass, ""),
		}, health.StatusPass, nil},
		{"one warns", []health.Component{
			fixed("schemaVersion", health.StatusPass, ""),
			fixed("listener", health.StatusWarn, "reconnecting"),
		}, health.StatusWarn, []string{"listener: reconnecting"}},
		{"one fails", []health.Component{
			fixed("schemaVersion", health.StatusFail, "behind by 2"),
			fixed("listener", health.StatusPass, ""),
		}, health.StatusFail, []string{"schemaVersion: behind by 2"}},
		{"fail and warn", []health.Component{
			fixed("listener", health.StatusWarn, "reconnecting"),
			fixed("schemaVersion", health.StatusFail, "behind by 2"),
		}, health.StatusFail, []string{"listener: reconnecting", "schemaVersion: behind by 2"}},
	}
	db := newComponentDB(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := &componentDB{Database: db.Database, components: tt.components}
			r := health.NewChecker(db).Check(context.Background())
			assert.Equal(t, tt.status, r.Status)
			assert.Equal(t, tt.status != health.StatusFail, r.Available)
			if tt.errParts == nil {
				assert.Empty(t, r.Error)
			}
			for _, part := range tt.errParts {
				assert.Contains(t, r.Error, part)
			}
			if len(tt.errParts) > 1 {
				assert.Equal(t, strings.Join(tt.errParts, "; "), r.Error, "problems in the components' order")
			}
			want := make([]string, 0, len(tt.components))
			for _, c := range tt.components {
				want = append(want, c.Name)
			}
			assert.Equal(t, want, componentNames(r.Components), "in the order the database lists them")
			assert.Positive(t, r.Latency, "the database was pinged as well")
		})
	}
}

func TestComponentsNoneAreNil(t *testing.T) {
	t.Parallel()
	r := health.NewChecker(newComponentDB(t)).Check(context.Background())
	assert.Equal(t, health.StatusPass, r.Status)
	assert.Nil(t, r.Components)

	plain := health.NewChecker(health.FromPgxpool(newPgxpool(t, nil))).Check(context.Background())
	assert.Nil(t, plain.Components, "a Database without ComponentSource")
}

func TestComponentReportFields(t *testing.T) {
	t.Parallel()
	db := newComponentDB(t, health.Component{Name: "schemaVersion", Check: func(context.Context) health.ComponentReport {
		// The Checker sets the name, whatever the Check says.
		return health.ComponentReport{Name: "other", Status: health.StatusPass, ObservedValue: int64(42), ObservedUnit: "version"}
	}})
	r := health.NewChecker(db).Check(context.Background())
	require.Len(t, r.Components, 1)
	assert.Equal(t, health.ComponentReport{Name: "schemaVersion", Status: health.StatusPass, ObservedValue: int64(42), ObservedUnit: "version"},
		r.Components[0])
}

func TestComponentWarnDoesNotHideAFailingDatabase(t *testing.T) {
	t.Parallel()
	pool := newPgxpool(t, nil)
	db := &componentDB{Database: health.FromPgxpool(pool), components: []health.Component{
		fixed("listener", health.StatusWarn, "reconnecting"),
	}}
	pool.Close()
	r := health.NewChecker(db).Check(context.Background())
	assert.Equal(t, health.StatusFail, r.Status)
	assert.False(t, r.Available)
	assert.Contains(t, r.Error, "closed pool")
	assert.True(t, strings.HasSuffix(r.Error, "; listener: reconnecting"), r.Error)
	assert.Equal(t, []string{"listener"}, componentNames(r.Components), "components are checked when the ping fails")
}

func TestComponentsOfNamedDatabase(t *testing.T) {
	t.Parallel()
	db := newComponentDB(t, fixed("schemaVersion", health.StatusFail, "behind"))
	r := health.NewChecker(db, health.WithName("orders")).Check(context.Background())
	assert.Equal(t, health.StatusFail, r.Status)
	assert.Equal(t, "postgres-orders: schemaVersion: behind", r.Error)
	own := r.Databases()[0]
	assert.Equal(t, "schemaVersion: behind", own.Error)
	assert.Equal(t, []string{"schemaVersion"}, componentNames(own.Components))
}

func TestComponentsOfInstanceAndReplica(t *testing.T) {
	t.Parallel()
	main := newComponentDB(t, fixed("main", health.StatusPass, ""))
	orders := newComponentDB(t, fixed("outbox", health.StatusWarn, "lagging"))
	replica := health.FromPgxpool(newPgxpool(t, nil))
	c := health.NewChecker(main, health.WithReplica(replica), health.WithInstance("orders", orders, nil))
	r := c.Check(context.Background())
	assert.Equal(t, health.StatusWarn, r.Status)
	assert.True(t, r.Available)
	assert.Equal(t, "postgres-orders: outbox: lagging", r.Error)
	assert.Equal(t, []string{"main"}, componentNames(r.Components), "a database with a replica has its components too")
	require.NotNil(t, r.Replica)
	assert.Nil(t, r.Replica.Components)
	require.Len(t, r.Instances, 1)
	assert.Equal(t, []string{"outbox"}, componentNames(r.Instances[0].Components))
	assert.Equal(t, health.StatusWarn, r.Instances[0].Status)

	c.SetReady(true)
	code, doc := readinessOf(t, c)
	assert.Equal(t, http.StatusOK, code)
	checks := checksOf(t, doc)
	assert.Equal(t, "pass", checkStatus(t, checks, "postgres:main"))
	assert.Equal(t, "warn", checkStatus(t, checks, "postgres-orders:outbox"))
	assert.NotContains(t, checks, "postgres-replica:main")
}

func TestComponentBadChecksFail(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		component health.Component
		output    string
	}{
		{"panics", health.Component{Name: "bad", Check: func(context.Context) health.ComponentReport {
			panic("component exploded")
		}}, "check panicked: component exploded"},
		{"nil check", health.Component{Name: "bad"}, "component has no check"},
		{"empty status", fixed("bad", "", ""), `check returned status "", not pass, warn or fail`},
		{"unknown status", fixed("bad", "ok", "all good"), `check returned status "ok", not pass, warn or fail`},
	}
	db := newComponentDB(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := &componentDB{Database: db.Database, components: []health.Component{
				tt.component, fixed("after", health.StatusPass, ""),
			}}
			var r health.Report
			require.NotPanics(t, func() { r = health.NewChecker(db).Check(context.Background()) })
			assert.Equal(t, health.StatusFail, r.Status)
			assert.False(t, r.Available)
			require.Len(t, r.Components, 2, "the components after it are still checked")
			assert.Equal(t, "bad", r.Components[0].Name)
			assert.Equal(t, health.StatusFail, r.Components[0].Status)
			assert.Equal(t, tt.output, r.Components[0].Output)
			assert.Equal(t, health.StatusPass, r.Components[1].Status)
			assert.Equal(t, "bad: "+tt.output, r.Error)
		})
	}
}

func TestComponentCheckContextHasTheTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 2 * time.Second
	var left atomic.Int64
	var hadDeadline atomic.Bool
	db := newComponentDB(t, health.Component{Name: "deadline", Check: func(ctx context.Context) health.ComponentReport {
		deadline, ok := ctx.Deadline()
		hadDeadline.Store(ok)
		left.Store(int64(time.Until(deadline)))
		return health.ComponentReport{Status: health.StatusPass}
	}})
	r := health.NewChecker(db, health.WithTimeout(timeout)).Check(context.Background())
	require.Len(t, r.Components, 1)
	require.True(t, hadDeadline.Load(), "Check gets a context with a deadline")
	assert.Positive(t, left.Load())
	assert.LessOrEqual(t, time.Duration(left.Load()), timeout)

	// A component that waits for its context is ended by the timeout.
	db = newComponentDB(t, health.Component{Name: "slow", Check: func(ctx context.Context) health.ComponentReport {
		<-ctx.Done()
		return health.ComponentReport{Status: health.StatusFail, Output: ctx.Err().Error()}
	}})
	began := time.Now()
	r = health.NewChecker(db, health.WithTimeout(300*time.Millisecond)).Check(context.Background())
	assert.Less(t, time.Since(began), 3*time.Second)
	assert.Equal(t, health.StatusFail, r.Status)
	require.Len(t, r.Components, 1)
	assert.Equal(t, health.ComponentReport{Name: "slow", Status: health.StatusFail, Output: "context deadline exceeded"}, r.Components[0])
	assert.Contains(t, r.Error, "slow: context deadline exceeded")
}

func TestComponentsAddedLaterAreReported(t *testing.T) {
	t.Parallel()
	db := newComponentDB(t)
	var calls atomic.Int32
	c := health.NewChecker(db, health.WithCacheWindow(0))
	r := c.Check(context.Background())
	assert.Equal(t, health.StatusPass, r.Status)
	assert.Empty(t, r.Components)

	db.add(health.Component{Name: "late", Check: func(context.Context) health.ComponentReport {
		calls.Add(1)
		return health.ComponentReport{Status: health.StatusWarn, Output: "attached after the Checker"}
	}})
	r = c.Check(context.Background())
	assert.Equal(t, health.StatusWarn, r.Status)
	assert.Equal(t, []string{"late"}, componentNames(r.Components))
	assert.Equal(t, "late: attached after the Checker", r.Error)
	assert.EqualValues(t, 1, calls.Load())
}

func TestComponentsServedFromTheCache(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	db := newComponentDB(t, health.Component{Name: "counted", Check: func(context.Context) health.ComponentReport {
		calls.Add(1)
		return health.ComponentReport{Status: health.StatusPass}
	}})
	clock := newFakeClock()
	c := health.NewChecker(db, health.WithClock(clock.Now), health.WithCacheWindow(time.Second))
	first := c.Check(context.Background())
	second := c.Check(context.Background())
	assert.Equal(t, first, second)
	assert.EqualValues(t, 1, calls.Load(), "a cached result does not check the components again")
	clock.Advance(time.Second)
	c.Check(context.Background())
	assert.EqualValues(t, 2, calls.Load())
}

func TestComponentOutputIsMasked(t *testing.T) {
	t.Parallel()
	const secret = "hunter2-Component"
	db := newComponentDB(t, fixed("listener", health.StatusFail,
		"dial postgres://app:"+secret+"@db.example.com/app failed; host=db password="+secret+" user=app"))
	c := health.NewChecker(db)
	r := c.Check(context.Background())
	require.Len(t, r.Components, 1)
	assert.NotContains(t, r.Components[0].Output, secret)
	assert.NotContains(t, r.Error, secret)
	assert.Contains(t, r.Components[0].Output, "postgres://app:xxxxx@db.example.com/app")
	assert.Contains(t, r.Components[0].Output, "password=xxxxx")

	c.SetReady(true)
	srv := serve(t, c)
	resp := get(t, srv, "/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, resp.code)
	assert.NotContains(t, string(resp.body), secret)
}

// readinessOf serves c's readiness once and decodes the document.
func readinessOf(t *testing.T, c *health.Checker) (int, map[string]any) {
	t.Helper()
	resp := get(t, serve(t, c), "/readyz")
	return resp.code, resp.object(t)
}

func TestComponentsInReadinessDocument(t *testing.T) {
	t.Parallel()
	var failing atomic.Bool
	db := newComponentDB(t,
		health.Component{Name: "schemaVersion", Check: func(context.Context) health.ComponentReport {
			if failing.Load() {
				return health.ComponentReport{Status: health.StatusFail, ObservedValue: 3, ObservedUnit: "version", Output: "want version 5"}
			}
			return health.ComponentReport{Status: health.StatusPass, ObservedValue: 5, ObservedUnit: "version"}
		}},
		health.Component{Name: "listener", Check: func(context.Context) health.ComponentReport {
			return health.ComponentReport{Status: health.StatusPass}
		}},
	)
	clock := newFakeClock()
	c := health.NewChecker(db, health.WithCacheWindow(0), health.WithClock(clock.Now))
	c.SetReady(true)

	code, doc := readinessOf(t, c)
	require.Equal(t, http.StatusOK, code, doc)
	assert.Equal(t, "pass", doc["status"])
	checks := checksOf(t, doc)
	assert.ElementsMatch(t, []string{"postgres:connections", "postgres:responseTime", "postgres:schemaVersion", "postgres:listener"},
		keys(checks))
	assert.Equal(t, []any{map[string]any{
		"componentType": "datastore",
		"observedValue": float64(5),
		"observedUnit":  "version",
		"status":        "pass",
		"time":          clock.Now().UTC().Format(time.RFC3339),
	}}, checks["postgres:schemaVersion"])
	assert.Equal(t, []any{map[string]any{
		"componentType": "datastore",
		"observedValue": nil,
		"observedUnit":  "",
		"status":        "pass",
		"time":          clock.Now().UTC().Format(time.RFC3339),
	}}, checks["postgres:listener"], "observedValue and observedUnit are there when empty")

	failing.Store(true)
	code, doc = readinessOf(t, c)
	require.Equal(t, http.StatusServiceUnavailable, code, doc)
	assert.Equal(t, "fail", doc["status"])
	assert.Equal(t, "schemaVersion: want version 5", doc["output"])
	checks = checksOf(t, doc)
	assert.Equal(t, []any{map[string]any{
		"componentType": "datastore",
		"observedValue": float64(3),
		"observedUnit":  "version",
		"status":        "fail",
		"time":          clock.Now().UTC().Format(time.RFC3339),
		"output":        "want version 5",
	}}, checks["postgres:schemaVersion"])
	assert.Equal(t, "pass", checkStatus(t, checks, "postgres:listener"))
	assert.Equal(t, "fail", checkStatus(t, checks, "postgres:connections"), "the database's own checks carry its status")
}

func TestComponentsInNamedReadinessDocument(t *testing.T) {
	t.Parallel()
	db := newComponentDB(t, fixed("schemaVersion", health.StatusWarn, "pending migrations"))
	c := health.NewChecker(db, health.WithName("orders"))
	c.SetReady(true)
	code, doc := readinessOf(t, c)
	require.Equal(t, http.StatusOK, code, doc)
	assert.Equal(t, "warn", doc["status"])
	checks := checksOf(t, doc)
	assert.Equal(t, "warn", checkStatus(t, checks, "postgres-orders:schemaVersion"))
	assert.NotContains(t, checks, "postgres:schemaVersion")
}
