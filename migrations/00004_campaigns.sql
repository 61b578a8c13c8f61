-- Campaigns: templates, campaign definitions and their versions.

-- +goose Up
CREATE TABLE template (
    name       text PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('email', 'nudge')),
    source     text NOT NULL,
    hash       text NOT NULL,              -- sha256 of kind and source, for apply/diff
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE campaign (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    kind            text NOT NULL CHECK (kind IN ('drip', 'broadcast')),
    topic           text NOT NULL,
    status          text NOT NULL CHECK (status IN ('draft', 'active', 'paused', 'archived')),
    current_version integer NOT NULL,     -- the version new enrollments run
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

-- Each version keeps its own copy of its definition and of the templates it
-- uses, so running enrollments finish on what they began with.
CREATE TABLE campaign_version (
    campaign_id bigint NOT NULL REFERENCES campaign (id) ON DELETE CASCADE,
    version     integer NOT NULL,
    definition  jsonb NOT NULL,
    templates   jsonb NOT NULL,           -- {"name": {"kind": "...", "source": "..."}}
    hash        text NOT NULL,            -- of definition and templates
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, version)
);

-- +goose Down
DROP TABLE campaign_version;
DROP TABLE campaign;
DROP TABLE template;
