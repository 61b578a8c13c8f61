package delivery

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// DefaultNudgeExpiry is how long a nudge stays in the inbox when its step
// does not say.
const DefaultNudgeExpiry = 14 * 24 * time.Hour

// Nudge is an in-app message waiting in a contact's inbox.
type Nudge struct {
	ID        int64      `db:"id" json:"id"`
	Campaign  string     `db:"campaign" json:"campaign"`
	Step      string     `db:"step_id" json:"step"`
	Title     string     `db:"title" json:"title"`
	Body      string     `db:"body" json:"body"`
	CTALabel  string     `db:"cta_label" json:"cta_label,omitempty"`
	CTAURL    string     `db:"cta_url" json:"cta_url,omitempty"`
	Status    string     `db:"status" json:"status"`
	CreatedAt time.Time  `db:"created_at" json:"created_at"`
	ExpiresAt time.Time  `db:"expires_at" json:"expires_at"`
	ViewedAt  *time.Time `db:"viewed_at" json:"viewed_at,omitempty"`
}

// pendingNudge is a rendered nudge waiting to be delivered with its batch.
type pendingNudge struct {
	MessageID int64     `json:"message_id"`
	ContactID int64     `json:"contact_id"`
	Title     string    `json:"title"`
	Body      string    `json:"body"`
	CTALabel  string    `json:"cta_label"`
	CTAURL    string    `json:"cta_url"`
	ExpiresAt time.Time `json:"expires_at"`
}

// deliverNudges puts a batch's nudges in their contacts' inboxes and records
// their messages sent, in one statement: a nudge exists exactly when its
// message is sent, and only for messages still claimed under token. It
// returns how many it delivered.
func (o *Outbox) deliverNudges(ctx context.Context, token string, nudges []pendingNudge) (int, error) {
	if len(nudges) == 0 {
		return 0, nil
	}
	payload, err := json.Marshal(nudges)
	if err != nil {
		return 0, fmt.Errorf("delivery: nudges: %w", err)
	}
	var n int
	err = o.db.GetContext(ctx, &n, `
		WITH x AS (
			SELECT * FROM json_to_recordset($1::json) AS x(message_id bigint, contact_id bigint, title text,
			       body text, cta_label text, cta_url text, expires_at timestamptz)
		), sent AS (
			UPDATE message m SET status = 'sent', sent_at = $3, reason = '', attempts = m.attempts + 1, updated_at = $3
			FROM x WHERE m.id = x.message_id AND m.claim_token = $2 AND m.status = 'claimed'
			RETURNING m.id
		), inbox AS (
			INSERT INTO nudge (message_id, contact_id, title, body, cta_label, cta_url, status, created_at, expires_at)
			SELECT x.message_id, x.contact_id, x.title, x.body, x.cta_label, x.cta_url, 'pending', $3, x.expires_at
			FROM x JOIN sent ON sent.id = x.message_id
			ORDER BY x.message_id
			ON CONFLICT (message_id) DO NOTHING
		)
		SELECT count(*) FROM sent`, payload, token, o.clock.Now())
	if err != nil {
		return 0, fmt.Errorf("delivery: nudges: %w", err)
	}
	return n, nil
}

// Inbox lists a contact's pending, unexpired nudges, newest first.
func (o *Outbox) Inbox(ctx context.Context, contactExternalID string) ([]Nudge, error) {
	var exists bool
	if err := o.db.GetContext(ctx, &exists, `SELECT EXISTS (SELECT 1 FROM contact WHERE external_id = $1)`, contactExternalID); err != nil {
		return nil, fmt.Errorf("delivery: inbox: %w", err)
	}
	if !exists {
		return nil, errs.E(errs.NotFound, "contact_not_found", "no contact with id %q", contactExternalID)
	}
	out := []Nudge{}
	err := o.db.SelectContext(ctx, &out, `
		SELECT n.id, c.name AS campaign, m.step_id, n.title, n.body, n.cta_label, n.cta_url, n.status,
		       n.created_at, n.expires_at, n.viewed_at
		FROM nudge n JOIN contact ct ON ct.id = n.contact_id JOIN message m ON m.id = n.message_id
		JOIN campaign c ON c.id = m.campaign_id
		WHERE ct.external_id = $1 AND n.status = 'pending' AND n.expires_at > $2
		ORDER BY n.id DESC LIMIT 50`, contactExternalID, o.clock.Now())
	if err != nil {
		return nil, fmt.Errorf("delivery: inbox: %w", err)
	}
	return out, nil
}

// NudgeEvent records a view, click or dismissal. A click or dismissal takes
// the nudge out of the inbox; each kind counts once as engagement.
func (o *Outbox) NudgeEvent(ctx context.Context, id int64, kind string) (Nudge, error) {
	var status string
	switch kind {
	case "view":
	case "click":
		status = "clicked"
	case "dismiss":
		status = "dismissed"
	default:
		return Nudge{}, errs.E(errs.Invalid, "invalid_kind", "kind is view, click or dismiss (got %q)", kind).With("field", "kind")
	}
	now := o.clock.Now()
	var n Nudge
	err := postgres.InTx(ctx, o.db, func(tx *sqlx.Tx) error {
		var messageID int64
		var viewed *time.Time
		var cur string
		var expires time.Time
		err := tx.QueryRowxContext(ctx, `SELECT message_id, viewed_at, status, expires_at FROM nudge WHERE id = $1 FOR UPDATE`, id).
			Scan(&messageID, &viewed, &cur, &expires)
		if err != nil {
			return postgres.NotFound(err, "delivery: nudge event", errs.E(errs.NotFound, "nudge_not_found", "no nudge %d", id))
		}
		if status != "" && cur != "pending" {
			return errs.E(errs.Conflict, "nudge_closed", "nudge %d was already %s", id, cur)
		}
		if !expires.After(now) && cur == "pending" {
			return errs.E(errs.Conflict, "nudge_expired", "nudge %d expired at %s", id, expires.Format(time.RFC3339))
		}
		first := (kind == "view" && viewed == nil) || status != ""
		if _, err := tx.ExecContext(ctx, `
			UPDATE nudge SET viewed_at = coalesce(viewed_at, $2),
				status = CASE WHEN $3 = '' THEN status ELSE $3 END,
				acted_at = CASE WHEN $3 = '' THEN acted_at ELSE $2 END
			WHERE id = $1`, id, now, status); err != nil {
			return fmt.Errorf("delivery: nudge event: %w", err)
		}
		if first {
			if _, err := tx.ExecContext(ctx, `INSERT INTO engagement_event (message_id, kind, at) VALUES ($1, $2, $3)`,
				messageID, "nudge_"+kind, now); err != nil {
				return fmt.Errorf("delivery: nudge event: %w", err)
			}
		}
		return tx.GetContext(ctx, &n, `
			SELECT n.id, c.name AS campaign, m.step_id, n.title, n.body, n.cta_label, n.cta_url, n.status,
			       n.created_at, n.expires_at, n.viewed_at
			FROM nudge n JOIN message m ON m.id = n.message_id JOIN campaign c ON c.id = m.campaign_id
			WHERE n.id = $1`, id)
	})
	return n, err
}
