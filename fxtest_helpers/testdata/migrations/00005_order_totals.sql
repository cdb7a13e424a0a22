-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION account_total(account bigint) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(total), 0) FROM orders WHERE account_id = account;
$$;
-- +goose StatementEnd
CREATE VIEW order_totals AS
    SELECT a.id AS account_id, account_total(a.id) AS total FROM accounts a;

-- +goose Down
DROP VIEW order_totals;
DROP FUNCTION account_total(bigint);
