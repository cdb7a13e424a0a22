package health

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

const (
	// healthContentType is the media type of the IETF health check
	// draft's responses.
	healthContentType = "application/health+json"
	jsonContentType   = "application/json"

	// gateOutput explains a failed readiness while the gate is closed.
	gateOutput = "service is starting or stopping"

	// Suffixes of the readiness document's check names, after a
	// database's checkName ("postgres", "postgres-orders") or its
	// replica's (checkName + replicaSuffix), and the checks' component
	// type.
	checkConnections  = ":connections"
	checkResponseTime = ":responseTime"
	replicaSuffix     = "-replica"
	componentType     = "datastore"

	// Values of the status document's status key, as the Python original
	// wrote them.
	statusOK          = "ok"
	statusUnavailable = "unavailable"
)

// healthDocument is a response in the shape of the IETF health check
// draft (draft-inadarei-api-health-check).
type healthDocument struct {
	Status Status                    `json:"status"`
	Output string                    `json:"output,omitempty"`
	Checks map[string][]healthResult `json:"checks,omitempty"`
}

// healthResult is one observation under a check name of the draft.
type healthResult struct {
	ComponentType string `json:"componentType"`
	ObservedValue any    `json:"observedValue"`
	ObservedUnit  string `json:"observedUnit"`
	Status        Status `json:"status"`
	Time          string `json:"time"`
	Output        string `json:"output,omitempty"`
}

// statusDocument is the Python original's /status response, key for key,
// and the other databases of a Checker that has them, under a key the
// original never wrote so that readers of the original keys see no
// change.
type statusDocument struct {
	Application string                    `json:"application"`
	Environment string                    `json:"environment"`
	Instances   map[string]statusInstance `json:"instances,omitempty"`
	Postgres    statusPostgres            `json:"postgres"`
	Status      string                    `json:"status"`
	Version     string                    `json:"version"`
}

// statusInstance is a database other than the main one in the status
// document: its pool and its own status.
type statusInstance struct {
	PoolFree int32  `json:"pool_free"`
	PoolSize int32  `json:"pool_size"`
	Status   string `json:"status"`
}

type statusPostgres struct {
	PoolFree int32 `json:"pool_free"`
	PoolSize int32 `json:"pool_size"`
}

// LivenessHandler answers 200 {"status":"pass"} for as long as the process
// can serve HTTP. It never touches the database: restarting a service
// because its database is down would not bring the database back.
func (c *Checker) LivenessHandler() http.Handler {
	return getOrHead(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, r, http.StatusOK, healthContentType, healthDocument{Status: StatusPass})
	})
}

// ReadinessHandler answers 200 when the readiness gate is open and the
// check passes or warns, and 503 otherwise, with an application/health+json
// document: the overall status, an output explaining warn or fail, and
// for each database the checks "postgres:connections" (open connections)
// and "postgres:responseTime" (ping latency in milliseconds), named
// "postgres-<name>:..." for a named database and "...-replica:..." for a
// replica, and a check for each of the database's Components, such as
// "postgres:schemaVersion". A response time is left out when the pool was saturated, as no
// ping was made. Each check has its database's own status; the overall
// one is fail only when a database that is not optional fails, and the
// output then names it. While the gate is closed the document has status
// fail, says the service is starting or stopping, and no database is
// pinged.
func (c *Checker) ReadinessHandler() http.Handler {
	return getOrHead(func(w http.ResponseWriter, r *http.Request) {
		if !c.Ready() {
			writeJSON(w, r, http.StatusServiceUnavailable, healthContentType,
				healthDocument{Status: StatusFail, Output: gateOutput})
			return
		}
		report := c.Check(r.Context())
		code := http.StatusOK
		if !report.Available {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, r, code, healthContentType, readinessDocument(report))
	})
}

func readinessDocument(r Report) healthDocument {
	checks := map[string][]healthResult{}
	for _, db := range r.Databases() {
		name := checkName(db.Name)
		addChecks(checks, name+checkConnections, name+checkResponseTime, db)
		if db.Replica != nil {
			addChecks(checks, name+replicaSuffix+checkConnections, name+replicaSuffix+checkResponseTime, *db.Replica)
		}
		at := db.Time.UTC().Format(time.RFC3339)
		for _, cr := range db.Components {
			checks[name+":"+cr.Name] = []healthResult{{
				ComponentType: componentType,
				ObservedValue: cr.ObservedValue,
				ObservedUnit:  cr.ObservedUnit,
				Status:        cr.Status,
				Time:          at,
				Output:        cr.Output,
			}}
		}
	}
	return healthDocument{Status: r.Status, Output: r.Error, Checks: checks}
}

// addChecks adds r's observations under the two check names.
func addChecks(checks map[string][]healthResult, connections, responseTime string, r Report) {
	at := r.Time.UTC().Format(time.RFC3339)
	checks[connections] = []healthResult{{
		ComponentType: componentType,
		ObservedValue: r.Stats.Size,
		ObservedUnit:  "connections",
		Status:        r.Status,
		Time:          at,
		Output:        r.Error,
	}}
	if r.Latency > 0 {
		checks[responseTime] = []healthResult{{
			ComponentType: componentType,
			ObservedValue: float64(r.Latency.Microseconds()) / 1000,
			ObservedUnit:  "ms",
			Status:        r.Status,
			Time:          at,
			Output:        r.Error,
		}}
	}
}

// StatusHandler answers the Python original's status document:
//
//	{"application": ..., "environment": ...,
//	 "postgres": {"pool_free": N, "pool_size": N},
//	 "status": "ok" or "unavailable", "version": ...}
//
// with 200 when the check's overall verdict is available and 503
// otherwise; "postgres" is the main database's pool. A Checker of several
// databases adds the others, by name, and only then:
//
//	"instances": {"orders": {"pool_free": N, "pool_size": N, "status": "ok"}}
//
// where each status is that database's own; an optional database that is
// unavailable does not make the document's status unavailable. While the
// readiness gate is closed it answers unavailable with pool sizes of zero
// without pinging the databases.
func (c *Checker) StatusHandler() http.Handler {
	return getOrHead(func(w http.ResponseWriter, r *http.Request) {
		doc := statusDocument{
			Application: c.application,
			Environment: c.environment,
			Status:      statusUnavailable,
			Version:     c.version,
		}
		if len(c.dbs) > 1 {
			doc.Instances = make(map[string]statusInstance, len(c.dbs)-1)
			for _, d := range c.dbs[1:] {
				doc.Instances[d.name] = statusInstance{Status: statusUnavailable}
			}
		}
		code := http.StatusServiceUnavailable
		if c.Ready() {
			report := c.Check(r.Context())
			doc.Postgres = statusPostgres{PoolFree: report.Stats.Idle, PoolSize: report.Stats.Size}
			if report.Available {
				doc.Status, code = statusOK, http.StatusOK
			}
			for _, in := range report.Instances {
				doc.Instances[in.Name] = statusInstance{PoolFree: in.Stats.Idle, PoolSize: in.Stats.Size, Status: statusOf(in)}
			}
		}
		writeJSON(w, r, code, jsonContentType, doc)
	})
}

// statusOf is a database's own status in the status document's words.
func statusOf(r Report) string {
	if r.Available {
		return statusOK
	}
	return statusUnavailable
}

// Register mounts c's handlers on mux at GET /livez, /readyz and /status
// (HEAD too). It panics, as http.ServeMux does, if mux already has a
// handler for one of those paths.
func Register(mux *http.ServeMux, c *Checker) {
	mux.Handle("/livez", c.LivenessHandler())
	mux.Handle("/readyz", c.ReadinessHandler())
	mux.Handle("/status", c.StatusHandler())
}

// getOrHead answers other methods than GET and HEAD with 405, so that
// the handlers behave the same mounted by Register or on their own.
func getOrHead(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			w.Header().Set("Cache-Control", "no-store")
			http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
			return
		}
		h(w, r)
	})
}

// writeJSON writes v with code. A probe's answer is only true when it is
// made, so no cache may keep it.
func writeJSON(w http.ResponseWriter, r *http.Request, code int, contentType string, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// The documents hold only strings and numbers.
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	body = append(body, '\n')
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
