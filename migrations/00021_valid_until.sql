-- How long a cached profile, a health score and a segment stamp stay true.
--
-- They were valid for the UTC day they were computed on, so that the first
-- pass of every day recomputed every profile and score and re-evaluated
-- every account. What time changes in them is known when they are computed:
-- a window's count changes on the day its oldest data point leaves it, an
-- active-users snapshot expires 30 days after it was taken, the health
-- score's recency moves once a day only between the model's recent and
-- stale days, its 30-day change when a history row turns 30 days old. Each
-- row now says until when it holds (valid_until, an instant); a profile whose
-- windows lose nothing overnight is not recomputed, and an account none of
-- whose segment inputs changed is not re-evaluated.
--
-- Existing rows keep their old meaning: valid until the end of their day.

-- +goose Up
ALTER TABLE account_profile ADD COLUMN valid_until timestamptz;
UPDATE account_profile SET valid_until = (day + 1)::timestamp AT TIME ZONE 'UTC';
ALTER TABLE account_profile ALTER COLUMN valid_until SET NOT NULL;

ALTER TABLE account_health ADD COLUMN valid_until timestamptz;
UPDATE account_health SET valid_until = (day + 1)::timestamp AT TIME ZONE 'UTC';
ALTER TABLE account_health ALTER COLUMN valid_until SET NOT NULL;

ALTER TABLE segment_stamp ADD COLUMN valid_until timestamptz;
UPDATE segment_stamp SET valid_until = date_trunc('day', evaluated_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day';
ALTER TABLE segment_stamp ALTER COLUMN valid_until SET NOT NULL;

-- +goose Down
ALTER TABLE segment_stamp DROP COLUMN valid_until;
ALTER TABLE account_health DROP COLUMN valid_until;
ALTER TABLE account_profile DROP COLUMN valid_until;
