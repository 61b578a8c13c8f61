-- Inbound replies and bounces: their own ids, so a webhook delivered twice
-- is recorded once.

-- +goose Up
ALTER TABLE engagement_event ADD COLUMN external_id text;
CREATE UNIQUE INDEX engagement_event_external ON engagement_event (kind, external_id) WHERE external_id IS NOT NULL;

-- +goose Down
DROP INDEX engagement_event_external;
ALTER TABLE engagement_event DROP COLUMN external_id;
