package health

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// A Component is a part of a database's service beyond its pool, such as
// its schema migrations or its listener, which a Checker reports as a
// check of its own. The readiness document shows it under the database's
// check name and the component's: "postgres:schemaVersion",
// "postgres-orders:schemaVersion".
type Component struct {
	// Name is the check's name after the database's, such as
	// "schemaVersion". It must be unique among the database's components
	// and should be lowerCamelCase, as the health check draft's names are.
	Name string
	// Check reports the component's state. The Checker calls it on every
	// check that is not served from its cache, after the database's ping,
	// with a ctx that ends after a timeout as long as the ping's (all the
	// database's components share it); it must return when ctx ends.
	Check func(ctx context.Context) ComponentReport
}

// ComponentReport is a Component's state as one check saw it.
type ComponentReport struct {
	// Name is the Component's; the Checker sets it.
	Name string
	// Status is pass, warn or fail. A component that fails makes its
	// database fail; one that warns makes a passing database warn.
	Status Status
	// ObservedValue and ObservedUnit are the draft's observation, such as
	// a schema version; either may be empty.
	ObservedValue any
	ObservedUnit  string
	// Output says why Status is not pass. Anything in it that looks like
	// a password is masked before it is reported.
	Output string
}

// ComponentSource is implemented by a Database that has Components. The
// Checker asks for them on every check, so components may be added after
// the Checker was made, as the parts of a database instance attach to it
// before it starts.
type ComponentSource interface {
	Components() []Component
}

// checkComponents runs the components of db, if it has any, within
// timeout, and folds their verdicts into r.
func checkComponents(ctx context.Context, db Database, timeout time.Duration, r *Report) {
	source, ok := db.(ComponentSource)
	if !ok {
		return
	}
	components := source.Components()
	if len(components) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var problems []string
	for _, c := range components {
		cr := runComponent(ctx, c)
		r.Components = append(r.Components, cr)
		switch cr.Status {
		case StatusPass:
			continue
		case StatusFail:
			r.Status, r.Available = StatusFail, false
		default:
			if r.Status == StatusPass {
				r.Status = StatusWarn
			}
		}
		problems = append(problems, cr.Name+": "+cr.Output)
	}
	if len(problems) == 0 {
		return
	}
	if r.Error != "" {
		problems = append([]string{r.Error}, problems...)
	}
	r.Error = strings.Join(problems, "; ")
}

// runComponent checks c once. A component without a Check, or one whose
// Check panics, fails with a message that says so, rather than taking the
// health endpoint down.
func runComponent(ctx context.Context, c Component) (cr ComponentReport) {
	defer func() {
		if v := recover(); v != nil {
			cr = ComponentReport{Status: StatusFail, Output: fmt.Sprintf("check panicked: %v", v)}
		}
		cr.Name = c.Name
		cr.Output = scrub(cr.Output)
		switch cr.Status {
		case StatusPass, StatusWarn, StatusFail:
		default:
			cr.Status, cr.Output = StatusFail, fmt.Sprintf("check returned status %q, not pass, warn or fail", cr.Status)
		}
	}()
	if c.Check == nil {
		return ComponentReport{Status: StatusFail, Output: "component has no check"}
	}
	if name := ":" + c.Name; c.Name == "" || name == checkConnections || name == checkResponseTime {
		return ComponentReport{Status: StatusFail, Output: fmt.Sprintf("component name %q is empty or taken by the database's own checks", c.Name)}
	}
	return c.Check(ctx)
}
