package account

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/postgres"
)

// Contact is a person at an account.
type Contact struct {
	ID         int64           `db:"id" json:"-"`
	ExternalID string          `db:"external_id" json:"id"`
	AccountID  string          `db:"account_external_id" json:"account_id"`
	Email      string          `db:"email" json:"email"`
	Name       string          `db:"name" json:"name"`
	Role       string          `db:"role" json:"role"`
	Timezone   string          `db:"timezone" json:"timezone"`
	Locale     string          `db:"locale" json:"locale"`
	Traits     json.RawMessage `db:"traits" json:"traits"`
	CreatedAt  time.Time       `db:"created_at" json:"created_at"`
	UpdatedAt  time.Time       `db:"updated_at" json:"updated_at"`
}

// ContactInput is one contact to upsert; nil fields keep their stored value.
// AccountID is required for a new contact and may move an existing one.
type ContactInput struct {
	ID        string          `json:"id"`
	AccountID string          `json:"account_id"`
	Email     *string         `json:"email,omitempty"`
	Name      *string         `json:"name,omitempty"`
	Role      *string         `json:"role,omitempty"`
	Timezone  *string         `json:"timezone,omitempty"`
	Locale    *string         `json:"locale,omitempty"`
	Traits    json.RawMessage `json:"traits,omitempty"`

	accountID int64 // resolved internal id
}

// UpsertContacts creates or updates contacts by their external id. Every
// contact's account must exist.
func (s *Store) UpsertContacts(ctx context.Context, in []ContactInput) error {
	if err := checkBatchSize(len(in), "contacts"); err != nil {
		return err
	}
	var items errs.Items
	ids := make([]string, len(in))
	accIDs := make([]string, len(in))
	for i := range in {
		c := &in[i]
		ids[i], accIDs[i] = c.ID, c.AccountID
		checkID(&items, i, "id", c.ID)
		checkID(&items, i, "account_id", c.AccountID)
		if c.Email != nil {
			c.Email = ptr(strings.ToLower(strings.TrimSpace(*c.Email)))
		}
		checkEmail(&items, i, "email", c.Email, false)
		for field, v := range map[string]*string{"name": c.Name, "role": c.Role, "locale": c.Locale} {
			checkText(&items, i, field, v)
		}
		checkTimezone(&items, i, "timezone", c.Timezone)
		checkObject(&items, i, "traits", c.Traits)
	}
	checkDuplicates(&items, "id", ids)
	return postgres.InTx(ctx, s.db, func(tx *sqlx.Tx) error {
		known, err := s.ResolveIDs(ctx, tx, accIDs)
		if err != nil {
			return err
		}
		for i := range in {
			id := known[in[i].AccountID]
			if unknownAccount(known, in[i].AccountID) {
				items.Add(i, "account_id", "no account %q; create it with POST /v1/accounts first", in[i].AccountID)
			}
			in[i].accountID = id
		}
		if err := items.Err("contacts"); err != nil {
			return err
		}
		if err := lockKeys(ctx, tx, "contact:", ids); err != nil {
			return fmt.Errorf("account: upsert contacts: lock: %w", err)
		}
		type row struct {
			ContactInput
			AccountID int64 `json:"account_id"`
		}
		rows := make([]row, len(in))
		for i, c := range in {
			rows[i] = row{ContactInput: c, AccountID: c.accountID}
		}
		payload, err := json.Marshal(rows)
		if err != nil {
			return fmt.Errorf("account: upsert contacts: %w", err)
		}
		_, err = tx.ExecContext(ctx, `
			WITH input AS (
				SELECT x.ordinality AS ord, x.id AS external_id, x.account_id,
				       coalesce(x.email, c.email, '') AS email,
				       coalesce(x.name, c.name, '') AS name,
				       coalesce(x.role, c.role, '') AS role,
				       coalesce(x.timezone, c.timezone, '') AS timezone,
				       coalesce(x.locale, c.locale, '') AS locale,
				       jsonb_strip_nulls(coalesce(c.traits, '{}') || coalesce(x.traits, '{}')) AS traits
				FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (id text, account_id bigint, email text, name text,
				       role text, timezone text, locale text, traits jsonb)) WITH ORDINALITY AS x
				LEFT JOIN contact c ON c.external_id = x.id
			)
			INSERT INTO contact AS c (external_id, account_id, email, name, role, timezone, locale, traits, created_at, updated_at)
			SELECT external_id, account_id, email, name, role, timezone, locale, traits, $2, $2 FROM input
			ORDER BY ord -- ids follow the order items were sent in
			ON CONFLICT (external_id) DO UPDATE SET
				account_id = EXCLUDED.account_id, email = EXCLUDED.email, name = EXCLUDED.name,
				role = EXCLUDED.role, timezone = EXCLUDED.timezone, locale = EXCLUDED.locale,
				traits = EXCLUDED.traits, updated_at = EXCLUDED.updated_at
			WHERE (c.account_id, c.email, c.name, c.role, c.timezone, c.locale, c.traits)
			      IS DISTINCT FROM (EXCLUDED.account_id, EXCLUDED.email, EXCLUDED.name, EXCLUDED.role,
			                        EXCLUDED.timezone, EXCLUDED.locale, EXCLUDED.traits)`,
			payload, s.clock.Now())
		if err != nil {
			return fmt.Errorf("account: upsert contacts: %w", err)
		}
		return nil
	})
}

// GetContact returns a contact by its external id.
func (s *Store) GetContact(ctx context.Context, externalID string) (Contact, error) {
	var c Contact
	err := s.db.GetContext(ctx, &c, `
		SELECT c.id, c.external_id, a.external_id AS account_external_id, c.email, c.name, c.role,
		       c.timezone, c.locale, c.traits, c.created_at, c.updated_at
		FROM contact c JOIN account a ON a.id = c.account_id
		WHERE c.external_id = $1`, externalID)
	if err != nil {
		return Contact{}, postgres.NotFound(err, "account: get contact", errs.E(errs.NotFound, "contact_not_found", "no contact with id %q", externalID))
	}
	return c, nil
}

// ContactsOf lists an account's contacts.
func (s *Store) ContactsOf(ctx context.Context, accountID int64) ([]Contact, error) {
	out := []Contact{}
	err := s.db.SelectContext(ctx, &out, `
		SELECT c.id, c.external_id, a.external_id AS account_external_id, c.email, c.name, c.role,
		       c.timezone, c.locale, c.traits, c.created_at, c.updated_at
		FROM contact c JOIN account a ON a.id = c.account_id
		WHERE c.account_id = $1 ORDER BY c.id`, accountID)
	if err != nil {
		return nil, fmt.Errorf("account: contacts of: %w", err)
	}
	return out, nil
}
