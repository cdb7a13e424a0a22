-- +goose Up
-- The sleep keeps the lock held long enough for the other processes to
-- find it taken and wait.
SELECT pg_sleep(0.3);
CREATE TABLE gadgets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);

-- +goose Down
DROP TABLE gadgets;
