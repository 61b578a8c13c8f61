package health

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/account"
)

// Fresh is a score computed afresh, for tests to hold stored scores to.
type Fresh struct {
	Score, Change30d int
	Band             string
}

// FreshScores scores the accounts at now the way Refresh rescores them
// (their stored band as the previous one), writing nothing and ignoring
// every stored score's validity.
func (s *Service) FreshScores(ctx context.Context, now time.Time, profiles map[int64]*account.Profile) (map[int64]Fresh, error) {
	mv, err := s.Model(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]int64, 0, len(profiles))
	for id := range profiles {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var rows []stored
	if err := s.db.SelectContext(ctx, &rows, `
		SELECT account_id, score, band, change_30d, version, day, model_version, computed_at, valid_until
		FROM account_health WHERE account_id = ANY($1)`, pq.Array(ids)); err != nil {
		return nil, fmt.Errorf("fresh scores: %w", err)
	}
	prev := map[int64]stored{}
	for _, r := range rows {
		prev[r.AccountID] = r
	}
	out, err := s.score(ctx, s.db, mv.Model, now, ids, func(id int64) (*account.Profile, stored, bool) {
		r, ok := prev[id]
		return profiles[id], r, ok
	})
	if err != nil {
		return nil, err
	}
	fresh := make(map[int64]Fresh, len(out))
	for _, r := range out {
		fresh[r.AccountID] = Fresh{Score: r.Score, Change30d: r.Change30d, Band: r.Band}
	}
	return fresh, nil
}
