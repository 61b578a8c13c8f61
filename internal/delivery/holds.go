package delivery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// heldOrPaused is true for a message that must not go out now: its
// account is on hold, or sending is switched off. $1 is the clock's now.
const heldOrPaused = `(
	EXISTS (SELECT 1 FROM contact hc JOIN account_hold h ON h.account_id = hc.account_id
	        WHERE hc.id = m.contact_id AND h.released_at IS NULL AND (h.until IS NULL OR h.until > $1)
	          AND NOT m.test)
	OR coalesce((SELECT paused FROM send_switch WHERE id = 1), false))`

// Hold is a stop on automated messages to an account's contacts.
type Hold struct {
	ID        int64      `db:"id" json:"id"`
	Account   string     `db:"account" json:"account_id"`
	Reason    string     `db:"reason" json:"reason"`
	Until     *time.Time `db:"until" json:"until,omitempty"`
	CreatedBy string     `db:"created_by" json:"created_by"`
	CreatedAt time.Time  `db:"created_at" json:"created_at"`
}

// PlaceHold stops automated messages to the account until released or
// until the given time. Messages due meanwhile wait (and are skipped once
// they are more than the max delay late).
func (o *Outbox) PlaceHold(ctx context.Context, accountExternalID, reason string, until *time.Time, actor string) (Hold, error) {
	reason = strings.TrimSpace(reason)
	if err := checkReason(reason, true); err != nil {
		return Hold{}, err
	}
	now := o.clock.Now()
	if until != nil && !until.After(now) {
		return Hold{}, errs.E(errs.Invalid, "invalid_until", "until must be in the future").With("field", "until")
	}
	var h Hold
	err := o.db.GetContext(ctx, &h, `
		INSERT INTO account_hold (account_id, reason, until, created_by, created_at)
		SELECT id, $2, $3, $4, $5 FROM account WHERE external_id = $1
		RETURNING id, $1::text AS account, reason, until, created_by, created_at`,
		accountExternalID, reason, until, actor, now)
	if err != nil {
		return Hold{}, postgres.NotFound(err, "delivery: hold", errs.E(errs.NotFound, "account_not_found", "no account with id %q", accountExternalID))
	}
	return h, nil
}

// maxReasonLen bounds the reason of a hold or of the send switch.
const maxReasonLen = 500

// checkReason checks the reason given for a hold (required) or for
// switching sending off or on.
func checkReason(reason string, required bool) error {
	p := postgres.BoundedTextProblem(reason, maxReasonLen)
	if required && reason == "" {
		p = "is required"
	}
	if p != "" {
		return errs.E(errs.Invalid, "invalid_reason", "the reason %s", p).With("field", "reason")
	}
	return nil
}

// ReleaseHolds ends the account's holds; it reports how many were active.
func (o *Outbox) ReleaseHolds(ctx context.Context, accountExternalID string) (int64, error) {
	var exists bool
	if err := o.db.GetContext(ctx, &exists, `SELECT EXISTS (SELECT 1 FROM account WHERE external_id = $1)`, accountExternalID); err != nil {
		return 0, fmt.Errorf("delivery: release: %w", err)
	}
	if !exists {
		return 0, errs.E(errs.NotFound, "account_not_found", "no account with id %q", accountExternalID)
	}
	res, err := o.db.ExecContext(ctx, `
		UPDATE account_hold h SET released_at = $2 FROM account a
		WHERE a.external_id = $1 AND h.account_id = a.id AND h.released_at IS NULL`, accountExternalID, o.clock.Now())
	if err != nil {
		return 0, fmt.Errorf("delivery: release: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// ActiveHold returns the account's hold in force now, if any.
func (o *Outbox) ActiveHold(ctx context.Context, accountID int64) (*Hold, error) {
	var h Hold
	err := o.db.GetContext(ctx, &h, `
		SELECT h.id, a.external_id AS account, h.reason, h.until, h.created_by, h.created_at
		FROM account_hold h JOIN account a ON a.id = h.account_id
		WHERE h.account_id = $1 AND h.released_at IS NULL AND (h.until IS NULL OR h.until > $2)
		ORDER BY h.id DESC LIMIT 1`, accountID, o.clock.Now())
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("delivery: hold: %w", err)
	}
	return &h, nil
}

// Switch is the global send switch.
type Switch struct {
	Paused    bool       `db:"paused" json:"paused"`
	Reason    string     `db:"reason" json:"reason,omitempty"`
	ChangedBy string     `db:"changed_by" json:"changed_by,omitempty"`
	ChangedAt *time.Time `db:"changed_at" json:"changed_at,omitempty"`
}

// SendSwitch returns the global send switch.
func (o *Outbox) SendSwitch(ctx context.Context) (Switch, error) {
	var s Switch
	err := o.db.GetContext(ctx, &s, `SELECT paused, reason, changed_by, changed_at FROM send_switch WHERE id = 1`)
	if errors.Is(err, sql.ErrNoRows) {
		return Switch{}, nil
	}
	if err != nil {
		return Switch{}, fmt.Errorf("delivery: switch: %w", err)
	}
	return s, nil
}

// SetSendSwitch pauses or resumes all sending. Pausing loses nothing: due
// messages wait, and go out when sending resumes.
func (o *Outbox) SetSendSwitch(ctx context.Context, paused bool, reason, actor string) (Switch, error) {
	if err := checkReason(reason, false); err != nil {
		return Switch{}, err
	}
	var s Switch
	err := o.db.GetContext(ctx, &s, `
		INSERT INTO send_switch (id, paused, reason, changed_by, changed_at) VALUES (1, $1, $2, $3, $4)
		ON CONFLICT (id) DO UPDATE SET paused = EXCLUDED.paused, reason = EXCLUDED.reason,
			changed_by = EXCLUDED.changed_by, changed_at = EXCLUDED.changed_at
		RETURNING paused, reason, changed_by, changed_at`, paused, reason, actor, o.clock.Now())
	if err != nil {
		return Switch{}, fmt.Errorf("delivery: switch: %w", err)
	}
	return s, nil
}

// ExpireHeld skips scheduled messages held back (by a hold) for longer than
// maxDelay past their due time, with a reason. The global switch never
// expires anything: pausing loses nothing.
func (o *Outbox) ExpireHeld(ctx context.Context, maxDelay time.Duration) (int64, error) {
	now := o.clock.Now()
	res, err := o.db.ExecContext(ctx, `
		UPDATE message m SET status = 'skipped', updated_at = $1,
			reason = 'held: the account was on hold for more than the maximum delay past the due time'
		WHERE m.status = 'scheduled' AND m.due_at < $2 AND NOT m.test
		  AND EXISTS (SELECT 1 FROM contact hc JOIN account_hold h ON h.account_id = hc.account_id
		              WHERE hc.id = m.contact_id AND h.released_at IS NULL AND (h.until IS NULL OR h.until > $1))`,
		now, now.Add(-maxDelay))
	if err != nil {
		return 0, fmt.Errorf("delivery: expire held: %w", err)
	}
	return res.RowsAffected()
}
