package account

import (
	"context"
	"fmt"
	"time"
)

// PruneEvents deletes up to limit raw usage events received before cutoff,
// oldest first, and returns how many it deleted; fewer than limit means none
// is left (or the oldest left arrived after cutoff). Only the raw rows go:
// the daily rollups, user activity and last logins that profiles, segments
// and health read were written with them and stay, so no profile changes.
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
// may be kept: twice the longest usage window (30 days), so that pruning
// never changes a profile, nor a health score backfilled 30 days back.
const MinRollupRetention = 60 * 24 * time.Hour

// PruneRollups deletes, for the first limit accounts after the account id
// after, their daily usage rollups of days before cutoff's (UTC) day and
// the activity of their users last seen before cutoff, in one statement.
// It returns the last account it read (0 once it read the last account:
// the pass is through) and how many rows it deleted. No profile reads what
// it deletes (see MinRollupRetention), so none changes, and nothing is
// marked changed.
//
// Rollups are found through their primary key, an index probe per account
// for its days before cutoff: each batch reads only the rows it deletes.
func (s *Store) PruneRollups(ctx context.Context, cutoff time.Time, after int64, limit int) (last int64, n int, err error) {
	if latest := s.clock.Now().Add(-MinRollupRetention); cutoff.After(latest) {
		return after, 0, fmt.Errorf("account: prune rollups: cutoff %s is within %s of now; profiles read those rollups",
			cutoff.UTC().Format(time.RFC3339), MinRollupRetention)
	}
	var out struct {
		Last int64 `db:"last"`
		N    int   `db:"n"`
	}
	err = s.db.GetContext(ctx, &out, `
		WITH batch AS MATERIALIZED (
			SELECT coalesce(array_agg(id ORDER BY id), '{}') AS ids
			FROM (SELECT id FROM account WHERE id > $1 ORDER BY id LIMIT $4) a
		), days AS (
			DELETE FROM usage_daily WHERE account_id = ANY((SELECT ids FROM batch)::bigint[]) AND day < $2::date RETURNING 1
		), users AS (
			DELETE FROM account_user_activity WHERE account_id = ANY((SELECT ids FROM batch)::bigint[]) AND last_seen_at < $3 RETURNING 1
		)
		SELECT CASE WHEN cardinality(ids) < $4 THEN 0 ELSE ids[cardinality(ids)] END AS last,
		       (SELECT count(*) FROM days) + (SELECT count(*) FROM users) AS n
		FROM batch`, after, windowStart(cutoff, 1), cutoff, limit)
	if err != nil {
		return after, 0, fmt.Errorf("account: prune rollups: %w", err)
	}
	return out.Last, out.N, nil
}
