-- The example service's tables, as the Python original's test application
-- had them. The service applies its migrations when it starts
-- (migrate.Migrations), each in one transaction, so a failed start leaves
-- nothing half made.

-- +goose Up
CREATE TABLE public.test (
    id               uuid        NOT NULL PRIMARY KEY,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_modified_at timestamptz,
    toggle           boolean     NOT NULL DEFAULT false,
    value            text
);

CREATE TABLE public.query_count (
    key             text NOT NULL PRIMARY KEY,
    last_updated_at timestamptz,
    count           integer NOT NULL DEFAULT 0
);

-- The original called uuid_generate_v4() from the uuid-ossp extension;
-- gen_random_uuid() is built in since PostgreSQL 13, so a plain SQL
-- function stands in for it and no extension has to be installed.
-- +goose StatementBegin
CREATE FUNCTION public.new_id() RETURNS uuid
    LANGUAGE sql VOLATILE
    AS $$ SELECT gen_random_uuid() $$;
-- +goose StatementEnd

INSERT INTO public.query_count (key, last_updated_at, count)
     VALUES ('test', now(), 0);

-- A few rows for GET and POST /multi-row to show.
INSERT INTO public.test (id, value)
     SELECT public.new_id(), 'row ' || n FROM generate_series(1, 5) AS n;

-- +goose Down
DROP FUNCTION public.new_id();
DROP TABLE public.query_count;
DROP TABLE public.test;
