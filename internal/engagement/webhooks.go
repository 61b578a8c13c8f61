package engagement

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/mail"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// VerifySignature checks X-Tend-Signature: "sha256=" and the hex HMAC-SHA256
// of the raw body with the webhook secret.
func VerifySignature(secret, body []byte, header string) error {
	sig, ok := strings.CutPrefix(strings.TrimSpace(header), "sha256=")
	got, err := hex.DecodeString(sig)
	if !ok || err != nil {
		return errs.E(errs.Unauthorized, "invalid_signature", "send X-Tend-Signature: sha256=<hex HMAC-SHA256 of the body with TEND_WEBHOOK_SECRET>")
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return errs.E(errs.Unauthorized, "invalid_signature", "the signature does not match the body")
	}
	return nil
}

// Bounce is one bounce or complaint, as the generic webhook takes it.
type Bounce struct {
	Type      string `json:"type"`                 // hard, soft or complaint
	Email     string `json:"email"`                // the recipient that bounced
	MessageID string `json:"message_id,omitempty"` // the bounced mail's Message-ID, when known
	Reason    string `json:"reason,omitempty"`
	ID        string `json:"id,omitempty"` // the provider's event id, for de-duplication
}

// tendMessageID finds an outbox id in a Message-ID such as <tend.42@host>.
var tendMessageID = regexp.MustCompile(`<?tend\.(\d+)@[^>\s]+>?`)

func outboxID(ids ...string) int64 {
	for _, s := range ids {
		if m := tendMessageID.FindStringSubmatch(s); m != nil {
			id, _ := strconv.ParseInt(m[1], 10, 64)
			return id
		}
	}
	return 0
}

// Bounces records bounces: hard bounces and complaints suppress the address
// (no more mail to it), soft bounces are recorded only. The whole batch is
// checked first; a bad item refuses it.
func (t *Tracker) Bounces(ctx context.Context, in []Bounce) error {
	var items errs.Items
	for i, b := range in {
		if b.Type != "hard" && b.Type != "soft" && b.Type != "complaint" {
			items.Add(i, "type", "is hard, soft or complaint (got %q)", b.Type)
		}
		if a, err := mail.ParseAddress(b.Email); err != nil || a.Address != b.Email {
			items.Add(i, "email", "%q is not an email address", b.Email)
		}
	}
	if len(in) == 0 {
		return errs.E(errs.Invalid, "empty_batch", "no bounces given")
	}
	if err := items.Err("bounces"); err != nil {
		return err
	}
	// Suppressions, and engagement for the bounces that name one of our
	// messages: two statements for the whole batch, in its order. The
	// reason and the event id are the provider's (the reason often quotes
	// a remote server): cleaned, not refused, or the provider would send
	// the batch again forever.
	var emails, why []string
	var msgs pq.Int64Array
	var kinds, exts, types, reasons pq.StringArray
	for _, b := range in {
		reason := postgres.CleanText(b.Reason)
		if b.Type != "soft" {
			emails = append(emails, b.Email)
			why = append(why, b.Type+" bounce: "+reason)
		}
		if id := outboxID(b.MessageID); id > 0 {
			msgs = append(msgs, id)
			kinds = append(kinds, kindOfBounce(b.Type))
			exts = append(exts, postgres.CleanText(b.ID))
			types = append(types, b.Type)
			reasons = append(reasons, reason)
		}
	}
	now := t.clock.Now()
	return postgres.InTx(ctx, t.db, func(tx *sqlx.Tx) error {
		if err := account.Suppress(ctx, tx, emails, why, now); err != nil {
			return fmt.Errorf("engagement: bounce: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO engagement_event (message_id, kind, at, external_id, metadata)
			SELECT m.id, x.kind, $6, nullif(x.ext, ''), jsonb_build_object('type', x.type, 'reason', x.reason)
			FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
			     WITH ORDINALITY AS x(id, kind, ext, type, reason, i)
			JOIN message m ON m.id = x.id
			ORDER BY x.i
			ON CONFLICT DO NOTHING`, msgs, kinds, exts, types, reasons, now); err != nil {
			return fmt.Errorf("engagement: bounce: %w", err)
		}
		return nil
	})
}

func kindOfBounce(t string) string {
	if t == "complaint" {
		return "complaint"
	}
	return "bounce"
}

// Reply is an inbound reply to one of Tend's messages.
type Reply struct {
	To         []string `json:"to"`
	From       string   `json:"from"`
	Subject    string   `json:"subject"`
	Text       string   `json:"text"`
	MessageID  string   `json:"message_id,omitempty"` // the reply's own Message-ID
	InReplyTo  string   `json:"in_reply_to,omitempty"`
	References []string `json:"references,omitempty"`
}

// Forwarder sends a reply on to the CSM's own mailbox.
type Forwarder interface {
	ForwardReply(ctx context.Context, to, replyTo, subject, text string) error
}

// ReplyResult says what a reply was matched to.
type ReplyResult struct {
	MessageID   int64  `json:"message_id"`
	ForwardedTo string `json:"forwarded_to,omitempty"`
	Duplicate   bool   `json:"duplicate,omitempty"`
}

// RecordReply matches a reply to its message, by the signed token in a
// reply+TOKEN@ address or by In-Reply-To/References, records it once (by its
// Message-ID), and forwards it to the account's CSM so the conversation
// stays human.
func (t *Tracker) RecordReply(ctx context.Context, r Reply, fwd Forwarder) (ReplyResult, error) {
	from, err := mail.ParseAddress(r.From)
	if err != nil {
		return ReplyResult{}, errs.E(errs.Invalid, "invalid_reply", "from %q is not an address", r.From).With("field", "from")
	}
	var id int64
	for _, to := range r.To {
		a, err := mail.ParseAddress(to)
		if err != nil {
			continue
		}
		local, _, _ := strings.Cut(a.Address, "@")
		if tok, ok := strings.CutPrefix(local, "reply+"); ok {
			if parsed, err := t.signer.ParseReply(tok); err == nil {
				id = parsed.MessageID
				break
			}
		}
	}
	if id == 0 {
		id = outboxID(append([]string{r.InReplyTo}, r.References...)...)
	}
	if id == 0 {
		return ReplyResult{}, errs.E(errs.NotFound, "unmatched_reply", "the reply names none of Tend's messages (no reply+ token, no matching In-Reply-To or References)")
	}
	var csm struct {
		Name    *string `db:"name"`
		Email   *string `db:"email"`
		ReplyTo *string `db:"reply_to"`
		Account *int64  `db:"account_id"`
	}
	err = t.db.GetContext(ctx, &csm, `
		SELECT c.name, c.email, c.reply_to, ct.account_id FROM message m
		LEFT JOIN contact ct ON ct.id = m.contact_id LEFT JOIN account a ON a.id = ct.account_id
		LEFT JOIN csm c ON c.id = a.csm_id WHERE m.id = $1`, id)
	if err != nil {
		return ReplyResult{}, postgres.NotFound(err, "engagement: reply", errs.E(errs.NotFound, "unmatched_reply", "no message %d", id))
	}
	res := ReplyResult{MessageID: id}
	now := t.clock.Now()
	// The subject, text and Message-ID are the outside sender's: cleaned,
	// not refused, or the provider would post the reply again forever.
	subject, body := postgres.CleanText(r.Subject), postgres.CleanText(r.Text)
	var ext any
	if mid := postgres.CleanText(r.MessageID); mid != "" {
		ext = mid
	}
	// The reply is recorded and forwarded in one transaction that commits
	// only after the forward succeeded: a failed forward records nothing, so
	// the provider's retry forwards again; a retry of a forwarded reply is a
	// duplicate (by its Message-ID) and does nothing.
	err = postgres.InTx(ctx, t.db, func(tx *sqlx.Tx) error {
		result, err := tx.ExecContext(ctx, `
			INSERT INTO engagement_event (message_id, kind, at, external_id, metadata)
			VALUES ($1, 'reply', $2, $3, jsonb_build_object('from', $4::text, 'subject', $5::text))
			ON CONFLICT DO NOTHING`, id, now, ext, from.Address, subject)
		if err != nil {
			return fmt.Errorf("engagement: reply: %w", err)
		}
		if n, _ := result.RowsAffected(); n == 0 {
			res.Duplicate = true
			return nil
		}
		if csm.Account != nil {
			if err := account.MarkChanged(ctx, tx, []int64{*csm.Account}); err != nil {
				return fmt.Errorf("engagement: reply: %w", err)
			}
		}
		if csm.Email == nil || fwd == nil {
			return nil // no CSM: recorded, nobody to forward to
		}
		to := *csm.Email
		if csm.ReplyTo != nil && *csm.ReplyTo != "" {
			to = *csm.ReplyTo
		}
		if subject == "" {
			subject = "(no subject)"
		}
		text := fmt.Sprintf("%s replied on %s:\n\n%s", from.String(), now.Format(time.RFC1123), body)
		if err := fwd.ForwardReply(ctx, (&mail.Address{Name: deref(csm.Name), Address: to}).String(), from.String(), subject, text); err != nil {
			return fmt.Errorf("engagement: forward reply: %w", err)
		}
		res.ForwardedTo = to
		return nil
	})
	return res, err
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
