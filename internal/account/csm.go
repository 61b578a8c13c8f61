package account

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// CSM is a Customer Success Manager: the person whose name, signature and
// reply-to sign the emails sent to their accounts.
type CSM struct {
	ID            int64     `db:"id" json:"-"`
	Email         string    `db:"email" json:"email"`
	Name          string    `db:"name" json:"name"`
	Title         string    `db:"title" json:"title"`
	SignatureHTML string    `db:"signature_html" json:"signature_html"`
	ReplyTo       string    `db:"reply_to" json:"reply_to"`
	Phone         string    `db:"phone" json:"phone"`
	CalendarURL   string    `db:"calendar_url" json:"calendar_url"`
	CreatedAt     time.Time `db:"created_at" json:"created_at"`
	UpdatedAt     time.Time `db:"updated_at" json:"updated_at"`
}

// CSMInput is one CSM to upsert by email; nil fields keep their stored value.
type CSMInput struct {
	Email         string  `json:"email"`
	Name          *string `json:"name,omitempty"`
	Title         *string `json:"title,omitempty"`
	SignatureHTML *string `json:"signature_html,omitempty"`
	ReplyTo       *string `json:"reply_to,omitempty"`
	Phone         *string `json:"phone,omitempty"`
	CalendarURL   *string `json:"calendar_url,omitempty"`
}

const maxSignatureLen = 20000

// UpsertCSMs creates or updates CSMs by email.
func (s *Store) UpsertCSMs(ctx context.Context, in []CSMInput) ([]CSM, error) {
	if err := checkBatchSize(len(in), "csms"); err != nil {
		return nil, err
	}
	var items errs.Items
	emails := make([]string, len(in))
	for i := range in {
		c := &in[i]
		c.Email = strings.ToLower(strings.TrimSpace(c.Email))
		emails[i] = c.Email
		checkEmail(&items, i, "email", &c.Email, true)
		checkEmail(&items, i, "reply_to", c.ReplyTo, false)
		for field, v := range map[string]*string{"name": c.Name, "title": c.Title, "phone": c.Phone, "calendar_url": c.CalendarURL} {
			checkText(&items, i, field, v)
		}
		if c.SignatureHTML != nil {
			checkString(&items, i, "signature_html", *c.SignatureHTML, maxSignatureLen)
		}
	}
	checkDuplicates(&items, "email", emails)
	if err := items.Err("csms"); err != nil {
		return nil, err
	}
	payload, err := json.Marshal(in)
	if err != nil {
		return nil, fmt.Errorf("account: upsert csms: %w", err)
	}
	out := []CSM{}
	err = s.db.SelectContext(ctx, &out, `
		WITH input AS (
			SELECT x.email,
			       coalesce(x.name, c.name, split_part(x.email, '@', 1)) AS name,
			       coalesce(x.title, c.title, '') AS title,
			       coalesce(x.signature_html, c.signature_html, '') AS signature_html,
			       coalesce(x.reply_to, c.reply_to, '') AS reply_to,
			       coalesce(x.phone, c.phone, '') AS phone,
			       coalesce(x.calendar_url, c.calendar_url, '') AS calendar_url
			FROM jsonb_to_recordset($1::jsonb) AS x(email text, name text, title text, signature_html text,
			       reply_to text, phone text, calendar_url text)
			LEFT JOIN csm c ON c.email = x.email
		)
		INSERT INTO csm AS c (email, name, title, signature_html, reply_to, phone, calendar_url, created_at, updated_at)
		SELECT email, name, title, signature_html, reply_to, phone, calendar_url, $2, $2 FROM input
		ON CONFLICT (email) DO UPDATE SET
			name = EXCLUDED.name, title = EXCLUDED.title, signature_html = EXCLUDED.signature_html,
			reply_to = EXCLUDED.reply_to, phone = EXCLUDED.phone, calendar_url = EXCLUDED.calendar_url,
			updated_at = EXCLUDED.updated_at
		RETURNING c.id, c.email, c.name, c.title, c.signature_html, c.reply_to, c.phone, c.calendar_url, c.created_at, c.updated_at`,
		payload, s.clock.Now())
	if err != nil {
		return nil, fmt.Errorf("account: upsert csms: %w", err)
	}
	return out, nil
}

// GetCSM returns a CSM by email.
func (s *Store) GetCSM(ctx context.Context, email string) (CSM, error) {
	var c CSM
	err := s.db.GetContext(ctx, &c, `
		SELECT id, email, name, title, signature_html, reply_to, phone, calendar_url, created_at, updated_at
		FROM csm WHERE email = lower($1)`, email)
	if err != nil {
		return CSM{}, postgres.NotFound(err, "account: get csm", errs.E(errs.NotFound, "csm_not_found", "no CSM with email %q", email))
	}
	return c, nil
}
