-- engagement_event is an append-only log written at tracking speed (a batch
-- of opens and clicks per statement). Its foreign key to message made every
-- insert lock its message row (FOR KEY SHARE: a WAL record and a dirtied
-- heap page per hit), about a fifth of BenchmarkTracking's time. Every
-- writer inserts the id of a message it has just read in the same statement
-- or transaction, and Tend deletes no messages; an operator deleting
-- messages (or the accounts, enrollments or contacts they cascade from)
-- still removes their engagement, through message_deleted.

-- +goose Up
ALTER TABLE engagement_event DROP CONSTRAINT engagement_event_message_id_fkey;

-- +goose StatementBegin
CREATE FUNCTION message_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM engagement_event e USING gone WHERE e.message_id = gone.id;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER message_deleted AFTER DELETE ON message
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION message_deleted();

-- +goose Down
DROP TRIGGER message_deleted ON message;
DROP FUNCTION message_deleted();
DELETE FROM engagement_event e WHERE NOT EXISTS (SELECT 1 FROM message m WHERE m.id = e.message_id);
ALTER TABLE engagement_event ADD CONSTRAINT engagement_event_message_id_fkey
    FOREIGN KEY (message_id) REFERENCES message (id) ON DELETE CASCADE;
