// Package delivery sends what campaigns scheduled: the outbox (one message
// row per intended send), claiming and leasing, the SMTP mailer, and the
// reconciler that keeps Redis a signal rather than the source of truth.
//
// A message moves scheduled → claimed → sending → sent | failed | skipped |
// uncertain. "claimed" means a worker holds it in a batch; "sending" is set
// just before that one message is handed to SMTP. A worker that dies leaves
// its claimed messages to be released back to scheduled (safe: they never
// reached SMTP) and at most its one sending message per connection to be
// marked uncertain (it may or may not have been accepted), never resent
// automatically.
package delivery

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// Message statuses.
const (
	StatusScheduled = "scheduled"
	StatusClaimed   = "claimed"
	StatusSending   = "sending"
	StatusSent      = "sent"
	StatusFailed    = "failed"
	StatusSkipped   = "skipped"
	StatusUncertain = "uncertain"
)

// Outbox reads and writes message rows.
type Outbox struct {
	db    *sqlx.DB
	clock clock.Clock
	// wall is real time, for leases: whether a worker is still alive is not
	// a question about business time (which the demo clock may jump).
	wall func() time.Time
}

// NewOutbox returns the outbox.
func NewOutbox(db *sqlx.DB, clk clock.Clock) *Outbox {
	return &Outbox{db: db, clock: clk, wall: func() time.Time { return time.Now().UTC() }}
}

// NewToken returns a fresh claim token.
func NewToken() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// TakeDue marks up to limit due, scheduled messages as enqueued (now) and
// returns their ids, oldest first. Messages enqueued within requeueAfter are
// left alone: their task is presumably still queued. A message whose task
// was lost (Redis flushed) comes back after requeueAfter.
func (o *Outbox) TakeDue(ctx context.Context, limit int, requeueAfter time.Duration) ([]int64, error) {
	wall := o.wall()
	var ids []int64
	err := o.db.SelectContext(ctx, &ids, `
		UPDATE message SET enqueued_at = $2
		WHERE id IN (
			SELECT m.id FROM message m JOIN campaign c ON c.id = m.campaign_id
			WHERE m.status = 'scheduled' AND m.due_at <= $1 AND (m.enqueued_at IS NULL OR m.enqueued_at < $3)
			  AND (m.test OR c.status = 'active') -- a paused campaign's messages wait
			  AND NOT `+heldOrPaused+`
			ORDER BY m.due_at, m.id LIMIT $4
			FOR UPDATE OF m SKIP LOCKED)
		RETURNING id`, o.clock.Now(), wall, wall.Add(-requeueAfter), limit)
	if err != nil {
		return nil, fmt.Errorf("delivery: take due: %w", err)
	}
	return ids, nil
}

// Claim takes the given messages that are still scheduled and due, under a
// claim token, and returns the ids it got. Others (sent meanwhile, claimed
// by another worker, rescheduled later) are left alone.
func (o *Outbox) Claim(ctx context.Context, ids []int64, token string) ([]int64, error) {
	var got []int64
	err := o.db.SelectContext(ctx, &got, `
		UPDATE message m SET status = 'claimed', claim_token = $2, claimed_at = $3, updated_at = $1
		WHERE id = ANY($4) AND status = 'scheduled' AND due_at <= $1
		  AND NOT `+heldOrPaused+` -- a hold placed since the task was queued still holds
		RETURNING id`, o.clock.Now(), token, o.wall(), pq.Array(ids))
	if err != nil {
		return nil, fmt.Errorf("delivery: claim: %w", err)
	}
	return got, nil
}

// Outcome is the result of one claimed message, to be recorded.
type Outcome struct {
	ID     int64  `json:"id"`
	Status string `json:"status"` // sent, failed, skipped or uncertain
	Reason string `json:"reason"`
}

// settleSQL records outcomes and (when $3 is not 0) marks the next message
// as being handed to SMTP, in one statement: one commit per message sent.
const settleSQL = `
	WITH done AS (
		UPDATE message m SET status = x.status, reason = x.reason, updated_at = $4,
			sent_at = CASE WHEN x.status = 'sent' THEN $4 ELSE m.sent_at END,
			last_error = CASE WHEN x.status IN ('failed', 'uncertain') THEN x.reason ELSE m.last_error END
		FROM jsonb_to_recordset($2::jsonb) AS x(id bigint, status text, reason text)
		WHERE m.id = x.id AND m.claim_token = $1 AND m.status IN ('claimed', 'sending')
		RETURNING m.id
	), next AS (
		UPDATE message SET status = 'sending', claimed_at = $5, attempts = attempts + 1, updated_at = $4
		WHERE id = $3 AND claim_token = $1 AND status = 'claimed'
		RETURNING id
	)
	SELECT (SELECT count(*) FROM next) + 0 * (SELECT count(*) FROM done)`

// Handover records earlier outcomes of the batch and marks message next as
// being handed to SMTP now, durably, in one commit. From here on a crash
// makes next uncertain. It reports false when next's claim was lost (its
// lease expired and it was released).
func (o *Outbox) Handover(ctx context.Context, token string, done []Outcome, next int64) (bool, error) {
	var n int
	var err error
	if len(done) == 1 {
		// The common case (the previous message's outcome), without the
		// JSON decoding of the general statement.
		d := done[0]
		err = o.db.GetContext(ctx, &n, handoverOneSQL, token, d.ID, d.Status, d.Reason, next, o.clock.Now(), o.wall())
	} else {
		err = o.db.GetContext(ctx, &n, settleSQL, token, outcomes(done), next, o.clock.Now(), o.wall())
	}
	if err != nil {
		return false, fmt.Errorf("delivery: hand over: %w", err)
	}
	return n == 1, nil
}

// handoverOneSQL is settleSQL for exactly one outcome.
const handoverOneSQL = `
	WITH done AS (
		UPDATE message SET status = $3, reason = $4, updated_at = $6,
			sent_at = CASE WHEN $3 = 'sent' THEN $6 ELSE sent_at END,
			last_error = CASE WHEN $3 IN ('failed', 'uncertain') THEN $4 ELSE last_error END
		WHERE id = $2 AND claim_token = $1 AND status IN ('claimed', 'sending')
		RETURNING id
	), next AS (
		UPDATE message SET status = 'sending', claimed_at = $7, attempts = attempts + 1, updated_at = $6
		WHERE id = $5 AND claim_token = $1 AND status = 'claimed'
		RETURNING id
	)
	SELECT (SELECT count(*) FROM next) + 0 * (SELECT count(*) FROM done)`

// Settle records the last outcomes of a batch. The commit does not wait for
// the WAL flush (synchronous_commit off): should a crash of PostgreSQL lose
// it, a sent message is still "sending" and the reaper marks it uncertain,
// and a skipped one is still "claimed" and is decided again. Nothing is ever
// resent; the write that must be durable is Handover's, and it is.
func (o *Outbox) Settle(ctx context.Context, token string, done []Outcome) error {
	if len(done) == 0 {
		return nil
	}
	return postgres.InTx(ctx, o.db, func(tx *sqlx.Tx) error {
		if _, err := tx.ExecContext(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
			return fmt.Errorf("delivery: settle: %w", err)
		}
		var n int
		if err := tx.GetContext(ctx, &n, settleSQL, token, outcomes(done), 0, o.clock.Now(), o.wall()); err != nil {
			return fmt.Errorf("delivery: settle: %w", err)
		}
		return nil
	})
}

func outcomes(done []Outcome) []byte {
	if len(done) == 0 {
		return []byte("[]")
	}
	b, _ := json.Marshal(done)
	return b
}

// Retry puts a message the server did not accept back to scheduled, due
// again at retryAt.
func (o *Outbox) Retry(ctx context.Context, id int64, token string, retryAt time.Time, cause string) error {
	_, err := o.db.ExecContext(ctx, `
		UPDATE message SET status = 'scheduled', claim_token = NULL, claimed_at = NULL, enqueued_at = NULL,
			due_at = $3, last_error = $4, reason = 'retrying: ' || $4, updated_at = $5
		WHERE id = $1 AND claim_token = $2 AND status IN ('claimed', 'sending')`, id, token, retryAt, cause, o.clock.Now())
	if err != nil {
		return fmt.Errorf("delivery: retry: %w", err)
	}
	return nil
}

// Defer puts a claimed message back to scheduled, due at a later time, with
// the reason it waits (a frequency cap, say).
func (o *Outbox) Defer(ctx context.Context, id int64, token string, at time.Time, reason string) error {
	_, err := o.db.ExecContext(ctx, `
		UPDATE message SET status = 'scheduled', claim_token = NULL, claimed_at = NULL, enqueued_at = NULL,
			due_at = $3, reason = $4, updated_at = $5
		WHERE id = $1 AND claim_token = $2 AND status = 'claimed'`, id, token, at, reason, o.clock.Now())
	if err != nil {
		return fmt.Errorf("delivery: defer: %w", err)
	}
	return nil
}

// Release puts claimed messages that were never handed to SMTP back to
// scheduled (a worker shutting down, say).
func (o *Outbox) Release(ctx context.Context, ids []int64, token string) error {
	_, err := o.db.ExecContext(ctx, `
		UPDATE message SET status = 'scheduled', claim_token = NULL, claimed_at = NULL, enqueued_at = NULL, updated_at = $3
		WHERE id = ANY($1) AND claim_token = $2 AND status = 'claimed'`, pq.Array(ids), token, o.clock.Now())
	if err != nil {
		return fmt.Errorf("delivery: release: %w", err)
	}
	return nil
}

// Reap handles messages whose worker stopped answering: claimed ones whose
// lease expired go back to scheduled (they never reached SMTP); sending ones
// become uncertain (they may have been accepted) and are not resent.
func (o *Outbox) Reap(ctx context.Context, lease time.Duration) (released, uncertain int64, err error) {
	cutoff := o.wall().Add(-lease)
	now := o.clock.Now()
	res, err := o.db.ExecContext(ctx, `
		UPDATE message SET status = 'scheduled', claim_token = NULL, claimed_at = NULL, enqueued_at = NULL, updated_at = $2
		WHERE status = 'claimed' AND claimed_at < $1`, cutoff, now)
	if err != nil {
		return 0, 0, fmt.Errorf("delivery: reap: %w", err)
	}
	released, _ = res.RowsAffected()
	res, err = o.db.ExecContext(ctx, `
		UPDATE message SET status = 'uncertain', updated_at = $2,
			reason = 'the worker stopped while handing the message to SMTP; it may have been delivered',
			last_error = 'lease expired while sending'
		WHERE status = 'sending' AND claimed_at < $1`, cutoff, now)
	if err != nil {
		return 0, 0, fmt.Errorf("delivery: reap: %w", err)
	}
	uncertain, _ = res.RowsAffected()
	return released, uncertain, nil
}

// MessageView is a message as operators and CSMs see it.
type MessageView struct {
	ID        int64      `db:"id" json:"id"`
	Campaign  string     `db:"campaign" json:"campaign"`
	Version   int        `db:"version" json:"version"`
	Step      string     `db:"step_id" json:"step"`
	Contact   *string    `db:"contact" json:"contact_id,omitempty"`
	Email     string     `db:"email" json:"email,omitempty"`
	Channel   string     `db:"channel" json:"channel"`
	Status    string     `db:"status" json:"status"`
	Reason    string     `db:"reason" json:"reason,omitempty"`
	DueAt     time.Time  `db:"due_at" json:"due_at"`
	SentAt    *time.Time `db:"sent_at" json:"sent_at,omitempty"`
	Attempts  int        `db:"attempts" json:"attempts"`
	LastError string     `db:"last_error" json:"last_error,omitempty"`
	Test      bool       `db:"test" json:"test,omitempty"`
}

// viewColumns selects a message for people; $1 must be the clock's now. A
// scheduled message says why it is waiting.
const viewColumns = `m.id, c.name AS campaign, m.version, m.step_id, ct.external_id AS contact,
	coalesce(nullif(m.to_address, ''), ct.email, '') AS email, m.channel, m.status,
	CASE WHEN m.status = 'scheduled' AND m.reason = '' THEN
		CASE
		WHEN coalesce((SELECT paused FROM send_switch WHERE id = 1), false) THEN 'waiting: sending is paused'
		WHEN EXISTS (SELECT 1 FROM account_hold h WHERE h.account_id = ct.account_id AND h.released_at IS NULL
		             AND (h.until IS NULL OR h.until > $1)) THEN 'waiting: the account is on hold'
		WHEN c.status <> 'active' AND NOT m.test THEN 'waiting: the campaign is ' || c.status
		WHEN m.due_at > $1 THEN 'waiting: due at ' || to_char(m.due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC (the step''s wait and send window)'
		ELSE 'due: being sent' END
	ELSE m.reason END AS reason,
	m.due_at, m.sent_at, m.attempts, m.last_error, m.test`

// ByStatus lists messages in a status, oldest first, after the given id.
func (o *Outbox) ByStatus(ctx context.Context, status string, after int64, limit int) ([]MessageView, error) {
	out := []MessageView{}
	err := o.db.SelectContext(ctx, &out, `
		SELECT `+viewColumns+`
		FROM message m JOIN campaign c ON c.id = m.campaign_id LEFT JOIN contact ct ON ct.id = m.contact_id
		WHERE m.status = $2 AND m.id > $3 ORDER BY m.id LIMIT $4`, o.clock.Now(), status, after, limit)
	if err != nil {
		return nil, fmt.Errorf("delivery: by status: %w", err)
	}
	return out, nil
}

// OfContact lists every message to a contact, newest first: the answer to
// "why didn't X get Y?".
func (o *Outbox) OfContact(ctx context.Context, contactExternalID string, limit int) ([]MessageView, error) {
	out := []MessageView{}
	err := o.db.SelectContext(ctx, &out, `
		SELECT `+viewColumns+`
		FROM message m JOIN campaign c ON c.id = m.campaign_id JOIN contact ct ON ct.id = m.contact_id
		WHERE ct.external_id = $2 ORDER BY m.id DESC LIMIT $3`, o.clock.Now(), contactExternalID, limit)
	if err != nil {
		return nil, fmt.Errorf("delivery: messages of contact: %w", err)
	}
	return out, nil
}

// Resolve settles an uncertain message by hand: "resend" schedules it again
// now (the operator checked it was not delivered), "drop" marks it failed.
func (o *Outbox) Resolve(ctx context.Context, id int64, action string) (MessageView, error) {
	var q string
	switch action {
	case "resend":
		q = `UPDATE message SET status = 'scheduled', due_at = $2, claim_token = NULL, claimed_at = NULL,
			enqueued_at = NULL, reason = 'resent by an operator', updated_at = $2
			WHERE id = $1 AND status = 'uncertain' RETURNING id`
	case "drop":
		q = `UPDATE message SET status = 'failed', reason = 'dropped by an operator after an uncertain send', updated_at = $2
			WHERE id = $1 AND status = 'uncertain' RETURNING id`
	default:
		return MessageView{}, errs.E(errs.Invalid, "invalid_action", "action is resend or drop (got %q)", action).With("field", "action")
	}
	var got int64
	if err := o.db.GetContext(ctx, &got, q, id, o.clock.Now()); err != nil {
		return MessageView{}, postgres.NotFound(err, "delivery: resolve",
			errs.E(errs.Conflict, "not_uncertain", "message %d does not exist or is not uncertain", id))
	}
	var v MessageView
	err := o.db.GetContext(ctx, &v, `
		SELECT `+viewColumns+`
		FROM message m JOIN campaign c ON c.id = m.campaign_id LEFT JOIN contact ct ON ct.id = m.contact_id
		WHERE m.id = $2`, o.clock.Now(), id)
	if err != nil {
		return MessageView{}, fmt.Errorf("delivery: resolve: %w", err)
	}
	return v, nil
}

// StepStats counts one step's messages by status.
type StepStats struct {
	Step      string `db:"step_id" json:"step"`
	Scheduled int    `db:"scheduled" json:"scheduled"`
	Sent      int    `db:"sent" json:"sent"`
	Failed    int    `db:"failed" json:"failed"`
	Skipped   int    `db:"skipped" json:"skipped"`
	Uncertain int    `db:"uncertain" json:"uncertain"`
	Converted int    `db:"converted" json:"converted"`
	Opened    int    `db:"opened" json:"opened"`
	Clicked   int    `db:"clicked" json:"clicked"`
}

// Stats counts a campaign's messages per step (test sends excluded), and
// its enrollments by outcome.
func (o *Outbox) Stats(ctx context.Context, campaignID int64) ([]StepStats, map[string]int, error) {
	steps := []StepStats{}
	err := o.db.SelectContext(ctx, &steps, `
		SELECT m.step_id,
			count(*) FILTER (WHERE m.status IN ('scheduled', 'claimed', 'sending')) AS scheduled,
			count(*) FILTER (WHERE m.status = 'sent') AS sent,
			count(*) FILTER (WHERE m.status = 'failed') AS failed,
			count(*) FILTER (WHERE m.status = 'skipped') AS skipped,
			count(*) FILTER (WHERE m.status = 'uncertain') AS uncertain,
			count(*) FILTER (WHERE m.status = 'skipped' AND m.reason LIKE 'converted%') AS converted,
			count(*) FILTER (WHERE EXISTS (SELECT 1 FROM engagement_event e WHERE e.message_id = m.id AND e.kind = 'open' AND e.human)) AS opened,
			count(*) FILTER (WHERE EXISTS (SELECT 1 FROM engagement_event e WHERE e.message_id = m.id AND e.kind = 'click' AND e.human)) AS clicked
		FROM message m WHERE m.campaign_id = $1 AND NOT m.test
		GROUP BY m.step_id ORDER BY min(m.id)`, campaignID)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: stats: %w", err)
	}
	var rows []struct {
		Status string `db:"status"`
		N      int    `db:"n"`
	}
	if err := o.db.SelectContext(ctx, &rows, `SELECT status, count(*) AS n FROM enrollment WHERE campaign_id = $1 GROUP BY status`, campaignID); err != nil {
		return nil, nil, fmt.Errorf("delivery: stats: %w", err)
	}
	enr := map[string]int{"active": 0, "completed": 0, "exited": 0, "converted": 0}
	for _, r := range rows {
		enr[r.Status] = r.N
	}
	return steps, enr, nil
}
