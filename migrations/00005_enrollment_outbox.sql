-- Enrollment of accounts in drips, the outbox of intended sends, engagement
-- with them, suppressions and topic subscriptions.

-- +goose Up
ALTER TABLE campaign ADD COLUMN activated_at timestamptz;  -- first activation: entries before it do not enroll

CREATE TABLE enrollment (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id      bigint NOT NULL REFERENCES campaign (id),
    version          integer NOT NULL,        -- the version it runs, to the end
    account_id       bigint NOT NULL REFERENCES account (id) ON DELETE CASCADE,
    entry_number     integer NOT NULL,        -- 1 for the first entry, 2 for a re-entry, ...
    segment_event_id bigint,                  -- the entry that caused it
    contacts         bigint[] NOT NULL,       -- the audience, fixed at entry
    status           text NOT NULL CHECK (status IN ('active', 'completed', 'exited', 'converted')),
    step             integer NOT NULL,        -- index of the step now scheduled
    anchor_at        timestamptz NOT NULL,    -- when the previous step was sent (or the entry)
    entered_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    finish_reason    text NOT NULL DEFAULT '',
    UNIQUE (campaign_id, account_id, entry_number)
);
-- One running enrollment per campaign and account.
CREATE UNIQUE INDEX enrollment_running ON enrollment (campaign_id, account_id) WHERE status = 'active';
CREATE INDEX enrollment_account ON enrollment (account_id);

-- The outbox: one row per intended send. "Once" is the unique key.
CREATE TABLE message (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    enrollment_id   bigint REFERENCES enrollment (id) ON DELETE CASCADE,  -- null for test sends
    campaign_id     bigint NOT NULL REFERENCES campaign (id),
    version         integer NOT NULL,
    step_id         text NOT NULL,
    contact_id      bigint REFERENCES contact (id) ON DELETE CASCADE,     -- null for test sends
    channel         text NOT NULL CHECK (channel IN ('email', 'in_app')),
    to_address      text NOT NULL DEFAULT '',  -- test sends only; others use the contact's
    test            boolean NOT NULL DEFAULT false,
    status          text NOT NULL CHECK (status IN ('scheduled', 'claimed', 'sending', 'sent', 'failed', 'skipped', 'uncertain')),
    reason          text NOT NULL DEFAULT '',
    due_at          timestamptz NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text NOT NULL DEFAULT '',
    enqueued_at     timestamptz,             -- real time a send task last carried it
    claim_token     text,
    claimed_at      timestamptz,             -- real time of the claim (a lease, not business time)
    sent_at         timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    UNIQUE (enrollment_id, step_id, contact_id)
);
CREATE INDEX message_due ON message (due_at) WHERE status = 'scheduled';
CREATE INDEX message_leased ON message (claimed_at) WHERE status IN ('claimed', 'sending');
CREATE INDEX message_contact ON message (contact_id, id);
CREATE INDEX message_campaign ON message (campaign_id, step_id, status);
CREATE INDEX message_uncertain ON message (id) WHERE status = 'uncertain';

-- Engagement with our messages: opens, clicks, replies, unsubscribes, bounces.
CREATE TABLE engagement_event (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id bigint NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    kind       text NOT NULL,
    human      boolean NOT NULL DEFAULT true,  -- false: a privacy proxy or link scanner
    at         timestamptz NOT NULL,
    metadata   jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX engagement_event_message ON engagement_event (message_id, kind);

-- Addresses never to mail again (hard bounces, complaints).
CREATE TABLE suppression (
    email  text PRIMARY KEY,
    reason text NOT NULL,
    at     timestamptz NOT NULL
);

-- Unsubscribes per topic; topic '*' means every topic.
CREATE TABLE contact_unsubscribe (
    contact_id bigint NOT NULL REFERENCES contact (id) ON DELETE CASCADE,
    topic      text NOT NULL,
    at         timestamptz NOT NULL,
    PRIMARY KEY (contact_id, topic)
);

-- +goose Down
DROP TABLE contact_unsubscribe;
DROP TABLE suppression;
DROP TABLE engagement_event;
DROP TABLE message;
DROP TABLE enrollment;
ALTER TABLE campaign DROP COLUMN activated_at;
