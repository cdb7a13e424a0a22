-- +goose Up
CREATE TABLE order_lines (order_id bigint NOT NULL REFERENCES orders, sku text NOT NULL, qty int NOT NULL);

-- +goose Down
DROP TABLE order_lines;
