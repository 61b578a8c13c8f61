package delivery

import (
	"context"
	"fmt"

	"github.com/jmoiron/sqlx"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
	"github.com/tendhq/tend/internal/token"
)

// Unsubscribes serves the signed unsubscribe links in every email.
type Unsubscribes struct {
	db     *sqlx.DB
	clock  clock.Clock
	signer *token.Signer
}

// NewUnsubscribes returns the unsubscribe service.
func NewUnsubscribes(db *sqlx.DB, clk clock.Clock, signer *token.Signer) *Unsubscribes {
	return &Unsubscribes{db: db, clock: clk, signer: signer}
}

// UnsubscribeInfo names what a token unsubscribes.
type UnsubscribeInfo struct {
	MessageID int64  `db:"id"`
	ContactID *int64 `db:"contact_id"`
	Email     string `db:"email"`
	Topic     string `db:"topic"`
	Test      bool   `db:"test"`
}

func invalidLink() *errs.Error {
	return errs.E(errs.NotFound, "invalid_link", "this link is not valid")
}

// Lookup checks a token and returns the contact and topic it is about. A
// forged or altered token is not found.
func (u *Unsubscribes) Lookup(ctx context.Context, tok string) (UnsubscribeInfo, error) {
	t, err := u.signer.ParseAs(token.KindUnsubscribe, tok)
	if err != nil {
		return UnsubscribeInfo{}, invalidLink()
	}
	var info UnsubscribeInfo
	err = u.db.GetContext(ctx, &info, `
		SELECT m.id, m.contact_id, coalesce(nullif(m.to_address, ''), ct.email, '') AS email, c.topic, m.test
		FROM message m JOIN campaign c ON c.id = m.campaign_id LEFT JOIN contact ct ON ct.id = m.contact_id
		WHERE m.id = $1`, t.MessageID)
	if err != nil {
		return UnsubscribeInfo{}, postgres.NotFound(err, "delivery: unsubscribe", invalidLink())
	}
	return info, nil
}

// Unsubscribe records the contact's unsubscribe from the message's topic (or
// from everything) and an unsubscribe engagement event. Repeating it is
// harmless. A test send's link unsubscribes nobody.
func (u *Unsubscribes) Unsubscribe(ctx context.Context, tok string, all bool) (UnsubscribeInfo, error) {
	info, err := u.Lookup(ctx, tok)
	if err != nil || info.Test || info.ContactID == nil {
		return info, err
	}
	topic := info.Topic
	if all {
		topic = "*"
	}
	now := u.clock.Now()
	err = postgres.InTx(ctx, u.db, func(tx *sqlx.Tx) error {
		res, err := tx.ExecContext(ctx, `
			INSERT INTO contact_unsubscribe (contact_id, topic, at) VALUES ($1, $2, $3)
			ON CONFLICT DO NOTHING`, *info.ContactID, topic, now)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil // already unsubscribed: counted once
		}
		_, err = tx.ExecContext(ctx, `
			INSERT INTO engagement_event (message_id, kind, at, metadata) VALUES ($1, 'unsubscribe', $2, jsonb_build_object('topic', $3::text))`,
			info.MessageID, now, topic)
		return err
	})
	if err != nil {
		return info, fmt.Errorf("delivery: unsubscribe: %w", err)
	}
	return info, nil
}
