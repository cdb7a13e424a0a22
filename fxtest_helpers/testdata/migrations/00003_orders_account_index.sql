-- +goose Up
CREATE INDEX orders_account_id_idx ON orders (account_id);

-- +goose Down
DROP INDEX orders_account_id_idx;
