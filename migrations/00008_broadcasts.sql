-- Broadcast progress: a broadcast fans out in batches of accounts; the
-- cursor lets a restarted worker continue where it stopped.

-- +goose Up
ALTER TABLE campaign ADD COLUMN broadcast_cursor bigint NOT NULL DEFAULT 0;
ALTER TABLE campaign ADD COLUMN broadcast_started_at timestamptz;
ALTER TABLE campaign ADD COLUMN broadcast_finished_at timestamptz;

-- +goose Down
ALTER TABLE campaign DROP COLUMN broadcast_finished_at;
ALTER TABLE campaign DROP COLUMN broadcast_started_at;
ALTER TABLE campaign DROP COLUMN broadcast_cursor;
