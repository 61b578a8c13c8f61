-- Drop usage_event (account_id, occurred_at).
--
-- Nothing reads raw events by account: profiles, segments and health read the
-- daily rollups (usage_daily) and account_user_activity, which ingest writes
-- in the same statement as the raw event. The index was written by every
-- event all the same: 1,000 random insertions a batch, the largest part of
-- the raw insert's cost. usage_event keeps its primary key and the unique
-- message_id index that makes Segment's retries idempotent.
--
-- Dropped concurrently, outside a transaction, so that upgrading a large
-- event table does not stop ingest.

-- +goose NO TRANSACTION
-- +goose Up
DROP INDEX CONCURRENTLY IF EXISTS usage_event_account_time;

-- +goose Down
CREATE INDEX CONCURRENTLY IF NOT EXISTS usage_event_account_time ON usage_event (account_id, occurred_at);
