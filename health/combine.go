package health

import (
	"slices"
)

// Combine returns one Checker over the databases of all of checkers, for
// an application whose PostgreSQL instances each have a Checker of their
// own, such as one with only named instances:
//
//	health.Register(mux, health.Combine(orders, reporting))
//
// Each database keeps its name, its replica, its timeout and whether it
// is optional. The main database of the result, whose figures are the
// top-level ones of its Report and the "postgres" ones of the status
// document, is the unnamed one when a Checker has it, else the main one
// of the first Checker; the others are its Instances, sorted by name. A
// name is kept by the first database that has it, in the order given; a
// later one is left out and logged as a warning.
//
// The result's readiness gate is open only while those of all of
// checkers are, so each part's owner still drives it with SetReady; its
// own gate, which SetReady and Drain of the result close, is open from the
// start. Its drain delay is the longest of checkers'. Its application,
// environment, version, cache window, clock and logger are those of the
// first Checker. It checks the databases itself, with a cache of its own,
// so probes of the parts are not counted against it.
//
// Combine panics when checkers is empty or holds a nil Checker, as
// building a Checker without a database is a programming error that no
// probe could report usefully.
func Combine(checkers ...*Checker) *Checker {
	if len(checkers) == 0 {
		panic("health: Combine needs at least one Checker")
	}
	if slices.Contains(checkers, nil) {
		panic("health: Combine of a nil Checker")
	}
	first := checkers[0]
	var dbs []database
	drainDelay := first.drainDelay
	for _, p := range checkers {
		dbs = append(dbs, p.dbs...)
		drainDelay = max(drainDelay, p.drainDelay)
	}
	// The unnamed database, when there is one, is the application's
	// default instance: the one the status document's "postgres" has
	// always described.
	if i := slices.IndexFunc(dbs, func(d database) bool { return d.name == "" }); i > 0 {
		main := dbs[i]
		dbs = append([]database{main}, slices.Delete(dbs, i, i+1)...)
	}
	c := &Checker{
		dbs:         uniqueDatabases(first.logger, dbs),
		timeout:     first.timeout,
		window:      first.window,
		now:         first.now,
		logger:      first.logger,
		application: first.application,
		environment: first.environment,
		version:     first.version,
		parts:       slices.Clone(checkers),
		drainDelay:  drainDelay,
	}
	c.lastByDB = make([]Status, len(c.dbs))
	c.ready.Store(true)
	return c
}
