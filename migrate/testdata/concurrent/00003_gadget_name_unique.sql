-- +goose Up
CREATE UNIQUE INDEX gadgets_name ON gadgets (name);

-- +goose Down
DROP INDEX gadgets_name;
