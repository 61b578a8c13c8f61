-- Cached profiles read health from account_health (account.CachedProfiles)
-- instead of a copy in account_profile, which every rescore rewrote right
-- after the profile itself had been written: on a day's first pass, every
-- profile row written twice.

-- +goose Up
ALTER TABLE account_profile DROP COLUMN health_score, DROP COLUMN health_change_30d, DROP COLUMN health_band;

-- +goose Down
ALTER TABLE account_profile ADD COLUMN health_score integer NOT NULL DEFAULT 50,
    ADD COLUMN health_change_30d integer NOT NULL DEFAULT 0,
    ADD COLUMN health_band text NOT NULL DEFAULT 'neutral';
UPDATE account_profile p SET health_score = h.score, health_change_30d = h.change_30d, health_band = h.band
FROM account_health h WHERE h.account_id = p.account_id;
