-- +goose Up
CREATE TABLE sleepy (id int);
SELECT pg_sleep(30);

-- +goose Down
DROP TABLE sleepy;
