-- +goose Up
-- A random value: every database cloned from one template holds the same.
CREATE TABLE seed (id uuid NOT NULL);
INSERT INTO seed VALUES (gen_random_uuid());

-- +goose Down
DROP TABLE seed;
