// Package discovery turns SRV connection strings into multi-host PostgreSQL
// connection strings.
//
// Two SRV forms are understood:
//
//	postgresql+srv://user:pass@name.example.com/db?params
//	    looks up the SRV name _name._postgresql.example.com
//	aws+srv://user:pass@svc.namespace/db?params
//	    looks up the SRV name svc.namespace as given (AWS Cloud Map)
//
// The records of the answer are ordered by priority (lowest first), then by
// weight (highest first), and become one multi-host URL
//
//	postgresql://user:pass@host1:port1,host2:port2/db?params
//
// which pgx tries in order. User, password, database and query parameters are
// copied byte for byte from the SRV URL. Plain postgres:// and postgresql://
// URLs and keyword/value strings (host=... dbname=...) pass through untouched.
//
// Under sslmode=verify-full pgx checks each host's certificate against that
// host's own name, which is the SRV target: the certificates of the servers
// must name the SRV targets, not the SRV name.
//
// Source caches the answer for its TTL and keeps serving the last good answer
// while DNS is failing, which suits a pool that resolves the name again for
// each new connection.
package discovery
