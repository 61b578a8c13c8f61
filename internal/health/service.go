package health

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/postgres"
)

// Service keeps the health model and the scores.
type Service struct {
	db    *sqlx.DB
	clock clock.Clock
}

// NewService returns a service.
func NewService(db *sqlx.DB, clk clock.Clock) *Service { return &Service{db: db, clock: clk} }

// Versioned is the model with its version (0: the default, never saved).
type Versioned struct {
	Version   int64      `json:"version"`
	UpdatedAt *time.Time `json:"updated_at,omitempty"`
	UpdatedBy string     `json:"updated_by,omitempty"`
	Model     Model      `json:"model"`
}

// Model returns the current model.
func (s *Service) Model(ctx context.Context) (Versioned, error) {
	return currentModel(ctx, s.db)
}

// ModelVersion returns the version of the model in effect (0: the default,
// never saved). A score depends only on the account's data (its
// change_version), the clock (until the score's valid_until) and this
// version, so the segment engine keys what it may skip on it.
func (s *Service) ModelVersion(ctx context.Context) (int64, error) {
	var v int64
	err := s.db.GetContext(ctx, &v, `SELECT version FROM health_model`)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("health: model version: %w", err)
	}
	return v, nil
}

func currentModel(ctx context.Context, q postgres.Queryer) (Versioned, error) {
	var row struct {
		Version   int64           `db:"version"`
		Model     json.RawMessage `db:"model"`
		UpdatedAt time.Time       `db:"updated_at"`
		UpdatedBy string          `db:"updated_by"`
	}
	err := q.GetContext(ctx, &row, `SELECT version, model, updated_at, updated_by FROM health_model`)
	if errors.Is(err, sql.ErrNoRows) {
		return Versioned{Model: Default()}, nil
	}
	if err != nil {
		return Versioned{}, fmt.Errorf("health: model: %w", err)
	}
	v := Versioned{Version: row.Version, UpdatedAt: &row.UpdatedAt, UpdatedBy: row.UpdatedBy}
	if err := json.Unmarshal(row.Model, &v.Model); err != nil {
		return Versioned{}, fmt.Errorf("health: stored model: %w", err)
	}
	return v, nil
}

// PutModel validates and saves a model as the next version. Every account is
// rescored under it by the next full pass (the caller starts one).
func (s *Service) PutModel(ctx context.Context, m Model, by string) (Versioned, error) {
	if err := m.Validate(); err != nil {
		return Versioned{}, err
	}
	body, err := json.Marshal(m)
	if err != nil {
		return Versioned{}, fmt.Errorf("health: put model: %w", err)
	}
	now := s.clock.Now()
	var version int64
	err = s.db.GetContext(ctx, &version, `
		INSERT INTO health_model (id, version, model, starting_score, starting_band, updated_at, updated_by)
		VALUES (true, 1, $1, $2, $3, $4, $5)
		ON CONFLICT (id) DO UPDATE SET version = health_model.version + 1, model = EXCLUDED.model,
			starting_score = EXCLUDED.starting_score, starting_band = EXCLUDED.starting_band,
			updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by
		RETURNING version`, body, m.StartingScore, m.rawBand(m.StartingScore, -1), now, by)
	if err != nil {
		return Versioned{}, fmt.Errorf("health: put model: %w", err)
	}
	return Versioned{Version: version, UpdatedAt: &now, UpdatedBy: by, Model: m}, nil
}

// stored is an account's current score row.
type stored struct {
	AccountID    int64     `db:"account_id"`
	Score        int       `db:"score"`
	Band         string    `db:"band"`
	Change30d    int       `db:"change_30d"`
	Version      int64     `db:"version"`
	Day          time.Time `db:"day"`
	ModelVersion int64     `db:"model_version"`
	ComputedAt   time.Time `db:"computed_at"`
	ValidUntil   time.Time `db:"valid_until"`
}

// scored is a newly computed score, ready to write.
type scored struct {
	AccountID  int64       `json:"account_id"`
	Score      int         `json:"score"`
	Band       string      `json:"band"`
	Change30d  int         `json:"change_30d"`
	Components []Component `json:"components"`
	Version    int64       `json:"version"`
	// ValidUntil is when the score could next change with no change to
	// the account's data (see Model.validUntil).
	ValidUntil time.Time `json:"valid_until"`
}

// Refresh brings the scores of a batch of accounts up to date and writes them
// into their profiles, so that segments see the current health. profiles are
// the accounts' current profiles (from account.CachedProfiles, with features
// decoded). An account is rescored when its data or the model changed since
// its last score, or the score's validity ran out (a score holds no longer
// than the profile it was computed from); otherwise the stored score is
// used. Each profile's ValidUntil is lowered to its score's. A score or band
// that changed is kept in the history.
func (s *Service) Refresh(ctx context.Context, now time.Time, profiles map[int64]account.Cached) error {
	if len(profiles) == 0 {
		return nil
	}
	mv, err := s.Model(ctx)
	if err != nil {
		return err
	}
	ids := slices.Sorted(maps.Keys(profiles))
	prev, err := storedScores(ctx, s.db, ids)
	if err != nil {
		return fmt.Errorf("health: refresh: %w", err)
	}
	today := dayOf(now)
	var due []int64
	for _, id := range ids {
		c := profiles[id]
		r, ok := prev[id]
		if ok && r.Version == c.Version && r.ModelVersion == mv.Version && !r.ComputedAt.After(now) && now.Before(r.ValidUntil) {
			setProfile(c.Profile, r.Score, r.Change30d, r.Band)
			profiles[id] = lowerValidity(c, r.ValidUntil)
			continue
		}
		due = append(due, id)
	}
	if len(due) == 0 {
		return nil
	}
	out, err := s.score(ctx, s.db, mv.Model, now, due, func(id int64) (*account.Profile, stored, bool) {
		r, ok := prev[id]
		return profiles[id].Profile, r, ok
	})
	if err != nil {
		return err
	}
	for i := range out {
		c := profiles[out[i].AccountID]
		out[i].Version = c.Version
		if c.ValidUntil.Before(out[i].ValidUntil) {
			out[i].ValidUntil = c.ValidUntil
		}
	}
	if err := s.write(ctx, now, today, mv.Version, out); err != nil {
		return err
	}
	for _, r := range out {
		c := profiles[r.AccountID]
		setProfile(c.Profile, r.Score, r.Change30d, r.Band)
		profiles[r.AccountID] = lowerValidity(c, r.ValidUntil)
	}
	return nil
}

func lowerValidity(c account.Cached, t time.Time) account.Cached {
	if t.Before(c.ValidUntil) {
		c.ValidUntil = t
	}
	return c
}

// storedScores returns the accounts' score rows (absent: never scored).
func storedScores(ctx context.Context, q postgres.Queryer, ids []int64) (map[int64]stored, error) {
	var rows []stored
	if err := q.SelectContext(ctx, &rows, `
		SELECT account_id, score, band, change_30d, version, day, model_version, computed_at, valid_until
		FROM account_health WHERE account_id IN (SELECT unnest($1::bigint[]))`, pq.Array(ids)); err != nil {
		return nil, err
	}
	out := make(map[int64]stored, len(rows))
	for _, r := range rows {
		out[r.AccountID] = r
	}
	return out, nil
}

func setProfile(p *account.Profile, score, change int, band string) {
	p.HealthScore, p.HealthChange30d, p.HealthBand = score, change, band
}

func dayOf(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// score computes the scores of ids under model m. lookup gives an account's
// profile and its stored score (ok false when never scored).
func (s *Service) score(ctx context.Context, q postgres.Queryer, m Model, now time.Time, ids []int64,
	lookup func(int64) (*account.Profile, stored, bool)) ([]scored, error) {
	msgs, err := messagesOf(ctx, q, ids, now)
	if err != nil {
		return nil, err
	}
	monthAgo := now.AddDate(0, 0, -30)
	then, next, err := scoresAt(ctx, q, ids, monthAgo)
	if err != nil {
		return nil, err
	}
	out := make([]scored, 0, len(ids))
	for _, id := range ids {
		p, r, ok := lookup(id)
		if p == nil {
			continue
		}
		prevBand := ""
		if ok {
			prevBand = r.Band
		}
		res := m.Score(p, msgs[id], now, prevBand)
		base, had := then[id]
		if !had {
			base = m.StartingScore
		}
		until := m.validUntil(p, msgs[id], now)
		// The 30-day change moves when the next score in the history
		// turns 30 days old.
		if t, ok := next[id]; ok {
			if t = t.Add(now.Sub(monthAgo)); t.Before(until) {
				until = t
			}
		}
		out = append(out, scored{
			AccountID: id, Score: res.Score, Band: res.Band, Change30d: res.Score - base,
			Components: res.Components, ValidUntil: until,
		})
	}
	return out, nil
}

// messagesOf loads the accounts' messages of the last 30 days with the best
// human response to each, and whether the account was at risk when each was
// sent (its band in the score history at that time).
func messagesOf(ctx context.Context, q postgres.Queryer, ids []int64, now time.Time) (map[int64][]Message, error) {
	var rows []struct {
		AccountID int64     `db:"account_id"`
		SentAt    time.Time `db:"sent_at"`
		InApp     bool      `db:"in_app"`
		Response  string    `db:"response"`
		AtRisk    bool      `db:"at_risk"`
	}
	err := q.SelectContext(ctx, &rows, `
		SELECT x.id AS account_id, m.sent_at, m.channel = 'in_app' AS in_app,
		       CASE WHEN ev.reply THEN 'reply' WHEN ev.click THEN 'click' WHEN ev.open THEN 'open'
		            WHEN ev.dismiss THEN 'dismiss' ELSE '' END AS response,
		       coalesce((SELECT h.band = 'at_risk' FROM health_history h
		                 WHERE h.account_id = x.id AND h.at <= m.sent_at
		                 ORDER BY h.at DESC LIMIT 1), false) AS at_risk
		FROM unnest($1::bigint[]) AS x(id)
		CROSS JOIN LATERAL (`+account.AccountMessagesSince("$2")+`) m
		CROSS JOIN LATERAL (
			SELECT coalesce(bool_or(e.kind = 'reply'), false) AS reply,
			       coalesce(bool_or(e.kind IN ('click', 'nudge_click') AND e.human), false) AS click,
			       coalesce(bool_or(e.kind IN ('open', 'nudge_view') AND e.human), false) AS open,
			       coalesce(bool_or(e.kind = 'nudge_dismiss'), false) AS dismiss
			FROM engagement_event e WHERE e.message_id = m.id AND e.at <= $3
		) ev
		WHERE m.sent_at > $2 AND m.sent_at <= $3`, pq.Array(ids), now.AddDate(0, 0, -30), now)
	if err != nil {
		return nil, fmt.Errorf("health: messages: %w", err)
	}
	out := map[int64][]Message{}
	for _, r := range rows {
		out[r.AccountID] = append(out[r.AccountID], Message{SentAt: r.SentAt, InApp: r.InApp, Response: r.Response, AtRisk: r.AtRisk})
	}
	return out, nil
}

// scoresAt returns the accounts' scores in effect at t (absent: not scored
// yet), and when the next score in their history after t was recorded
// (absent: none).
func scoresAt(ctx context.Context, q postgres.Queryer, ids []int64, t time.Time) (map[int64]int, map[int64]time.Time, error) {
	var rows []struct {
		AccountID int64         `db:"account_id"`
		Score     sql.NullInt64 `db:"score"`
		Next      sql.NullTime  `db:"next"`
	}
	// One backward probe of health_history_account_at per account: the
	// DISTINCT ON form of this query was planned as a sequential scan of the
	// whole history for every batch (the planner cannot see how many ids the
	// array holds), which made a day's first pass quadratic in accounts.
	err := q.SelectContext(ctx, &rows, `
		SELECT x.id AS account_id, h.score, n.at AS next
		FROM unnest($1::bigint[]) AS x(id)
		LEFT JOIN LATERAL (
			SELECT score FROM health_history
			WHERE account_id = x.id AND at <= $2
			ORDER BY at DESC, id DESC LIMIT 1
		) h ON true
		LEFT JOIN LATERAL (
			SELECT at FROM health_history
			WHERE account_id = x.id AND at > $2
			ORDER BY at, id LIMIT 1
		) n ON true
		WHERE h.score IS NOT NULL OR n.at IS NOT NULL`, pq.Array(ids), t)
	if err != nil {
		return nil, nil, fmt.Errorf("health: scores at %s: %w", t.Format(time.RFC3339), err)
	}
	scores := make(map[int64]int, len(rows))
	next := make(map[int64]time.Time, len(rows))
	for _, r := range rows {
		if r.Score.Valid {
			scores[r.AccountID] = int(r.Score.Int64)
		}
		if r.Next.Valid {
			next[r.AccountID] = r.Next.Time
		}
	}
	return scores, next, nil
}

// write stores new scores: the current score row (unless a score computed
// from newer data is already there) and a history row where the score or
// band changed. Cached profiles read the score row (account.CachedProfiles).
func (s *Service) write(ctx context.Context, now, day time.Time, modelVersion int64, out []scored) error {
	sort.Slice(out, func(i, j int) bool { return out[i].AccountID < out[j].AccountID })
	payload, err := json.Marshal(out)
	if err != nil {
		return fmt.Errorf("health: write: %w", err)
	}
	return postgres.InTxRetry(ctx, s.db, func(tx *sqlx.Tx) error {
		// The score rows first: a score computed from older data or under
		// an older model never replaces a newer one. The rows stay locked
		// to the end, so the history below is compared with what every
		// earlier writer committed.
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO account_health AS h (account_id, score, band, change_30d, components, version, day, model_version,
				computed_at, valid_until)
			SELECT account_id, score, band, change_30d, components, version, $2, $3, $4, valid_until
			FROM json_to_recordset($1::json) AS x(account_id bigint, score integer, band text,
				change_30d integer, components json, version bigint, valid_until timestamptz)
			ORDER BY account_id
			ON CONFLICT (account_id) DO UPDATE SET score = EXCLUDED.score, band = EXCLUDED.band,
				change_30d = EXCLUDED.change_30d, components = EXCLUDED.components, version = EXCLUDED.version,
				day = EXCLUDED.day, model_version = EXCLUDED.model_version, computed_at = EXCLUDED.computed_at,
				valid_until = EXCLUDED.valid_until
			WHERE h.version <= EXCLUDED.version AND h.model_version <= EXCLUDED.model_version`,
			payload, day, modelVersion, now); err != nil {
			return fmt.Errorf("health: write: %w", err)
		}
		// A history row where the stored score or band differs from the
		// latest one in the history (a new statement: it sees the history
		// of every writer that held these rows before).
		if _, err := tx.ExecContext(ctx, `
			INSERT INTO health_history (account_id, at, score, band, components, model_version)
			SELECT h.account_id, h.computed_at, h.score, h.band, h.components, h.model_version
			FROM account_health h
			WHERE h.account_id IN (SELECT unnest($1::bigint[])) AND h.computed_at = $2
			  AND NOT EXISTS (
				SELECT 1 FROM (SELECT score, band FROM health_history l WHERE l.account_id = h.account_id
				               ORDER BY l.at DESC, l.id DESC LIMIT 1) last
				WHERE last.score = h.score AND last.band = h.band)`,
			pq.Array(idsOf(out)), now); err != nil {
			return fmt.Errorf("health: write history: %w", err)
		}
		return nil
	})
}

func idsOf(out []scored) []int64 {
	ids := make([]int64, len(out))
	for i, r := range out {
		ids[i] = r.AccountID
	}
	return ids
}

// Backfill records in the history the score every account had at a past
// time, computed from its usage as of then (and its metrics as they are now),
// for accounts with no score at or before then. Demo data uses it so that
// the 30-day change means something on the first day. Usage windows and the
// last login are as of then; active users and metrics are as they are now. It streams the
// accounts in batches and returns how many it scored. A last login before
// TEND_ROLLUP_RETENTION is no longer in the rollups: such an account is
// scored as if it had not logged in since signing up.
func (s *Service) Backfill(ctx context.Context, at time.Time) (int, error) {
	mv, err := s.Model(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	var after int64
	for {
		var ids []int64
		if err := s.db.SelectContext(ctx, &ids, `
			SELECT a.id FROM account a
			WHERE a.id > $1 AND a.signup_at <= $2
			  AND NOT EXISTS (SELECT 1 FROM health_history h WHERE h.account_id = a.id AND h.at <= $2)
			ORDER BY a.id LIMIT 1000`, after, at); err != nil {
			return n, fmt.Errorf("health: backfill: %w", err)
		}
		if len(ids) == 0 {
			return n, nil
		}
		after = ids[len(ids)-1]
		profiles, err := account.Profiles(ctx, s.db, ids, at)
		if err != nil {
			return n, err
		}
		// The profile's last login is the latest; as of then it is the
		// last day with a login up to then.
		var last []struct {
			AccountID int64     `db:"account_id"`
			Day       time.Time `db:"day"`
		}
		if err := s.db.SelectContext(ctx, &last, `
			SELECT account_id, max(day) AS day FROM usage_daily
			WHERE account_id = ANY($1) AND kind = 'e' AND key = $2 AND day <= $3::date
			GROUP BY account_id`, pq.Array(ids), account.EventLogin, at); err != nil {
			return n, fmt.Errorf("health: backfill: last logins: %w", err)
		}
		lastLogin := map[int64]time.Time{}
		for _, l := range last {
			lastLogin[l.AccountID] = l.Day
		}
		for id, p := range profiles {
			if p.LastLoginAt.After(at) {
				p.LastLoginAt = p.SignupAt
				if d, ok := lastLogin[id]; ok {
					p.LastLoginAt = d
				}
				p.DaysSinceLastLogin = int(at.Sub(p.LastLoginAt) / (24 * time.Hour))
			}
		}
		out, err := s.score(ctx, s.db, mv.Model, at, ids, func(id int64) (*account.Profile, stored, bool) {
			return profiles[id], stored{}, false
		})
		if err != nil {
			return n, err
		}
		payload, err := json.Marshal(out)
		if err != nil {
			return n, fmt.Errorf("health: backfill: %w", err)
		}
		if _, err := s.db.ExecContext(ctx, `
			INSERT INTO health_history (account_id, at, score, band, components, model_version)
			SELECT account_id, $2, score, band, components, $3
			FROM json_to_recordset($1::json) AS x(account_id bigint, score integer, band text, components json)`,
			payload, at, mv.Version); err != nil {
			return n, fmt.Errorf("health: backfill: %w", err)
		}
		n += len(out)
	}
}
