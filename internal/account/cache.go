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

// Maps names the profile's map fields, for callers that only need some of
// them decoded. NoHealth leaves the health fields unread (starting values),
// for a caller that brings every score up to date itself: the segment
// engine with a health scorer.
type Maps struct{ Features, Events, Traits, NoHealth bool }

// AllMaps decodes every map field.
var AllMaps = Maps{Features: true, Events: true, Traits: true}

// Cached is a profile read through the cache, with the account's
// change_version at the time it was read.
type Cached struct {
	Profile   *Profile
	Version   int64
	Evaluated int64 // the version the segment engine last evaluated
	// ValidUntil is when the profile may next read differently although
	// the account's data (its version) stays the same: a window losing a
	// data point, a snapshot expiring. Fields computed from the exact time
	// (days since signup and last login) are not covered. The health
	// scorer lowers it to its score's own.
	ValidUntil time.Time
}

// cachedRow is an account joined with its cached profile. Every profile
// column is NOT NULL, so a NULL day means there is no cached profile (the
// LEFT JOIN found none) and the other profile fields are then zero, unused.
type cachedRow struct {
	ID        int64
	Version   int64 // account.change_version
	Evaluated int64 // account.evaluated_version
	Day       sql.NullTime
	PVersion  int64 // account_profile.version
	Until     time.Time

	Plan, Stage, Tier, Region, CSM, HealthBand                     string
	MRR                                                            float64
	Seats, ActiveUsers, Logins7d, Logins30d                        int
	Features, Events, Traits                                       []byte
	HealthScore, HealthChange30d, NPS, OpenTickets                 int
	Emails30d, Opens30d, Clicks30d, Replies30d, NudgesDismissed30d int
	SignupAt, LastLoginAt                                          time.Time
}

// dests are the scan destinations of the cached-profile query's columns, in
// order. A full pass reads this row for every account; database/sql's generic
// conversion (reflection, and a heap allocation per nullable column through
// sqlx) was the largest Go-side cost of a warm pass, so the columns scan
// through the small Scanners below.
func (r *cachedRow) dests() []any {
	return []any{&r.ID, &r.Version, &r.Evaluated, &r.Day, (*scanInt64)(&r.PVersion), (*scanTime)(&r.Until),
		(*scanString)(&r.Plan), (*scanString)(&r.Stage), (*scanString)(&r.Tier), (*scanString)(&r.Region), (*scanString)(&r.CSM),
		(*scanFloat)(&r.MRR), (*scanInt)(&r.Seats), (*scanInt)(&r.ActiveUsers), (*scanInt)(&r.Logins7d), (*scanInt)(&r.Logins30d),
		&r.Features, &r.Events,
		(*scanInt)(&r.HealthScore), (*scanInt)(&r.HealthChange30d), (*scanInt)(&r.NPS), (*scanInt)(&r.OpenTickets),
		(*scanInt)(&r.Emails30d), (*scanInt)(&r.Opens30d), (*scanInt)(&r.Clicks30d), (*scanInt)(&r.Replies30d), (*scanInt)(&r.NudgesDismissed30d),
		&r.Traits, (*scanTime)(&r.SignupAt), (*scanTime)(&r.LastLoginAt), (*scanString)(&r.HealthBand)}
}

// Scanners for the profile columns: each takes the driver's value for its
// column type as is, and NULL as the zero value.
type (
	scanInt    int
	scanInt64  int64
	scanFloat  float64
	scanString string
	scanTime   time.Time
)

func (d *scanInt) Scan(src any) error {
	switch v := src.(type) {
	case int64:
		*d = scanInt(v)
	case nil:
		*d = 0
	default:
		return fmt.Errorf("cannot scan %T into an int", src)
	}
	return nil
}

func (d *scanInt64) Scan(src any) error {
	switch v := src.(type) {
	case int64:
		*d = scanInt64(v)
	case nil:
		*d = 0
	default:
		return fmt.Errorf("cannot scan %T into an int64", src)
	}
	return nil
}

func (d *scanFloat) Scan(src any) error {
	switch v := src.(type) {
	case float64:
		*d = scanFloat(v)
	case int64:
		*d = scanFloat(v)
	case nil:
		*d = 0
	default:
		return fmt.Errorf("cannot scan %T into a float", src)
	}
	return nil
}

func (d *scanString) Scan(src any) error {
	switch v := src.(type) {
	case []byte:
		*d = scanString(v)
	case string:
		*d = scanString(v)
	case nil:
		*d = ""
	default:
		return fmt.Errorf("cannot scan %T into a string", src)
	}
	return nil
}

func (d *scanTime) Scan(src any) error {
	switch v := src.(type) {
	case time.Time:
		*d = scanTime(v)
	case nil:
		*d = scanTime{}
	default:
		return fmt.Errorf("cannot scan %T into a time", src)
	}
	return nil
}

// scanCached runs the cached-profile query and scans its rows.
func scanCached(ctx context.Context, q postgres.Queryer, query string, args ...any) ([]cachedRow, error) {
	rs, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []cachedRow
	var r cachedRow
	dests := r.dests()
	for rs.Next() {
		if err := rs.Scan(dests...); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rs.Err()
}

// CachedProfiles returns the profiles of the given accounts at now, reading
// the materialised copy where it is current (computed from the account's
// change_version, on a day not after now's, and valid until after now: see
// Cached.ValidUntil) and recomputing and storing the rest. Only the map fields
// named in maps are decoded (the others are left empty), which is most of the
// cost of a read.
func CachedProfiles(ctx context.Context, q postgres.Queryer, ids []int64, now time.Time, maps Maps) (map[int64]Cached, error) {
	now = now.UTC()
	today := windowStart(now, 1)
	// The ids are joined as a set rather than matched with = ANY($1): with a
	// thousand ids the planner's estimate for = ANY made it choose a
	// sequential scan of account for every batch on tables of ~100k rows
	// (ten times slower than the index), and planning took longer too. A
	// stale profile is not read at all (the join's condition): reading
	// them cost as much as the current ones. Health is read from account_health, where the health
	// package keeps it, not copied into the cached profile: a rescore then
	// writes one row, not two.
	rows, err := scanCached(ctx, q, `
		SELECT a.id, a.change_version, a.evaluated_version, p.day, p.version, p.valid_until,
		       p.plan, p.stage, p.tier, p.region, p.csm, p.mrr, p.seats, p.active_users, p.logins_7d, p.logins_30d,
		       CASE WHEN $2 THEN p.features END AS features,
		       CASE WHEN $3 THEN p.events END AS events,
		       coalesce(h.score, m.starting_score, $6) AS health_score, coalesce(h.change_30d, 0) AS health_change_30d,
		       p.nps, p.open_tickets,
		       p.emails_30d, p.opens_30d, p.clicks_30d, p.replies_30d, p.nudges_dismissed_30d,
		       CASE WHEN $4 THEN p.traits END AS traits,
		       p.signup_at, p.last_login_at, coalesce(h.band, m.starting_band, $7) AS health_band
		FROM account a
		LEFT JOIN account_profile p ON p.account_id = a.id AND p.version = a.change_version
		     AND p.day <= $5::date AND p.valid_until > $9
		LEFT JOIN account_health h ON h.account_id = a.id AND NOT $8
		LEFT JOIN health_model m ON NOT $8
		WHERE a.id IN (SELECT unnest($1::bigint[]))`, pq.Array(ids), maps.Features, maps.Events, maps.Traits, today.Format(time.DateOnly),
		StartingHealthScore, StartingHealthBand, maps.NoHealth, now)
	if err != nil {
		return nil, fmt.Errorf("account: cached profiles: %w", err)
	}
	out := make(map[int64]Cached, len(rows))
	var stale []int64
	versions := map[int64]int64{}
	for i := range rows {
		r := &rows[i]
		if !r.Day.Valid || r.PVersion != r.Version || r.Day.Time.After(today) || !now.Before(r.Until) {
			stale = append(stale, r.ID)
			versions[r.ID] = r.Version
			out[r.ID] = Cached{Version: r.Version, Evaluated: r.Evaluated}
			continue
		}
		p, err := r.profile(now)
		if err != nil {
			return nil, err
		}
		out[r.ID] = Cached{Profile: p, Version: r.Version, Evaluated: r.Evaluated, ValidUntil: r.Until}
	}
	if len(stale) == 0 {
		return out, nil
	}
	fresh, until, err := profilesValid(ctx, q, stale, now)
	if err != nil {
		return nil, err
	}
	if err := storeProfiles(ctx, q, fresh, versions, until, today); err != nil {
		return nil, err
	}
	for id, p := range fresh {
		c := out[id]
		c.Profile, c.ValidUntil = p, until[id]
		out[id] = c
	}
	return out, nil
}

func (r *cachedRow) profile(now time.Time) (*Profile, error) {
	p := &Profile{
		Plan: r.Plan, Stage: r.Stage, Tier: r.Tier, Region: r.Region, CSM: r.CSM, MRR: r.MRR,
		Seats: r.Seats, ActiveUsers: r.ActiveUsers, Logins7d: r.Logins7d, Logins30d: r.Logins30d,
		HealthScore: r.HealthScore, HealthChange30d: r.HealthChange30d, HealthBand: r.HealthBand, NPS: r.NPS, OpenTickets: r.OpenTickets,
		Emails30d: r.Emails30d, Opens30d: r.Opens30d, Clicks30d: r.Clicks30d, Replies30d: r.Replies30d,
		NudgesDismissed30d: r.NudgesDismissed30d, SignupAt: r.SignupAt.UTC(), LastLoginAt: r.LastLoginAt.UTC(),
		Features: map[string]int{}, Events: map[string]int{}, Traits: map[string]any{},
	}
	for _, m := range []struct {
		raw []byte
		dst any
	}{{r.Features, &p.Features}, {r.Events, &p.Events}, {r.Traits, &p.Traits}} {
		// "{}" (no usage yet, no traits: common) is the empty map already there.
		if len(m.raw) > 0 && string(m.raw) != "{}" {
			if err := json.Unmarshal(m.raw, m.dst); err != nil {
				return nil, fmt.Errorf("account: cached profile %d: %w", r.ID, err)
			}
		}
	}
	p.derive(now)
	return p, nil
}

// derive fills the fields that follow from others and the exact time.
func (p *Profile) derive(now time.Time) {
	p.DaysSinceSignup = wholeDays(now.Sub(p.SignupAt))
	p.DaysSinceLastLogin = wholeDays(now.Sub(p.LastLoginAt))
	p.LicenseUtilization = 0
	if p.Seats > 0 {
		p.LicenseUtilization = float64(p.ActiveUsers) / float64(p.Seats)
	}
}

// storeProfiles writes computed profiles to the cache, each under the
// change_version read before computing it (a newer change makes it stale)
// with its validity.
func storeProfiles(ctx context.Context, q postgres.Queryer, profiles map[int64]*Profile, versions map[int64]int64,
	until map[int64]time.Time, day time.Time) error {
	type row struct {
		*Profile
		AccountID  int64     `json:"account_id"`
		Version    int64     `json:"version"`
		ValidUntil time.Time `json:"valid_until"`
	}
	list := make([]row, 0, len(profiles))
	for id, p := range profiles {
		list = append(list, row{Profile: p, AccountID: id, Version: versions[id], ValidUntil: until[id]})
	}
	payload, err := json.Marshal(list)
	if err != nil {
		return fmt.Errorf("account: store profiles: %w", err)
	}
	_, err = q.ExecContext(ctx, `
		INSERT INTO account_profile AS p (account_id, day, version, plan, stage, tier, region, csm, mrr, seats,
			active_users, logins_7d, logins_30d, features, events, nps, open_tickets,
			emails_30d, opens_30d, clicks_30d, replies_30d, nudges_dismissed_30d, traits, signup_at, last_login_at, valid_until)
		SELECT account_id, $2, version, plan, stage, tier, region, csm, mrr, seats,
			active_users, logins_7d, logins_30d, features, events, nps, open_tickets,
			emails_30d, opens_30d, clicks_30d, replies_30d, nudges_dismissed_30d, traits, signup_at, last_login_at, valid_until
		FROM json_to_recordset($1::json) AS x(account_id bigint, version bigint, plan text, stage text, tier text,
			region text, csm text, mrr double precision, seats integer, active_users integer, logins_7d integer,
			logins_30d integer, features json, events json,
			nps integer, open_tickets integer, emails_30d integer, opens_30d integer, clicks_30d integer,
			replies_30d integer, nudges_dismissed_30d integer, traits json, signup_at timestamptz, last_login_at timestamptz,
			valid_until timestamptz)
		ORDER BY account_id
		ON CONFLICT (account_id) DO UPDATE SET
			day = EXCLUDED.day, version = EXCLUDED.version, plan = EXCLUDED.plan, stage = EXCLUDED.stage,
			tier = EXCLUDED.tier, region = EXCLUDED.region, csm = EXCLUDED.csm, mrr = EXCLUDED.mrr,
			seats = EXCLUDED.seats, active_users = EXCLUDED.active_users, logins_7d = EXCLUDED.logins_7d,
			logins_30d = EXCLUDED.logins_30d, features = EXCLUDED.features, events = EXCLUDED.events,
			nps = EXCLUDED.nps, open_tickets = EXCLUDED.open_tickets, emails_30d = EXCLUDED.emails_30d,
			opens_30d = EXCLUDED.opens_30d, clicks_30d = EXCLUDED.clicks_30d, replies_30d = EXCLUDED.replies_30d,
			nudges_dismissed_30d = EXCLUDED.nudges_dismissed_30d, traits = EXCLUDED.traits,
			signup_at = EXCLUDED.signup_at, last_login_at = EXCLUDED.last_login_at, valid_until = EXCLUDED.valid_until
		WHERE p.version <= EXCLUDED.version`, payload, day)
	if err != nil {
		return fmt.Errorf("account: store profiles: %w", err)
	}
	return nil
}
