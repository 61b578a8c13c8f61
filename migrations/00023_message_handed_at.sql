-- A message being handed to SMTP was marked status = 'sending', its lease
-- restarted in claimed_at: both columns are read by indexes (status by
-- every partial one), so each hand-over wrote a new entry in each of
-- message's indexes besides the new row version (a non-HOT update), in the
-- commit that every SMTP round of a batch waits for. Now a hand-over sets
-- handed_at alone, which no index reads, and the status stays 'claimed';
-- with free room in the page PostgreSQL updates the row in place (HOT), as
-- for the cached profiles (00022). A message is being sent when it is
-- claimed and handed_at is set; the API still calls it "sending". The
-- fillfactor applies to pages written from now on.
--
-- Stop the workers and schedulers of earlier versions before applying it:
-- their reaper reads a message claimed and handed over by this version as
-- one never handed over, and would release it to be sent again.

-- +goose Up
ALTER TABLE message ADD COLUMN handed_at timestamptz;
ALTER TABLE message SET (fillfactor = 70);
UPDATE message SET status = 'claimed', handed_at = claimed_at WHERE status = 'sending';

-- +goose Down
UPDATE message SET status = 'sending', claimed_at = handed_at WHERE status = 'claimed' AND handed_at IS NOT NULL;
ALTER TABLE message RESET (fillfactor);
ALTER TABLE message DROP COLUMN handed_at;
