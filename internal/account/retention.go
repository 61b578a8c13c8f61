package account

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// PruneEvents deletes up to limit raw usage events received before cutoff,
// oldest first, and returns how many it deleted; fewer than limit means none
// is left (or the oldest left arrived after cutoff). Only the raw rows go:
// the daily rollups, user activity and last logins that profiles, segments
// and health read were written with them and stay (rollups and activity
// until PruneRollups takes them, past every profile window), so no profile
// changes.
// A message id whose event is pruned is no longer recognised as a repeat.
//
// Events are taken in id order, the order they arrived, through the primary
// key (the ids as an array, so that the delete too looks them up by key
// rather than joining them to a scan of the table): no index on received_at,
// which ingest would write for every event, and each batch reads only the
// rows it deletes. Received times come from the clocks of the API processes,
// so an event stamped a moment late by another process's clock stops a batch
// early; what is behind it is pruned on a later run.
func (s *Store) PruneEvents(ctx context.Context, cutoff time.Time, limit int) (int, error) {
	res, err := s.db.ExecContext(ctx, `
		DELETE FROM usage_event
		WHERE id = ANY(ARRAY(SELECT id FROM usage_event ORDER BY id LIMIT $2)) AND received_at < $1`, cutoff, limit)
	if err != nil {
		return 0, fmt.Errorf("account: prune events: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// MinRollupRetention is the shortest time daily rollups and user activity
// may be kept: the furthest health backfill (60 days back, the demo's) plus
// the 30-day usage windows, so that pruning never changes a profile's usage
// windows, computed now or as of a backfilled day. (A backfill's last login
// as of a day is looked up in rollups of any age: one older than the
// retention is no longer found.)
const MinRollupRetention = 90 * 24 * time.Hour

// PruneRollups deletes, for the first accounts accounts after the account
// id after, their daily usage rollups of days before cutoff's (UTC) day and
// the activity of their users last seen before cutoff: at most rows of each
// in one statement. It returns the account id the pass goes on after, how
// many rows it deleted, and whether the pass is through (it read fewer than
// accounts accounts, and deleted all it found). While rows remain for the
// batch's accounts (a backlog: retention just turned on), next is after, and
// the next call goes on with the same accounts. No profile's usage window
// reads what it deletes (see MinRollupRetention), so none changes, and
// nothing is marked changed.
//
// Rollups are found through their primary key, an index probe per account
// for its days before cutoff, and deleted by ctid; user activity, which has
// no index on last_seen_at, is read whole for the batch's accounts.
func (s *Store) PruneRollups(ctx context.Context, cutoff time.Time, after int64, accounts, rows int) (next int64, n int, through bool, err error) {
	if accounts < 1 || rows < 1 {
		return after, 0, false, fmt.Errorf("account: prune rollups: want at least 1 account and 1 row a batch, got %d and %d", accounts, rows)
	}
	if latest := s.clock.Now().Add(-MinRollupRetention); cutoff.After(latest) {
		return after, 0, false, fmt.Errorf("account: prune rollups: cutoff %s is within %s of now; profiles read those rollups",
			cutoff.UTC().Format(time.RFC3339), MinRollupRetention)
	}
	var out struct {
		Accounts int           `db:"accounts"`
		Last     sql.NullInt64 `db:"last"`
		Days     int           `db:"days"`
		Users    int           `db:"users"`
	}
	err = s.db.GetContext(ctx, &out, `
		WITH batch AS MATERIALIZED (
			SELECT coalesce(array_agg(id ORDER BY id), '{}') AS ids
			FROM (SELECT id FROM account WHERE id > $1 ORDER BY id LIMIT $4) a
		), old_days AS MATERIALIZED (
			SELECT ctid FROM usage_daily
			WHERE account_id = ANY((SELECT ids FROM batch)::bigint[]) AND day < $2::date LIMIT $5
		), old_users AS MATERIALIZED (
			SELECT ctid FROM account_user_activity
			WHERE account_id = ANY((SELECT ids FROM batch)::bigint[]) AND last_seen_at < $3 LIMIT $5
		), days AS (
			DELETE FROM usage_daily WHERE ctid = ANY(ARRAY(SELECT ctid FROM old_days)) RETURNING 1
		), users AS (
			DELETE FROM account_user_activity WHERE ctid = ANY(ARRAY(SELECT ctid FROM old_users)) RETURNING 1
		)
		SELECT cardinality(ids) AS accounts, ids[cardinality(ids)] AS last,
		       (SELECT count(*) FROM days) AS days, (SELECT count(*) FROM users) AS users
		FROM batch`, after, windowStart(cutoff, 1), cutoff, accounts, rows)
	if err != nil {
		return after, 0, false, fmt.Errorf("account: prune rollups: %w", err)
	}
	n = out.Days + out.Users
	switch {
	case out.Days == rows || out.Users == rows:
		return after, n, false, nil // perhaps more of these accounts' rows
	case out.Accounts < accounts:
		return 0, n, true, nil
	default:
		return out.Last.Int64, n, false, nil
	}
}
