-- +goose Up
ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new';

-- +goose Down
ALTER TABLE orders DROP COLUMN status;
