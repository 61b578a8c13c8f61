-- The day's first pass rewrites the cached profiles and health scores whose
-- validity ran out overnight (a sixth of them in BenchmarkSegmentFullPass).
-- With full pages every such update was placed on another page, a non-HOT
-- update that also wrote a new entry in each of the table's indexes. Free
-- room in each page lets PostgreSQL update the row in place (HOT) as the
-- segment stamps already do (00012). The setting applies to pages written
-- from now on: existing pages keep their fill until rewritten (VACUUM FULL
-- or pg_repack applies it at once).

-- +goose Up
ALTER TABLE account_profile SET (fillfactor = 70);
ALTER TABLE account_health SET (fillfactor = 70);

-- +goose Down
ALTER TABLE account_profile RESET (fillfactor);
ALTER TABLE account_health RESET (fillfactor);
