-- +goose Up
CREATE TABLE after_broken (id int);

-- +goose Down
DROP TABLE after_broken;
