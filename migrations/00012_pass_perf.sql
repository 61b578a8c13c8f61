-- What the segment engine last evaluated each account against, so that a full
-- pass evaluates only what can have changed since (internal/segment/stamp.go).
-- A stamp says: the account's membership of every live segment was evaluated,
-- and its differences written in the same transaction as the stamp, from the
-- account's data at change_version `version`, under the live segments and
-- health model that `segments` fingerprints (0: the stamp vouches for
-- nothing), at clock time `evaluated_at`. While the version, the fingerprint
-- and the UTC day stay the same, only predicates that read the clock can
-- change their result, and those reading the whole days since signup (last
-- login) only from `signup_next` (`login_next`), when that count next ticks
-- over. `seq` counts the stamp's writes, so that an evaluation can tell that
-- another one wrote in between.

-- +goose Up
CREATE TABLE segment_stamp (
    account_id   bigint PRIMARY KEY REFERENCES account (id) ON DELETE CASCADE,
    version      bigint NOT NULL,
    segments     bigint NOT NULL,
    evaluated_at timestamptz NOT NULL,
    signup_next  timestamptz NOT NULL,
    login_next   timestamptz NOT NULL,
    seq          bigint NOT NULL
) WITH (fillfactor = 50); -- rewritten by every day's first pass: room for HOT updates

-- +goose Down
DROP TABLE segment_stamp;
