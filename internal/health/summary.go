package health

import (
	"context"
	"fmt"

	"github.com/tendhq/tend/internal/account"
)

// Summary is GET /v1/health/summary.
type Summary struct {
	Accounts     int                 `json:"accounts"`
	Unscored     int                 `json:"unscored"` // counted at the starting score until scored
	AverageScore float64             `json:"average_score"`
	Bands        map[string]BandStat `json:"bands"`
	Distribution []Bucket            `json:"distribution"`
	AtRisk       Tail                `json:"at_risk"`
	Advocates    Tail                `json:"advocates"`
	Change30d    Change30d           `json:"change_30d"`
	ModelVersion int64               `json:"model_version"`
	Thresholds   Bands               `json:"thresholds"`
}

// BandStat counts the accounts of a band and their MRR.
type BandStat struct {
	Accounts int     `json:"accounts"`
	MRR      float64 `json:"mrr"`
}

// Bucket is a range of scores (From to To inclusive) and its accounts.
type Bucket struct {
	From     int `json:"from"`
	To       int `json:"to"`
	Accounts int `json:"accounts"`
}

// Tail is a band at one end: its size, its MRR and its largest accounts.
type Tail struct {
	Accounts int           `json:"accounts"`
	MRR      float64       `json:"mrr"` // for at risk: the revenue at risk
	Top      []TailAccount `json:"top"`
}

// TailAccount is one account of a tail.
type TailAccount struct {
	ID        string  `db:"external_id" json:"id"`
	Name      string  `db:"name" json:"name"`
	Score     int     `db:"score" json:"score"`
	Change30d int     `db:"change_30d" json:"change_30d"`
	MRR       float64 `db:"mrr" json:"mrr"`
	NPS       int     `db:"nps" json:"nps"`
	CSM       string  `db:"csm" json:"csm"`
}

// Change30d compares the scores now with those 30 days ago.
type Change30d struct {
	// AverageScoreThen is the average score 30 days ago over the accounts
	// scored then (ScoredThen of them).
	AverageScoreThen float64 `json:"average_score_then"`
	ScoredThen       int     `json:"scored_then"`
	AtRiskThen       int     `json:"at_risk_then"`
	AdvocatesThen    int     `json:"advocates_then"`
	Improved         int     `json:"improved"` // accounts whose score rose
	Declined         int     `json:"declined"` // accounts whose score fell
}

// Summary describes the health of every account: one aggregate query over
// the current scores and one over the history, whatever the number of
// accounts, plus the ten largest accounts at each end.
func (s *Service) Summary(ctx context.Context) (Summary, error) {
	mv, err := s.Model(ctx)
	if err != nil {
		return Summary{}, err
	}
	m := mv.Model
	startBand := m.rawBand(m.StartingScore, -1)
	var rows []struct {
		Band     string  `db:"band"`
		Bucket   int     `db:"bucket"`
		Accounts int     `db:"accounts"`
		Unscored int     `db:"unscored"`
		MRR      float64 `db:"mrr"`
		ScoreSum int64   `db:"score_sum"`
		Improved int     `db:"improved"`
		Declined int     `db:"declined"`
	}
	err = s.db.SelectContext(ctx, &rows, `
		SELECT coalesce(h.band, $1) AS band, least(coalesce(h.score, $2) / 10, 9) AS bucket,
		       count(*) AS accounts, count(*) FILTER (WHERE h.account_id IS NULL) AS unscored,
		       coalesce(sum(a.mrr), 0) AS mrr, coalesce(sum(coalesce(h.score, $2)), 0) AS score_sum,
		       count(*) FILTER (WHERE h.change_30d > 0) AS improved,
		       count(*) FILTER (WHERE h.change_30d < 0) AS declined
		FROM account a LEFT JOIN account_health h ON h.account_id = a.id
		GROUP BY 1, 2`, startBand, m.StartingScore)
	if err != nil {
		return Summary{}, fmt.Errorf("health: summary: %w", err)
	}
	sum := Summary{Bands: map[string]BandStat{}, ModelVersion: mv.Version, Thresholds: m.Bands}
	for b := 0; b < 10; b++ {
		to := b*10 + 9
		if b == 9 {
			to = 100
		}
		sum.Distribution = append(sum.Distribution, Bucket{From: b * 10, To: to})
	}
	for _, band := range []string{account.BandAtRisk, account.BandNeutral, account.BandHealthy, account.BandAdvocate} {
		sum.Bands[band] = BandStat{}
	}
	var total int64
	for _, r := range rows {
		sum.Accounts += r.Accounts
		sum.Unscored += r.Unscored
		total += r.ScoreSum
		sum.Distribution[r.Bucket].Accounts += r.Accounts
		bs := sum.Bands[r.Band]
		bs.Accounts += r.Accounts
		bs.MRR += r.MRR
		sum.Bands[r.Band] = bs
		sum.Change30d.Improved += r.Improved
		sum.Change30d.Declined += r.Declined
	}
	if sum.Accounts > 0 {
		sum.AverageScore = round2(float64(total) / float64(sum.Accounts))
	}
	sum.AtRisk = Tail{Accounts: sum.Bands[account.BandAtRisk].Accounts, MRR: sum.Bands[account.BandAtRisk].MRR}
	sum.Advocates = Tail{Accounts: sum.Bands[account.BandAdvocate].Accounts, MRR: sum.Bands[account.BandAdvocate].MRR}
	if sum.AtRisk.Top, err = s.top(ctx, account.BandAtRisk, "a.mrr DESC, h.score"); err != nil {
		return Summary{}, err
	}
	if sum.Advocates.Top, err = s.top(ctx, account.BandAdvocate, "h.score DESC, a.mrr DESC"); err != nil {
		return Summary{}, err
	}
	var then struct {
		Scored    int     `db:"scored"`
		Average   float64 `db:"average"`
		AtRisk    int     `db:"at_risk"`
		Advocates int     `db:"advocates"`
	}
	err = s.db.GetContext(ctx, &then, `
		SELECT count(*) AS scored, coalesce(avg(score), 0) AS average,
		       count(*) FILTER (WHERE band = $2) AS at_risk, count(*) FILTER (WHERE band = $3) AS advocates
		FROM (SELECT DISTINCT ON (account_id) score, band FROM health_history
		      WHERE at <= $1 ORDER BY account_id, at DESC, id DESC) t`,
		s.clock.Now().AddDate(0, 0, -30), account.BandAtRisk, account.BandAdvocate)
	if err != nil {
		return Summary{}, fmt.Errorf("health: summary 30 days ago: %w", err)
	}
	sum.Change30d.ScoredThen, sum.Change30d.AverageScoreThen = then.Scored, round2(then.Average)
	sum.Change30d.AtRiskThen, sum.Change30d.AdvocatesThen = then.AtRisk, then.Advocates
	return sum, nil
}

// top lists the ten first accounts of a band in the given order (a constant
// of this file, never user input).
func (s *Service) top(ctx context.Context, band, order string) ([]TailAccount, error) {
	out := []TailAccount{}
	err := s.db.SelectContext(ctx, &out, `
		SELECT a.external_id, a.name, h.score, h.change_30d, a.mrr, coalesce(c.email, '') AS csm,
		       coalesce((SELECT m.value::int FROM account_metric m WHERE m.account_id = a.id AND m.name = $2), -1) AS nps
		FROM account_health h JOIN account a ON a.id = h.account_id LEFT JOIN csm c ON c.id = a.csm_id
		WHERE h.band = $1 ORDER BY `+order+`, a.id LIMIT 10`, band, account.MetricNPS)
	if err != nil {
		return nil, fmt.Errorf("health: summary %s: %w", band, err)
	}
	return out, nil
}

// DryRun is PUT /v1/health/model?dry_run=true: how many accounts the model
// would move between bands, changing nothing.
type DryRun struct {
	Accounts    int            `json:"accounts"`
	WouldChange int            `json:"would_change_band"`
	Moves       map[string]int `json:"moves"` // "neutral→at_risk": n
	Bands       map[string]int `json:"bands"` // the bands under the new model
}

// DryRun scores every account under m and compares the bands with the
// current ones. It streams the accounts in batches of ids (nothing holds all
// accounts) and writes nothing but the profile cache, which it may refresh.
func (s *Service) DryRun(ctx context.Context, m Model) (DryRun, error) {
	if err := m.Validate(); err != nil {
		return DryRun{}, err
	}
	cur, err := s.Model(ctx)
	if err != nil {
		return DryRun{}, err
	}
	startBand := cur.Model.rawBand(cur.Model.StartingScore, -1)
	now := s.clock.Now()
	out := DryRun{Moves: map[string]int{}, Bands: map[string]int{}}
	var after int64
	for {
		var ids []int64
		if err := s.db.SelectContext(ctx, &ids, `SELECT id FROM account WHERE id > $1 ORDER BY id LIMIT 1000`, after); err != nil {
			return DryRun{}, fmt.Errorf("health: dry run: %w", err)
		}
		if len(ids) == 0 {
			break
		}
		after = ids[len(ids)-1]
		profiles, err := account.CachedProfiles(ctx, s.db, ids, now, account.Maps{Features: true})
		if err != nil {
			return DryRun{}, err
		}
		prev, err := storedScores(ctx, s.db, ids)
		if err != nil {
			return DryRun{}, fmt.Errorf("health: dry run: %w", err)
		}
		scores, err := s.score(ctx, s.db, m, now, ids, func(id int64) (*account.Profile, stored, bool) {
			r, ok := prev[id]
			return profiles[id].Profile, r, ok
		})
		if err != nil {
			return DryRun{}, err
		}
		for _, r := range scores {
			out.Accounts++
			out.Bands[r.Band]++
			was := startBand
			if p, ok := prev[r.AccountID]; ok {
				was = p.Band
			}
			if was != r.Band {
				out.WouldChange++
				out.Moves[was+"→"+r.Band]++
			}
		}
	}
	return out, nil
}
