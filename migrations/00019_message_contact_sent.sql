-- Messages by contact and send time, instead of by contact and id.
--
-- Everything that reads a contact's (or an account's) messages by contact
-- wants those sent recently: the profile's emails_30d and engagement, the
-- health score's engagement (30 days), the frequency caps of every send
-- batch. Through (contact_id, id) each read every message the contact was
-- ever sent, and checked its send time in the table: work that grew with
-- every campaign. (contact_id, sent_at) reads only the window; the contact's
-- message list and the cascade of a deleted contact still find its rows by
-- contact_id. It replaces the old index rather than adding one: each index
-- is written again by every change of a message's status.
--
-- Built and dropped concurrently, outside a transaction, so that upgrading a
-- large outbox does not stop sending.

-- +goose NO TRANSACTION
-- +goose Up
-- A concurrent build cut short (a failure, a restart) leaves an invalid
-- index of the name behind: build it again from scratch.
DROP INDEX CONCURRENTLY IF EXISTS message_contact_sent;
CREATE INDEX CONCURRENTLY message_contact_sent ON message (contact_id, sent_at);
DROP INDEX CONCURRENTLY IF EXISTS message_contact;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS message_contact;
CREATE INDEX CONCURRENTLY message_contact ON message (contact_id, id);
DROP INDEX CONCURRENTLY IF EXISTS message_contact_sent;
