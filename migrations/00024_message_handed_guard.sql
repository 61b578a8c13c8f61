-- A guard for upgrades past 00023 while processes of an earlier version
-- still run. Their reaper releases a message that is claimed and whose
-- lease ended back to scheduled, not knowing handed_at: a message this
-- version claimed and handed to SMTP, whose worker then died, would be
-- sent again. This version never puts a handed-over message back to
-- scheduled with handed_at still set (Retry and withdraw clear it), so such
-- an update can only come from an earlier version: the message becomes
-- uncertain instead, as this version's reaper would make it. Once no
-- process older than 00023 can run, a later migration may drop the guard.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION message_handed_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.status := 'uncertain';
    NEW.claim_token := OLD.claim_token;
    NEW.claimed_at := OLD.claimed_at;
    NEW.enqueued_at := OLD.enqueued_at;
    NEW.reason := 'no outcome was recorded within the lease after the message was marked as being handed to SMTP '
        || '(its worker stopped, or could not write); it may have been delivered';
    NEW.last_error := 'lease expired while sending';
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER message_handed_guard BEFORE UPDATE ON message FOR EACH ROW
    WHEN (OLD.status = 'claimed' AND OLD.handed_at IS NOT NULL AND NEW.status = 'scheduled' AND NEW.handed_at IS NOT NULL)
    EXECUTE FUNCTION message_handed_guard();

-- +goose Down
DROP TRIGGER message_handed_guard ON message;
DROP FUNCTION message_handed_guard();
