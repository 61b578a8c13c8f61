package account

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/postgres"
)

// Health bands, lowest first (the health package decides which applies).
const (
	BandAtRisk   = "at_risk"
	BandNeutral  = "neutral"
	BandHealthy  = "healthy"
	BandAdvocate = "advocate"
)

// StartingHealthScore and StartingHealthBand are those of an account never
// scored while no health model has been saved (the default model's).
const (
	StartingHealthScore = 50
	StartingHealthBand  = BandNeutral
)

// Profile is one account's predicate environment: every name a segment
// predicate may use (DESIGN.md, "The predicate environment"). Field names are
// the contract: add, never rename.
type Profile struct {
	Plan   string  `expr:"plan" json:"plan"`
	Stage  string  `expr:"stage" json:"stage"`
	Tier   string  `expr:"tier" json:"tier"`
	Region string  `expr:"region" json:"region"`
	CSM    string  `expr:"csm" json:"csm"`
	MRR    float64 `expr:"mrr" json:"mrr"`

	Seats              int     `expr:"seats" json:"seats"`
	ActiveUsers        int     `expr:"active_users" json:"active_users"`
	LicenseUtilization float64 `expr:"license_utilization" json:"license_utilization"`

	DaysSinceSignup    int `expr:"days_since_signup" json:"days_since_signup"`
	DaysSinceLastLogin int `expr:"days_since_last_login" json:"days_since_last_login"`
	Logins7d           int `expr:"logins_7d" json:"logins_7d"`
	Logins30d          int `expr:"logins_30d" json:"logins_30d"`

	Features map[string]int `expr:"features" json:"features"`
	Events   map[string]int `expr:"events" json:"events"`

	HealthScore     int    `expr:"health_score" json:"health_score"`
	HealthChange30d int    `expr:"health_change_30d" json:"health_change_30d"`
	HealthBand      string `expr:"health_band" json:"health_band"` // at_risk, neutral, healthy or advocate
	NPS             int    `expr:"nps" json:"nps"`
	OpenTickets     int    `expr:"open_tickets" json:"open_tickets"`

	Emails30d          int `expr:"emails_30d" json:"emails_30d"`
	Opens30d           int `expr:"opens_30d" json:"opens_30d"`
	Clicks30d          int `expr:"clicks_30d" json:"clicks_30d"`
	Replies30d         int `expr:"replies_30d" json:"replies_30d"`
	NudgesDismissed30d int `expr:"nudges_dismissed_30d" json:"nudges_dismissed_30d"`

	Traits map[string]any `expr:"traits" json:"traits"`

	SignupAt time.Time `expr:"signup_at" json:"signup_at"`
	// LastLoginAt is the latest login; an account that never logged in reads
	// its signup time, so that days_since(last_login_at) agrees with
	// days_since_last_login.
	LastLoginAt time.Time `expr:"last_login_at" json:"last_login_at"`
}

// profileBase is the stored state a profile is computed from.
type profileBase struct {
	ID          int64           `db:"id"`
	Plan        string          `db:"plan"`
	Stage       string          `db:"stage"`
	Tier        string          `db:"tier"`
	Region      string          `db:"region"`
	CSM         string          `db:"csm"`
	MRR         float64         `db:"mrr"`
	Seats       int             `db:"seats"`
	SignupAt    time.Time       `db:"signup_at"`
	LastLoginAt *time.Time      `db:"last_login_at"`
	Traits      json.RawMessage `db:"traits"`

	HealthScore     int    `db:"health_score"`
	HealthChange30d int    `db:"health_change_30d"`
	HealthBand      string `db:"health_band"`
}

type usageSum struct {
	AccountID int64        `db:"account_id"`
	Kind      string       `db:"kind"`
	Key       string       `db:"key"`
	N7        int          `db:"n7"`
	N30       int          `db:"n30"`
	First7    sql.NullTime `db:"first7"` // the oldest day counted in the 7-day window
	First30   sql.NullTime `db:"first30"`
	Later     sql.NullTime `db:"later"` // the first day after today with a rollup
}

type metricRow struct {
	AccountID int64     `db:"account_id"`
	Name      string    `db:"name"`
	Value     float64   `db:"value"`
	At        time.Time `db:"at"`
}

// Window bounds: the last 7 and 30 UTC days including today.
func windowStart(now time.Time, days int) time.Time {
	y, m, d := now.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC).AddDate(0, 0, -(days - 1))
}

// Profiles computes the profiles of the given accounts at now, in five
// batched queries whatever the number of accounts. Unknown ids are absent.
func Profiles(ctx context.Context, q postgres.Queryer, ids []int64, now time.Time) (map[int64]*Profile, error) {
	out, _, err := profilesValid(ctx, q, ids, now)
	return out, err
}

// MaxValidity bounds how long a computed profile or score is taken to hold
// without new data (see validity): nothing cached is older than this.
const MaxValidity = 30 * 24 * time.Hour

// validity collects, for each account, the first instant after now at which
// its profile, computed at now, could read differently with no change to
// its data: when a window's oldest data point leaves it, a rollup dated
// later than today enters it, an active-users snapshot expires. The fields
// computed from the exact time (days since signup and last login) are not
// cached and do not count.
type validity struct {
	now   time.Time
	until map[int64]time.Time
}

func newValidity(ids []int64, now time.Time) validity {
	v := validity{now: now, until: make(map[int64]time.Time, len(ids))}
	for _, id := range ids {
		v.until[id] = now.Add(MaxValidity)
	}
	return v
}

// by lowers the account's validity to t (which is after now: a bound
// already passed, by rounding, is taken as now).
func (v validity) by(id int64, t time.Time) {
	if u, ok := v.until[id]; ok && t.Before(u) {
		v.until[id] = t
	}
}

// dropsOut is when a data point of day (or at an instant on it) leaves a
// window of the given days counted in whole UTC days including today.
func dropsOut(day time.Time, days int) time.Time {
	return windowStart(day, 1).AddDate(0, 0, days)
}

// profilesValid is Profiles, with each profile's validity (see validity).
func profilesValid(ctx context.Context, q postgres.Queryer, ids []int64, now time.Time) (map[int64]*Profile, map[int64]time.Time, error) {
	now = now.UTC()
	var bases []profileBase
	err := q.SelectContext(ctx, &bases, `
		SELECT a.id, a.plan, a.stage, a.tier, a.region, coalesce(c.email, '') AS csm, a.mrr, a.seats,
		       a.signup_at, a.last_login_at, a.traits,
		       coalesce(h.score, m.starting_score, $2) AS health_score, coalesce(h.change_30d, 0) AS health_change_30d,
		       coalesce(h.band, m.starting_band, $3) AS health_band
		FROM account a LEFT JOIN csm c ON c.id = a.csm_id
		LEFT JOIN account_health h ON h.account_id = a.id
		LEFT JOIN health_model m ON true
		WHERE a.id = ANY($1)`, pq.Array(ids), StartingHealthScore, StartingHealthBand)
	if err != nil {
		return nil, nil, fmt.Errorf("account: profiles: %w", err)
	}
	out := make(map[int64]*Profile, len(bases))
	for _, b := range bases {
		p := &Profile{
			Plan: b.Plan, Stage: b.Stage, Tier: b.Tier, Region: b.Region, CSM: b.CSM, MRR: b.MRR, Seats: b.Seats,
			SignupAt: b.SignupAt.UTC(), LastLoginAt: b.SignupAt.UTC(),
			Features: map[string]int{}, Events: map[string]int{}, Traits: map[string]any{},
			NPS: -1, HealthScore: b.HealthScore, HealthChange30d: b.HealthChange30d, HealthBand: b.HealthBand,
		}
		if b.LastLoginAt != nil {
			p.LastLoginAt = b.LastLoginAt.UTC()
		}
		if err := json.Unmarshal(b.Traits, &p.Traits); err != nil {
			return nil, nil, fmt.Errorf("account: profiles: traits of %d: %w", b.ID, err)
		}
		out[b.ID] = p
	}
	if len(out) == 0 {
		return out, nil, nil
	}

	start7, start30 := windowStart(now, 7), windowStart(now, 30)
	valid := newValidity(ids, now)
	var sums []usageSum
	// Rollups dated after today (an event stamped ahead of the clock) are
	// read for when they enter the windows, not counted.
	err = q.SelectContext(ctx, &sums, `
		SELECT account_id, kind::text AS kind, key,
		       coalesce(sum(n) FILTER (WHERE day >= $2::date AND day <= $4::date), 0) AS n7,
		       coalesce(sum(n) FILTER (WHERE day <= $4::date), 0) AS n30,
		       min(day) FILTER (WHERE day >= $2::date AND day <= $4::date) AS first7,
		       min(day) FILTER (WHERE day <= $4::date) AS first30,
		       min(day) FILTER (WHERE day > $4::date) AS later
		FROM usage_daily
		WHERE account_id = ANY($1) AND day >= $3::date
		GROUP BY account_id, kind, key`, pq.Array(ids), start7, start30, now)
	if err != nil {
		return nil, nil, fmt.Errorf("account: profiles: usage: %w", err)
	}
	for _, s := range sums {
		p := out[s.AccountID]
		if s.Later.Valid {
			valid.by(s.AccountID, s.Later.Time)
		}
		if !s.First30.Valid {
			continue // only rollups dated later
		}
		valid.by(s.AccountID, dropsOut(s.First30.Time, 30))
		if s.First7.Valid && s.Kind == "e" && s.Key == EventLogin {
			valid.by(s.AccountID, dropsOut(s.First7.Time, 7))
		}
		switch s.Kind {
		case "e":
			p.Events[s.Key] = s.N30
			if s.Key == EventLogin {
				p.Logins7d, p.Logins30d = s.N7, s.N30
			}
		case "f":
			p.Features[s.Key] = s.N30
		}
	}

	var active []struct {
		AccountID int64     `db:"account_id"`
		N         int       `db:"n"`
		First     time.Time `db:"first"`
	}
	err = q.SelectContext(ctx, &active, `
		SELECT account_id, count(*) AS n, min(last_seen_at) AS first FROM account_user_activity
		WHERE account_id = ANY($1) AND last_seen_at >= $2
		GROUP BY account_id`, pq.Array(ids), start30)
	if err != nil {
		return nil, nil, fmt.Errorf("account: profiles: active users: %w", err)
	}
	for _, a := range active {
		out[a.AccountID].ActiveUsers = a.N
		valid.by(a.AccountID, dropsOut(a.First, 30))
	}

	var metrics []metricRow
	// Index probes per account (see AccountMessagesSince on why the ORDER BY).
	err = q.SelectContext(ctx, &metrics, `
		SELECT x.id AS account_id, m.name, m.value, m.at
		FROM unnest($1::bigint[]) AS x(id)
		CROSS JOIN LATERAL (SELECT name, value, at FROM account_metric WHERE account_id = x.id ORDER BY name) m`, pq.Array(ids))
	if err != nil {
		return nil, nil, fmt.Errorf("account: profiles: metrics: %w", err)
	}
	for _, m := range metrics {
		p := out[m.AccountID]
		switch m.Name {
		case MetricActiveUsers:
			// A snapshot under 30 days old wins over the count from events.
			if expires := m.At.Add(30 * 24 * time.Hour); now.Before(expires) {
				p.ActiveUsers = int(m.Value)
				valid.by(m.AccountID, expires)
			}
		case MetricOpenTickets:
			p.OpenTickets = int(m.Value)
		case MetricNPS:
			p.NPS = int(m.Value)
		}
	}

	if err := engagementCounts(ctx, q, ids, start30, out, valid); err != nil {
		return nil, nil, err
	}
	for _, p := range out {
		p.derive(now)
	}
	return out, valid.until, nil
}

// AccountMessagesSince returns a LATERAL subquery over unnest(...) AS x(id):
// the sent, non-test messages of account x.id sent at or after since (an SQL
// expression, such as a parameter), found through its contacts
// (contact_account, then a range of message_contact_sent), id order: an
// account's reads stay in proportion to its recent mail, not to all it was
// ever sent. Queries over a batch of accounts drive their reads from the ids
// this way: joined as a set (IN (SELECT unnest(...))), the planner guessed
// 200 accounts and scanned contact and message whole for every batch. The
// ORDER BY keeps PostgreSQL from merging the subquery into the outer join,
// where it could choose so again.
func AccountMessagesSince(since string) string {
	return `
	SELECT m.id, m.sent_at, m.channel FROM contact ct JOIN message m ON m.contact_id = ct.id
	WHERE ct.account_id = x.id AND m.sent_at >= ` + since + ` AND NOT m.test AND m.status = 'sent'
	ORDER BY m.id`
}

// engagementCounts fills the 30-day engagement with Tend's own messages:
// emails sent, and the messages a person (not a proxy or scanner) opened,
// clicked or replied to, and nudges dismissed. Test sends do not count.
func engagementCounts(ctx context.Context, q postgres.Queryer, ids []int64, since time.Time, out map[int64]*Profile, valid validity) error {
	var rows []struct {
		AccountID  int64        `db:"account_id"`
		Emails     int          `db:"emails"`
		Opens      int          `db:"opens"`
		Clicks     int          `db:"clicks"`
		Replies    int          `db:"replies"`
		Dismissed  int          `db:"dismissed"`
		FirstSent  sql.NullTime `db:"first_sent"`  // the oldest email counted
		FirstEvent sql.NullTime `db:"first_event"` // the oldest event read
		// The oldest message with an event read: its events stop being
		// read when it is older than the 60 days the query reads.
		FirstEngaged sql.NullTime `db:"first_engaged"`
	}
	// One aggregate over each message's events (an index lookup per
	// message): EXISTS subqueries here were planned as hashed subplans that
	// read every engagement event for every batch.
	err := q.SelectContext(ctx, &rows, `
		SELECT x.id AS account_id,
		       count(*) FILTER (WHERE m.channel = 'email' AND m.sent_at >= $2) AS emails,
		       count(*) FILTER (WHERE ev.opened) AS opens,
		       count(*) FILTER (WHERE ev.clicked) AS clicks,
		       count(*) FILTER (WHERE ev.replied) AS replies,
		       count(*) FILTER (WHERE ev.dismissed) AS dismissed,
		       min(m.sent_at) FILTER (WHERE m.channel = 'email' AND m.sent_at >= $2) AS first_sent,
		       min(ev.first_at) AS first_event,
		       min(m.sent_at) FILTER (WHERE ev.first_at IS NOT NULL) AS first_engaged
		FROM unnest($1::bigint[]) AS x(id)
		CROSS JOIN LATERAL (`+AccountMessagesSince(`$2::timestamptz - interval '30 days'`)+`) m
		CROSS JOIN LATERAL (
			SELECT coalesce(bool_or(e.kind = 'open' AND e.human), false) AS opened,
			       coalesce(bool_or(e.kind = 'click' AND e.human), false) AS clicked,
			       coalesce(bool_or(e.kind = 'reply'), false) AS replied,
			       coalesce(bool_or(e.kind = 'nudge_dismiss'), false) AS dismissed,
			       min(e.at) AS first_at
			FROM engagement_event e WHERE e.message_id = m.id AND e.at >= $2
		) ev
		WHERE m.sent_at >= $2 - interval '30 days'
		GROUP BY x.id`, pq.Array(ids), since)
	if err != nil {
		return fmt.Errorf("account: profiles: engagement: %w", err)
	}
	for _, r := range rows {
		if p := out[r.AccountID]; p != nil {
			p.Emails30d, p.Opens30d, p.Clicks30d, p.Replies30d, p.NudgesDismissed30d = r.Emails, r.Opens, r.Clicks, r.Replies, r.Dismissed
		}
		// Conservative: a message's count may hold past its oldest event
		// leaving the window (a later one keeps it), never the other way.
		for _, t := range []sql.NullTime{r.FirstSent, r.FirstEvent} {
			if t.Valid {
				valid.by(r.AccountID, dropsOut(t.Time, 30))
			}
		}
		if r.FirstEngaged.Valid {
			valid.by(r.AccountID, dropsOut(r.FirstEngaged.Time, 60))
		}
	}
	return nil
}

// wholeDays is the number of whole days in d, never negative.
func wholeDays(d time.Duration) int {
	if d < 0 {
		return 0
	}
	return int(d / (24 * time.Hour))
}

// ProfileOf computes one account's profile at the store's clock.
func (s *Store) ProfileOf(ctx context.Context, id int64) (*Profile, error) {
	m, err := Profiles(ctx, s.db, []int64{id}, s.clock.Now())
	if err != nil {
		return nil, err
	}
	p, ok := m[id]
	if !ok {
		return nil, fmt.Errorf("account: profile of %d: account vanished", id)
	}
	return p, nil
}
