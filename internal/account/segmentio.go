package account

import (
	"context"
	"fmt"
	"slices"

	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/postgres"
)

// LinkUsers records which account each Segment user belongs to (learnt from
// "group" calls), so later identify and track calls without a groupId find it.
// accounts maps user id to account external id; unknown accounts are skipped.
func (s *Store) LinkUsers(ctx context.Context, accounts map[string]string) error {
	if len(accounts) == 0 {
		return nil
	}
	users := make([]string, 0, len(accounts))
	accs := make([]string, 0, len(accounts))
	for u, a := range accounts {
		users = append(users, u)
		accs = append(accs, a)
	}
	_, err := s.db.ExecContext(ctx, `
		INSERT INTO segment_user_group (user_id, account_id, updated_at)
		SELECT x.user_id, a.id, $3
		FROM unnest($1::text[], $2::text[]) AS x(user_id, account_external_id)
		JOIN account a ON a.external_id = x.account_external_id
		ON CONFLICT (user_id) DO UPDATE SET account_id = EXCLUDED.account_id, updated_at = EXCLUDED.updated_at`,
		pq.Array(users), pq.Array(accs), s.clock.Now())
	if err != nil {
		return fmt.Errorf("account: link users: %w", err)
	}
	return nil
}

// UserAccounts returns the account external id linked to each known user id.
// A user id that is not text is never linked (see LinkUsers' callers).
func (s *Store) UserAccounts(ctx context.Context, users []string) (map[string]string, error) {
	rows := []struct {
		User    string `db:"user_id"`
		Account string `db:"external_id"`
	}{}
	users = slices.DeleteFunc(slices.Clone(users), func(u string) bool { return postgres.TextProblem(u) != "" })
	err := s.db.SelectContext(ctx, &rows, `
		SELECT g.user_id, a.external_id FROM segment_user_group g JOIN account a ON a.id = g.account_id
		WHERE g.user_id = ANY($1)`, pq.Array(users))
	if err != nil {
		return nil, fmt.Errorf("account: user accounts: %w", err)
	}
	m := make(map[string]string, len(rows))
	for _, r := range rows {
		m[r.User] = r.Account
	}
	return m, nil
}
