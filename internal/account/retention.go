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
