-- Accounts waiting for the segment engine, kept in a table of their own.
--
-- They were found through a partial index on account (id) WHERE
-- change_version > evaluated_version. Since that predicate names
-- change_version, every change to an account was an update PostgreSQL could
-- not make in place (HOT): a new entry in each of the account's four indexes
-- for every account of every ingest batch, and the work of pruning them — the
-- largest part of an ingest statement (18 of 47 ms for 1,000 events).
-- account_pending holds the same accounts (and, briefly, some already
-- evaluated): every writer that bumps change_version adds the account in the
-- same transaction, after locking its row; the engine removes it, under the
-- same lock, when it records an evaluation of the account's latest version.
-- With no index naming the columns that change, those updates can stay on
-- their page (HOT) and touch no index. BenchmarkIngestEvents: 24–27k events/s
-- before, 36–42k after, same machine. (A lower fillfactor for account was
-- tried too: no faster ingest, and 40% more pages for every pass to read.)

-- +goose Up
CREATE TABLE account_pending (
    account_id bigint PRIMARY KEY  -- no foreign key: the writer holds the account's row lock already
);
INSERT INTO account_pending (account_id) SELECT id FROM account WHERE change_version > evaluated_version;
DROP INDEX account_dirty;

-- +goose Down
CREATE INDEX account_dirty ON account (id) WHERE change_version > evaluated_version;
DROP TABLE account_pending;
