-- Foundation: the shared clock, API keys, the audit log, accounts, contacts,
-- CSMs and usage data.

-- +goose Up

-- The demo clock's offset from real time (TEND_DEMO_CLOCK). One row at most.
CREATE TABLE clock_state (
    id         integer PRIMARY KEY CHECK (id = 1),
    offset_ms  bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL
);

CREATE TABLE api_key (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    role       text NOT NULL CHECK (role IN ('admin', 'marketing', 'csm', 'product', 'ingest')),
    prefix     text NOT NULL,          -- the key's public start, shown in listings
    hash       bytea NOT NULL UNIQUE,  -- sha256 of the whole key; the key itself is never stored
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);

CREATE TABLE audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL,
    api_key_id bigint REFERENCES api_key (id),
    actor      text NOT NULL,          -- key name, or "cli" for the command line
    role       text NOT NULL DEFAULT '',
    action     text NOT NULL,          -- e.g. "POST /v1/accounts"
    target     text NOT NULL DEFAULT '',
    status     integer NOT NULL DEFAULT 0,
    request_id text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);

CREATE TABLE csm (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email          text NOT NULL UNIQUE,   -- stored lower-cased
    name           text NOT NULL,
    title          text NOT NULL DEFAULT '',
    signature_html text NOT NULL DEFAULT '',
    reply_to       text NOT NULL DEFAULT '',
    phone          text NOT NULL DEFAULT '',
    calendar_url   text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);

CREATE TABLE account (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id       text NOT NULL UNIQUE,  -- the customer's own id
    name              text NOT NULL DEFAULT '',
    plan              text NOT NULL DEFAULT '',
    mrr               double precision NOT NULL DEFAULT 0,
    seats             integer NOT NULL DEFAULT 0,
    signup_at         timestamptz NOT NULL,
    stage             text NOT NULL DEFAULT '',
    tier              text NOT NULL DEFAULT '',
    region            text NOT NULL DEFAULT '',
    csm_id            bigint REFERENCES csm (id),
    timezone          text NOT NULL DEFAULT '',
    traits            jsonb NOT NULL DEFAULT '{}',
    last_login_at     timestamptz,           -- latest "login" event
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    -- Dirty tracking for the segment engine: every change to the account's
    -- data bumps change_version; evaluation records the version it saw.
    change_version    bigint NOT NULL DEFAULT 1,
    evaluated_version bigint NOT NULL DEFAULT 0
);
CREATE INDEX account_dirty ON account (id) WHERE change_version > evaluated_version;
CREATE INDEX account_csm ON account (csm_id);

CREATE TABLE contact (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id text NOT NULL UNIQUE,
    account_id  bigint NOT NULL REFERENCES account (id) ON DELETE CASCADE,
    email       text NOT NULL DEFAULT '',    -- stored lower-cased; may be empty until known
    name        text NOT NULL DEFAULT '',
    role        text NOT NULL DEFAULT '',
    timezone    text NOT NULL DEFAULT '',
    locale      text NOT NULL DEFAULT '',
    traits      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX contact_account ON contact (account_id);
CREATE INDEX contact_email ON contact (email) WHERE email <> '';

-- Raw usage events. High-volume and append-only: no foreign key, the ingest
-- path resolves and checks account ids before inserting.
CREATE TABLE usage_event (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL,
    user_key    text NOT NULL DEFAULT '',   -- the sender's user/contact id
    name        text NOT NULL,
    properties  jsonb NOT NULL DEFAULT '{}',
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    message_id  text                         -- sender's idempotency key (Segment messageId)
);
CREATE INDEX usage_event_account_time ON usage_event (account_id, occurred_at);
CREATE UNIQUE INDEX usage_event_message_id ON usage_event (message_id) WHERE message_id IS NOT NULL;

-- Daily per-account rollups of usage events, by UTC day.
-- kind 'e': count of events named key; kind 'f': feature_used events for feature key.
CREATE TABLE usage_daily (
    account_id bigint NOT NULL,
    day        date NOT NULL,
    kind       "char" NOT NULL,
    key        text NOT NULL,
    n          integer NOT NULL,
    PRIMARY KEY (account_id, day, kind, key)
);

-- When each of an account's users was last active, for active_users.
CREATE TABLE account_user_activity (
    account_id   bigint NOT NULL,
    user_key     text NOT NULL,
    last_seen_at timestamptz NOT NULL,
    PRIMARY KEY (account_id, user_key)
);

-- The latest snapshot of each metric a customer's own pipeline sets directly.
CREATE TABLE account_metric (
    account_id bigint NOT NULL REFERENCES account (id) ON DELETE CASCADE,
    name       text NOT NULL CHECK (name IN ('active_users', 'open_tickets', 'nps')),
    value      double precision NOT NULL,
    at         timestamptz NOT NULL,
    PRIMARY KEY (account_id, name)
);

-- Which account a Segment user belongs to, learnt from "group" calls, so that
-- later "identify" and "track" calls without context.groupId find it.
CREATE TABLE segment_user_group (
    user_id     text PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES account (id) ON DELETE CASCADE,
    updated_at  timestamptz NOT NULL
);

-- +goose Down
DROP TABLE segment_user_group;
DROP TABLE account_metric;
DROP TABLE account_user_activity;
DROP TABLE usage_daily;
DROP TABLE usage_event;
DROP TABLE contact;
DROP TABLE account;
DROP TABLE csm;
DROP TABLE audit_log;
DROP TABLE api_key;
DROP TABLE clock_state;
