-- Holds (a CSM stops automation for an account) and the global send switch.

-- +goose Up
CREATE TABLE account_hold (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES account (id) ON DELETE CASCADE,
    reason      text NOT NULL,
    until       timestamptz,              -- null: until released
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL,
    released_at timestamptz
);
CREATE INDEX account_hold_open ON account_hold (account_id) WHERE released_at IS NULL;

-- One row: when paused, nothing is sent and nothing is lost.
CREATE TABLE send_switch (
    id         integer PRIMARY KEY CHECK (id = 1),
    paused     boolean NOT NULL,
    reason     text NOT NULL DEFAULT '',
    changed_by text NOT NULL DEFAULT '',
    changed_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE send_switch;
DROP TABLE account_hold;
