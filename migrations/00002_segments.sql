-- Segments: predicates, membership with history, the entry/exit log that
-- campaigns consume, and the bookkeeping of sharded full passes.

-- +goose Up
CREATE TABLE segment (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL,
    description      text NOT NULL DEFAULT '',
    predicate        text NOT NULL,
    generation       bigint NOT NULL DEFAULT 1,  -- bumped whenever the predicate changes
    built_generation bigint NOT NULL DEFAULT 0,  -- the generation whose membership is complete
    build_reason     text NOT NULL DEFAULT 'initial' CHECK (build_reason IN ('initial', 'definition')),
    error_count      bigint NOT NULL DEFAULT 0,  -- runtime errors evaluating the predicate
    last_error       text NOT NULL DEFAULT '',
    last_error_at    timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    deleted_at       timestamptz
);
CREATE UNIQUE INDEX segment_live_name ON segment (name) WHERE deleted_at IS NULL;

-- One row per stay of an account in a segment; history is kept.
CREATE TABLE segment_membership (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    segment_id   bigint NOT NULL REFERENCES segment (id),
    account_id   bigint NOT NULL REFERENCES account (id) ON DELETE CASCADE,
    entered_at   timestamptz NOT NULL,
    entry_reason text NOT NULL,
    exited_at    timestamptz,
    exit_reason  text
);
-- At most one open stay per (segment, account): concurrent evaluations cannot
-- enter an account twice.
CREATE UNIQUE INDEX segment_membership_open ON segment_membership (segment_id, account_id) WHERE exited_at IS NULL;
CREATE INDEX segment_membership_account ON segment_membership (account_id, entered_at);

-- Every entry and exit, in commit order of its writer, for campaigns to consume.
CREATE TABLE segment_event (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    segment_id   bigint NOT NULL REFERENCES segment (id),
    account_id   bigint NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('enter', 'exit')),
    reason       text NOT NULL CHECK (reason IN ('data', 'initial', 'definition', 'time', 'deleted')),
    at           timestamptz NOT NULL,
    processed_at timestamptz
);
CREATE INDEX segment_event_pending ON segment_event (id) WHERE processed_at IS NULL;

-- A pass evaluates every account against a snapshot of segment generations,
-- split into shards of account ids that any worker may run.
CREATE TABLE segment_pass (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         text NOT NULL UNIQUE,   -- fullpass:<bucket> or build:<segment>:<generation>
    all_segments boolean NOT NULL,      -- all live segments (true) or only those in generations
    generations jsonb NOT NULL,         -- {"<segment id>": generation} evaluated by the pass
    started_at  timestamptz NOT NULL,
    finished_at timestamptz
);
CREATE TABLE segment_pass_shard (
    pass_id bigint NOT NULL REFERENCES segment_pass (id) ON DELETE CASCADE,
    lo      bigint NOT NULL,            -- account ids lo <= id < hi
    hi      bigint NOT NULL,
    done_at timestamptz,
    PRIMARY KEY (pass_id, lo)
);
CREATE INDEX segment_pass_open ON segment_pass (started_at) WHERE finished_at IS NULL;

-- +goose Down
DROP TABLE segment_pass_shard;
DROP TABLE segment_pass;
DROP TABLE segment_event;
DROP TABLE segment_membership;
DROP TABLE segment;
