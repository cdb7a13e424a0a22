-- +goose Up
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts (id),
    total numeric(12, 2) NOT NULL CHECK (total >= 0)
);

-- +goose Down
DROP TABLE orders;
