-- A materialised copy of each account's profile, so that full passes scan one
-- row per account instead of aggregating usage. A row is valid for the UTC day
-- it was computed on and the account's change_version it was computed from;
-- anything else is recomputed on read.

-- +goose Up
CREATE TABLE account_profile (
    account_id           bigint PRIMARY KEY REFERENCES account (id) ON DELETE CASCADE,
    day                  date NOT NULL,
    version              bigint NOT NULL,
    plan                 text NOT NULL,
    stage                text NOT NULL,
    tier                 text NOT NULL,
    region               text NOT NULL,
    csm                  text NOT NULL,
    mrr                  double precision NOT NULL,
    seats                integer NOT NULL,
    active_users         integer NOT NULL,
    logins_7d            integer NOT NULL,
    logins_30d           integer NOT NULL,
    features             jsonb NOT NULL,
    events               jsonb NOT NULL,
    health_score         integer NOT NULL,
    health_change_30d    integer NOT NULL,
    nps                  integer NOT NULL,
    open_tickets         integer NOT NULL,
    emails_30d           integer NOT NULL,
    opens_30d            integer NOT NULL,
    clicks_30d           integer NOT NULL,
    replies_30d          integer NOT NULL,
    nudges_dismissed_30d integer NOT NULL,
    traits               jsonb NOT NULL,
    signup_at            timestamptz NOT NULL,
    last_login_at        timestamptz NOT NULL
);

-- +goose Down
DROP TABLE account_profile;
