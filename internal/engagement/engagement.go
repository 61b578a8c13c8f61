// Package engagement records what people do with Tend's messages: opens and
// clicks through the signed tracking links in every email. Activity that is
// probably a machine — a mail privacy proxy prefetching images, a link
// scanner following every link the moment a message arrives — is recorded
// but flagged, and does not count as human engagement.
package engagement

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
	"github.com/tendhq/tend/internal/token"
)

// ScannerWindow: a click this soon after the message was sent is taken for
// a link scanner (security gateways follow links on delivery).
const ScannerWindow = 10 * time.Second

// PrefetchWindow: an open this soon after sending with a bare user agent is
// taken for a privacy proxy's prefetch rather than a person.
const PrefetchWindow = 60 * time.Second

// Tracker records opens and clicks from signed tokens.
type Tracker struct {
	db     *sqlx.DB
	clock  clock.Clock
	signer *token.Signer
}

// NewTracker returns a tracker.
func NewTracker(db *sqlx.DB, clk clock.Clock, signer *token.Signer) *Tracker {
	return &Tracker{db: db, clock: clk, signer: signer}
}

// Hit is one request to a tracking link.
type Hit struct {
	Token     string
	UserAgent string
	IP        string
}

func invalidLink() *errs.Error {
	return errs.E(errs.NotFound, "invalid_link", "this link is not valid")
}

// machineOpen tells a privacy proxy's prefetch from a person: Apple Mail
// Privacy Protection fetches images through its proxy soon after delivery
// with a bare "Mozilla/5.0"; Yahoo and others name their proxies.
func machineOpen(ua string, sinceSent time.Duration) bool {
	ua = strings.ToLower(strings.TrimSpace(ua))
	for _, p := range []string{"yahoomailproxy", "mail-privacy"} {
		if strings.Contains(ua, p) {
			return true
		}
	}
	return sinceSent >= 0 && sinceSent < PrefetchWindow && ua == "mozilla/5.0"
}

// machineClick tells a link scanner from a person: scanners name themselves
// or follow links within seconds of delivery.
func machineClick(ua string, sinceSent time.Duration) bool {
	ua = strings.ToLower(ua)
	for _, p := range []string{"bot", "scanner", "safelinks", "barracuda", "mimecast", "proofpoint", "curl/", "python-requests"} {
		if strings.Contains(ua, p) {
			return true
		}
	}
	return sinceSent >= 0 && sinceSent < ScannerWindow
}

// Open records an open from the pixel. A forged or altered token records
// nothing and is not found.
func (t *Tracker) Open(ctx context.Context, h Hit) error {
	tok, err := t.signer.ParseAs(token.KindOpen, h.Token)
	if err != nil {
		return invalidLink()
	}
	return t.record(ctx, tok.MessageID, "open", h, machineOpen)
}

// Click records a click and returns the URL signed into the link: the only
// place it may redirect to.
func (t *Tracker) Click(ctx context.Context, h Hit) (string, error) {
	tok, err := t.signer.ParseAs(token.KindClick, h.Token)
	if err != nil {
		return "", invalidLink()
	}
	if err := t.record(ctx, tok.MessageID, "click", h, machineClick); err != nil {
		return "", err
	}
	return tok.URL, nil
}

// record writes the event, flagged human or not. A human event marks the
// account changed, since engagement feeds its profile. Test sends record
// nothing.
func (t *Tracker) record(ctx context.Context, messageID int64, kind string, h Hit, machine func(string, time.Duration) bool) error {
	now := t.clock.Now()
	return postgres.InTx(ctx, t.db, func(tx *sqlx.Tx) error {
		var m struct {
			SentAt    *time.Time `db:"sent_at"`
			Test      bool       `db:"test"`
			AccountID *int64     `db:"account_id"`
		}
		err := tx.GetContext(ctx, &m, `
			SELECT m.sent_at, m.test, ct.account_id FROM message m LEFT JOIN contact ct ON ct.id = m.contact_id
			WHERE m.id = $1`, messageID)
		if err != nil {
			return postgres.NotFound(err, "engagement: record", invalidLink())
		}
		if m.Test {
			return nil
		}
		since := time.Duration(-1)
		if m.SentAt != nil {
			since = now.Sub(*m.SentAt)
		}
		human := !machine(h.UserAgent, since)
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO engagement_event (message_id, kind, human, at, metadata)
			VALUES ($1, $2, $3, $4, jsonb_build_object('user_agent', $5::text, 'ip', $6::text))`,
			messageID, kind, human, now, truncate(h.UserAgent, 300), h.IP); err != nil {
			return fmt.Errorf("engagement: record: %w", err)
		}
		if m.AccountID != nil && human {
			if _, err := tx.ExecContext(ctx, `UPDATE account SET change_version = change_version + 1 WHERE id = $1`, *m.AccountID); err != nil {
				return fmt.Errorf("engagement: record: %w", err)
			}
		}
		return nil
	})
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
