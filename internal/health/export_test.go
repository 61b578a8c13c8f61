package health

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

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
	ids := slices.Sorted(maps.Keys(profiles))
	prev, err := storedScores(ctx, s.db, ids)
	if err != nil {
		return nil, fmt.Errorf("fresh scores: %w", err)
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
