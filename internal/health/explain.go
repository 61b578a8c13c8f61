package health

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/tendhq/tend/internal/account"
)

// Explanation is GET /v1/accounts/{id}/health: the score, each component's
// value, weight and contribution (the contributions add up to the score), and
// what changed since the previous score.
type Explanation struct {
	Score        int         `json:"score"`
	Band         string      `json:"band"`
	Change30d    int         `json:"change_30d"`
	ComputedAt   *time.Time  `json:"computed_at"` // nil: never scored, computed for this answer
	ModelVersion int64       `json:"model_version"`
	Components   []Component `json:"components"`
	Previous     *Previous   `json:"previous"` // nil: no earlier score
	Changes      []Change    `json:"changes"`
}

// Previous is the score before the current one.
type Previous struct {
	Score int       `json:"score"`
	Band  string    `json:"band"`
	At    time.Time `json:"at"`
}

// Change is a component whose contribution moved since the previous score.
type Change struct {
	Component string  `json:"component"`
	From      int     `json:"from"`
	To        int     `json:"to"`
	FromValue float64 `json:"from_value"`
	ToValue   float64 `json:"to_value"`
}

type historyRow struct {
	Score      int             `db:"score"`
	Band       string          `db:"band"`
	At         time.Time       `db:"at"`
	Components json.RawMessage `db:"components"`
}

// Explain explains an account's current score. An account never scored is
// scored for the answer (nothing is stored).
func (s *Service) Explain(ctx context.Context, accountID int64) (Explanation, error) {
	var cur struct {
		Score        int             `db:"score"`
		Band         string          `db:"band"`
		Change30d    int             `db:"change_30d"`
		Components   json.RawMessage `db:"components"`
		ComputedAt   time.Time       `db:"computed_at"`
		ModelVersion int64           `db:"model_version"`
	}
	err := s.db.GetContext(ctx, &cur, `
		SELECT score, band, change_30d, components, computed_at, model_version
		FROM account_health WHERE account_id = $1`, accountID)
	if errors.Is(err, sql.ErrNoRows) {
		return s.explainUnscored(ctx, accountID)
	}
	if err != nil {
		return Explanation{}, fmt.Errorf("health: explain: %w", err)
	}
	ex := Explanation{Score: cur.Score, Band: cur.Band, Change30d: cur.Change30d, ComputedAt: &cur.ComputedAt,
		ModelVersion: cur.ModelVersion, Changes: []Change{}}
	if err := json.Unmarshal(cur.Components, &ex.Components); err != nil {
		return Explanation{}, fmt.Errorf("health: explain: components: %w", err)
	}
	// The latest history row is the current score (or an older one with
	// the same score and band); the one before it is the previous score.
	var hist []historyRow
	if err := s.db.SelectContext(ctx, &hist, `
		SELECT score, band, at, components FROM health_history
		WHERE account_id = $1 ORDER BY at DESC, id DESC LIMIT 2`, accountID); err != nil {
		return Explanation{}, fmt.Errorf("health: explain: history: %w", err)
	}
	if len(hist) == 2 {
		p := hist[1]
		ex.Previous = &Previous{Score: p.Score, Band: p.Band, At: p.At}
		var before []Component
		if err := json.Unmarshal(p.Components, &before); err != nil {
			return Explanation{}, fmt.Errorf("health: explain: previous components: %w", err)
		}
		ex.Changes = changes(before, ex.Components)
	}
	return ex, nil
}

func changes(before, after []Component) []Change {
	was := map[string]Component{}
	for _, c := range before {
		was[c.Name] = c
	}
	out := []Change{}
	for _, c := range after {
		b := was[c.Name]
		if b.Contribution != c.Contribution || b.Value != c.Value {
			out = append(out, Change{Component: c.Name, From: b.Contribution, To: c.Contribution, FromValue: b.Value, ToValue: c.Value})
		}
	}
	return out
}

func (s *Service) explainUnscored(ctx context.Context, accountID int64) (Explanation, error) {
	mv, err := s.Model(ctx)
	if err != nil {
		return Explanation{}, err
	}
	now := s.clock.Now()
	profiles, err := account.Profiles(ctx, s.db, []int64{accountID}, now)
	if err != nil {
		return Explanation{}, err
	}
	out, err := s.score(ctx, s.db, mv.Model, now, []int64{accountID}, func(id int64) (*account.Profile, stored, bool) {
		return profiles[id], stored{}, false
	})
	if err != nil {
		return Explanation{}, err
	}
	if len(out) == 0 {
		return Explanation{}, fmt.Errorf("health: explain: account %d vanished", accountID)
	}
	r := out[0]
	return Explanation{Score: r.Score, Band: r.Band, Change30d: r.Change30d, ModelVersion: mv.Version,
		Components: r.Components, Changes: []Change{}}, nil
}
