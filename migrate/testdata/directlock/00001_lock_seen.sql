-- +goose Up
-- Records whether the session running the migration holds goose's
-- session advisory lock (lock.DefaultLockID, 4097083626): it does when
-- the migration runs on a direct connection to the server.
CREATE TABLE lock_seen AS
SELECT count(*)::int AS n FROM pg_locks
WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
  AND classid = '0'::oid AND objid = '4097083626'::oid AND objsubid = 1;

-- +goose Down
DROP TABLE lock_seen;
