-- The health model and scores: the model is one row of data (weights,
-- thresholds, key features), replaced through PUT /v1/health/model; each
-- account's current score with its explanation; and every score it has had.

-- +goose Up
CREATE TABLE health_model (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    version        bigint NOT NULL,
    model          jsonb NOT NULL,
    -- Copied out of model for the profile of an account never scored.
    starting_score integer NOT NULL,
    starting_band  text NOT NULL,
    updated_at     timestamptz NOT NULL,
    updated_by     text NOT NULL
);

CREATE TABLE account_health (
    account_id    bigint PRIMARY KEY REFERENCES account (id) ON DELETE CASCADE,
    score         integer NOT NULL,
    band          text NOT NULL,
    change_30d    integer NOT NULL,
    components    jsonb NOT NULL,
    -- What the score was computed from: the account's change_version, the
    -- UTC day and the model version. The same three give the same score.
    version       bigint NOT NULL,
    day           date NOT NULL,
    model_version bigint NOT NULL,
    computed_at   timestamptz NOT NULL
);
CREATE INDEX account_health_band ON account_health (band);

-- One row per change of score or band.
CREATE TABLE health_history (
    id            bigserial PRIMARY KEY,
    account_id    bigint NOT NULL REFERENCES account (id) ON DELETE CASCADE,
    at            timestamptz NOT NULL,
    score         integer NOT NULL,
    band          text NOT NULL,
    components    jsonb NOT NULL,
    model_version bigint NOT NULL
);
CREATE INDEX health_history_account_at ON health_history (account_id, at);

ALTER TABLE account_profile ADD COLUMN health_band text NOT NULL DEFAULT 'neutral';

-- +goose Down
ALTER TABLE account_profile DROP COLUMN health_band;
DROP TABLE health_history;
DROP TABLE account_health;
DROP TABLE health_model;
