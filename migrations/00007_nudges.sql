-- In-app nudges: the inbox the customer's product polls.

-- +goose Up
CREATE TABLE nudge (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  bigint NOT NULL UNIQUE REFERENCES message (id) ON DELETE CASCADE,  -- once per outbox row
    contact_id  bigint NOT NULL REFERENCES contact (id) ON DELETE CASCADE,
    title       text NOT NULL,
    body        text NOT NULL,
    cta_label   text NOT NULL DEFAULT '',
    cta_url     text NOT NULL DEFAULT '',
    status      text NOT NULL CHECK (status IN ('pending', 'clicked', 'dismissed')),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    viewed_at   timestamptz,
    acted_at    timestamptz
);
CREATE INDEX nudge_inbox ON nudge (contact_id, id) WHERE status = 'pending';

-- +goose Down
DROP TABLE nudge;
