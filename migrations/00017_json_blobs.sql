-- Documents that Tend only ever writes and reads whole are stored as json
-- (text, checked on the way in) rather than jsonb: a cached profile's feature,
-- event and trait maps, and a health score's components. Turning each
-- batch's parameter into jsonb took longer than the statement that used it
-- (32 ms of 60 for a thousand scores), and nothing queries inside them.

-- +goose Up
ALTER TABLE account_profile ALTER COLUMN features TYPE json, ALTER COLUMN events TYPE json,
    ALTER COLUMN traits TYPE json;
ALTER TABLE account_health ALTER COLUMN components TYPE json;
ALTER TABLE health_history ALTER COLUMN components TYPE json;

-- +goose Down
ALTER TABLE health_history ALTER COLUMN components TYPE jsonb;
ALTER TABLE account_health ALTER COLUMN components TYPE jsonb;
ALTER TABLE account_profile ALTER COLUMN features TYPE jsonb, ALTER COLUMN events TYPE jsonb,
    ALTER COLUMN traits TYPE jsonb;
