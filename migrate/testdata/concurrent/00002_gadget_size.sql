-- +goose Up
SELECT pg_sleep(0.1);
ALTER TABLE gadgets ADD COLUMN size int NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE gadgets DROP COLUMN size;
