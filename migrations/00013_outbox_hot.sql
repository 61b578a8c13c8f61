-- Indexes for the outbox's hot path.
--
-- message_leased (claimed_at) WHERE status IN ('claimed', 'sending') is for
-- the reaper, whose queries bound claimed_at. The statements that move a
-- batch's messages along (hand-over, settle) name their rows by id and also
-- say status = 'claimed' (or IN ('claimed', 'sending')), which implies that
-- predicate: whenever statistics said few messages were in flight (as most
-- ANALYZEs find), the planner scanned this index instead of the primary key,
-- so that each hand-over of a few messages read every message in flight, and
-- the entries of their earlier versions not yet vacuumed. With claimed_at in
-- the predicate too, the reaper's queries (claimed_at < $1 implies claimed_at
-- IS NOT NULL) can still use it, and the hand-overs cannot.
--
-- The sweep takes due messages never enqueued, and those enqueued long ago
-- whose task may have been lost. It found both by reading every due
-- scheduled message (or the whole table) on each sweep, to skip the many
-- enqueued moments ago: work in proportion to the backlog, every few
-- seconds, while a large send drains. message_unqueued serves the first in
-- the order they are taken, message_enqueued the second by age.

-- +goose Up
DROP INDEX message_leased;
CREATE INDEX message_leased ON message (claimed_at)
    WHERE status IN ('claimed', 'sending') AND claimed_at IS NOT NULL;
CREATE INDEX message_unqueued ON message (due_at, id) WHERE status = 'scheduled' AND enqueued_at IS NULL;
CREATE INDEX message_enqueued ON message (enqueued_at) WHERE status = 'scheduled' AND enqueued_at IS NOT NULL;

-- +goose Down
DROP INDEX message_enqueued;
DROP INDEX message_unqueued;
DROP INDEX message_leased;
CREATE INDEX message_leased ON message (claimed_at) WHERE status IN ('claimed', 'sending');
