package testsvc

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
)

// SeedStep is one set-based statement of a benchmark's seed.
type SeedStep struct {
	What  string
	Query string
	Args  []any
}

// AccountSteps fill a database with n accounts in set-based SQL, for
// benchmarks: 20 CSMs; plans with their MRR and seats, signups over two years
// before at, stages, tiers, regions, time zones, traits, last logins; daily
// usage for the last 30 days of active accounts (a handful of rows each:
// logins, two features of six, sometimes a custom event) and a last-login row
// for dormant ones; user activity; NPS for about 30% and open tickets for 25%.
// Run them with runSeed after a setseed for repeatable data.
func AccountSteps(n int, at time.Time) []SeedStep {
	start30 := at.Truncate(24*time.Hour).AddDate(0, 0, -29)
	return []SeedStep{
		{What: "csm", Query: `INSERT INTO csm (email, name, created_at, updated_at)
			SELECT 'csm' || i || '@example.com', 'CSM ' || i, $1, $1 FROM generate_series(1, 20) i`, Args: []any{at}},
		{What: "account", Query: `
			WITH r AS (
				SELECT g, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
				       random() AS r5, random() AS r6, random() AS r7, random() AS r8
				FROM generate_series(1, $1::int) g
			), p AS (
				SELECT r.*,
				       CASE WHEN r1 < 0.50 THEN 'free' WHEN r1 < 0.75 THEN 'starter'
				            WHEN r1 < 0.93 THEN 'pro' ELSE 'enterprise' END AS plan,
				       $2::timestamptz - r4 * interval '730 days' AS signup_at
				FROM r
			), csms AS (SELECT array_agg(id ORDER BY id) AS ids FROM csm)
			INSERT INTO account (external_id, name, plan, mrr, seats, signup_at, stage, tier, region, csm_id,
			                     timezone, traits, last_login_at, created_at, updated_at)
			SELECT 'acc-' || g, 'Account ' || g, plan,
			       CASE plan WHEN 'free' THEN 0 WHEN 'starter' THEN round(49 + r2 * 250)
			                 WHEN 'pro' THEN round(300 + r2 * 2700) ELSE round(3000 + r2 * r2 * 47000) END,
			       CASE plan WHEN 'free' THEN 1 + floor(r3 * 3) WHEN 'starter' THEN 3 + floor(r3 * 12)
			                 WHEN 'pro' THEN 10 + floor(r3 * 90) ELSE 50 + floor(r3 * 950) END,
			       signup_at,
			       CASE WHEN signup_at > $2::timestamptz - interval '30 days' THEN 'onboarding'
			            WHEN r5 < 0.10 THEN 'renewal' WHEN r5 < 0.15 THEN 'churning' ELSE 'active' END,
			       CASE plan WHEN 'enterprise' THEN 'enterprise' WHEN 'pro' THEN 'mid-market' ELSE 'smb' END,
			       (ARRAY['na', 'eu', 'apac', 'latam'])[1 + floor(r5 * 4)::int],
			       CASE WHEN plan IN ('pro', 'enterprise') THEN csms.ids[1 + g % 20] END,
			       (ARRAY['UTC', 'America/New_York', 'Europe/Berlin', 'Asia/Tokyo'])[1 + floor(r8 * 4)::int],
			       jsonb_build_object(
			           'industry', (ARRAY['retail', 'saas', 'finance', 'healthcare', 'education',
			                              'manufacturing', 'media', 'logistics'])[1 + floor(r6 * 8)::int],
			           'employees', CASE plan WHEN 'enterprise' THEN 500 + floor(r2 * 20000)
			                                  ELSE 2 + floor(r6 * r8 * 2000) END,
			           'source', CASE WHEN r8 < 0.6 THEN 'self-serve' ELSE 'sales' END),
			       CASE WHEN r7 < 0.08 THEN NULL
			            ELSE greatest(signup_at, $2::timestamptz - power((r7 - 0.08) / 0.92, 3) * interval '150 days') END,
			       signup_at, signup_at
			FROM p, csms`, Args: []any{n, at}},
		// Logins on up to 4 days of the window, ending on the last login.
		{What: "usage_daily logins", Query: `
			INSERT INTO usage_daily (account_id, day, kind, key, n)
			SELECT a.id, d.day, 'e', 'login', 1 + floor(random() * 6)::int
			FROM account a,
			     LATERAL (SELECT (a.last_login_at AT TIME ZONE 'UTC')::date - i * (1 + a.id % 5)::int AS day
			              FROM generate_series(0, 3) i) d
			WHERE (a.last_login_at AT TIME ZONE 'UTC')::date >= $1::date AND d.day >= $1::date`, Args: []any{start30}},
		// Dormant accounts: their last login is older than the window.
		{What: "usage_daily old logins", Query: `
			INSERT INTO usage_daily (account_id, day, kind, key, n)
			SELECT a.id, (a.last_login_at AT TIME ZONE 'UTC')::date, 'e', 'login', 1 + floor(random() * 3)::int
			FROM account a
			WHERE (a.last_login_at AT TIME ZONE 'UTC')::date < $1::date`, Args: []any{start30}},
		// Two distinct features on the last login day, with their feature_used total.
		{What: "usage_daily features", Query: `
			WITH f AS (
				SELECT a.id, (a.last_login_at AT TIME ZONE 'UTC')::date AS day,
				       (ARRAY['reports', 'dashboards', 'exports', 'alerts', 'integrations', 'api'])[1 + a.id % 6] AS k1,
				       (ARRAY['reports', 'dashboards', 'exports', 'alerts', 'integrations', 'api'])[1 + (a.id % 6 + 1 + (a.id / 6) % 5) % 6] AS k2,
				       1 + floor(random() * 8)::int AS n1, 1 + floor(random() * 4)::int AS n2
				FROM account a
				WHERE (a.last_login_at AT TIME ZONE 'UTC')::date >= $1::date
			)
			INSERT INTO usage_daily (account_id, day, kind, key, n)
			SELECT id, day, 'f', k1, n1 FROM f
			UNION ALL SELECT id, day, 'f', k2, n2 FROM f
			UNION ALL SELECT id, day, 'e', 'feature_used', n1 + n2 FROM f`, Args: []any{start30}},
		// A custom event the day before the last login, for half the active accounts.
		{What: "usage_daily events", Query: `
			INSERT INTO usage_daily (account_id, day, kind, key, n)
			SELECT a.id, (a.last_login_at AT TIME ZONE 'UTC')::date - 1,
			       'e', (ARRAY['report_viewed', 'invite_sent', 'export_csv', 'api_call'])[1 + (a.id / 7) % 4],
			       1 + floor(random() * 5)::int
			FROM account a
			WHERE (a.last_login_at AT TIME ZONE 'UTC')::date > $1::date AND a.id % 2 = 0`, Args: []any{start30}},
		// Users of accounts that logged in within 90 days; some no longer active.
		{What: "account_user_activity", Query: `
			INSERT INTO account_user_activity (account_id, user_key, last_seen_at)
			SELECT a.id, 'u' || u.i,
			       CASE WHEN u.i = 1 THEN a.last_login_at ELSE a.last_login_at - random() * interval '45 days' END
			FROM account a,
			     LATERAL generate_series(1, 1 + floor(random() * least(a.seats, 12))::int) AS u(i)
			WHERE a.last_login_at >= $1::timestamptz - interval '90 days'`, Args: []any{at}},
		{What: "account_metric", Query: `
			INSERT INTO account_metric (account_id, name, value, at)
			SELECT id, 'nps', floor(random() * 11), $1::timestamptz - random() * interval '60 days'
			FROM account WHERE random() < 0.30
			UNION ALL
			SELECT id, 'open_tickets', floor(power(random(), 2) * 10), $1::timestamptz - random() * interval '10 days'
			FROM account WHERE random() < 0.25`, Args: []any{at}},
	}
}

// Seed runs seed steps on one connection of db, with synchronous commit off
// and PostgreSQL's random() seeded with setseed (repeatable data), then
// VACUUM ANALYZE; it returns what each step wrote, for the benchmark's log.
func Seed(tb testing.TB, db *sqlx.DB, setseed float64, steps []SeedStep) string {
	tb.Helper()
	ctx := context.Background()
	conn, err := db.Connx(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	steps = append([]SeedStep{
		{What: "session", Query: `SET synchronous_commit = off`},
		{What: "setseed", Query: `SELECT setseed($1)`, Args: []any{setseed}},
	}, steps...)
	done, err := runSeed(ctx, conn, steps)
	if err != nil {
		tb.Fatal(err)
	}
	return done
}

// runSeed runs seed steps on one connection (so that a setseed step applies
// to the rest), then VACUUM ANALYZE, and returns what each step wrote.
func runSeed(ctx context.Context, conn *sqlx.Conn, steps []SeedStep) (string, error) {
	var sb strings.Builder
	for _, s := range steps {
		start := time.Now()
		res, err := conn.ExecContext(ctx, s.Query, s.Args...)
		if err != nil {
			return "", fmt.Errorf("seed %s: %w", s.What, err)
		}
		if rows, _ := res.RowsAffected(); rows > 0 {
			fmt.Fprintf(&sb, " %s=%d (%.1fs)", s.What, rows, time.Since(start).Seconds())
		}
	}
	start := time.Now()
	if _, err := conn.ExecContext(ctx, `VACUUM ANALYZE`); err != nil {
		return "", err
	}
	fmt.Fprintf(&sb, "; vacuum %.1fs", time.Since(start).Seconds())
	return sb.String(), nil
}

// EnvInt reads a benchmark's size from the environment: def when name is
// unset; a positive whole number (underscores allowed: 1_000_000) otherwise.
func EnvInt(tb testing.TB, name string, def int) int {
	tb.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(strings.ReplaceAll(v, "_", ""))
	if err != nil || n <= 0 {
		tb.Fatalf("%s=%q: want a positive whole number", name, v)
	}
	return n
}
