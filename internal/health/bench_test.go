package health_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/health"
	"github.com/tendhq/tend/internal/segment"
	"github.com/tendhq/tend/internal/testsvc"
)

// Shape of the recompute benchmark. TEND_BENCH_ACCOUNTS and
// TEND_BENCH_CONCURRENCY override the first two.
const (
	benchDefaultAccounts    = 100_000
	benchDefaultConcurrency = 4 // shards run at once, like the worker pool's asynq workers
	benchTarget             = 10 * time.Second
)

func benchEnvInt(b *testing.B, name string, def int) int {
	b.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(strings.ReplaceAll(v, "_", ""))
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive whole number", name, v)
	}
	return n
}

// recomputeRig runs full passes of the segment engine, with or without
// health, on a private database.
type recomputeRig struct {
	b      *testing.B
	db     *testsvc.DB
	clock  *clock.Manual
	engine *segment.Engine
	health *health.Service
	n      int
	conc   int
	passes int
}

type recomputeResult struct {
	name string
	wall time.Duration
	n    int
}

func (r recomputeResult) rate() float64 { return float64(r.n) / r.wall.Seconds() }

// per100k is the wall time scaled to 100,000 accounts.
func (r recomputeResult) per100k() float64 { return r.wall.Seconds() * 100_000 / float64(r.n) }

// BenchmarkHealthRecompute seeds TEND_BENCH_ACCOUNTS accounts (default 100,000)
// with usage rollups, user activity, NPS and open tickets, and sent messages
// with opens, clicks and replies for a tenth of them, then times full passes
// of the segment engine (StartPass, then RunShard for every shard from
// TEND_BENCH_CONCURRENCY goroutines, default 4, as the worker pool runs them)
// with no segments, so that what is timed is profiles and health:
//
//   - nohealth cold / warm: engine.Health nil, with no cached profiles and
//     then with every profile cached: the engine's own cost;
//   - cold (timed as ns/op): every profile uncached and every account never
//     scored: profiles computed, then every account scored;
//   - model: after PutModel with other weights: every account rescored from
//     its cached profile;
//   - unchanged: a later pass the same day: nothing rescored;
//   - next day: the first pass of the next day: every profile and every score
//     recomputed, the daily steady state.
//
// The target is a health recompute of 100,000 accounts in at most 10 s.
// After each pass account_health is checked: one row per account, of the
// expected model version, rescored (or not) as the pass should, and the
// cached profiles hold the stored scores.
func BenchmarkHealthRecompute(b *testing.B) {
	n := benchEnvInt(b, "TEND_BENCH_ACCOUNTS", benchDefaultAccounts)
	conc := benchEnvInt(b, "TEND_BENCH_CONCURRENCY", benchDefaultConcurrency)
	ctx := context.Background()
	db := testsvc.NewDB(b)
	start := time.Now()
	seedRecompute(b, db, n, t0)
	seeded := time.Since(start)

	clk := clock.NewManual(t0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := &recomputeRig{b: b, db: db, clock: clk, engine: segment.NewEngine(db.DB, clk, log), health: health.NewService(db.DB, clk), n: n, conc: conc}

	// Without health: the same passes' cost when nothing is scored.
	noCold := r.pass("nohealth cold", false)
	r.checkHealth(0, 0, false)
	noWarm := r.pass("nohealth warm", false)
	r.checkHealth(0, 0, false)

	var cold recomputeResult
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		r.forget()
		b.StartTimer()
		cold = r.pass("cold", true)
	}
	b.StopTimer()
	r.checkHealth(n, 0, true)

	m := health.Default()
	m.Weights.Usage, m.Weights.Engagement = 25, 30
	v, err := r.health.PutModel(ctx, m, "bench")
	if err != nil {
		b.Fatal(err)
	}
	model := r.pass("model", true)
	r.checkHealth(n, v.Version, true)
	unchanged := r.pass("unchanged", true)
	r.checkHealth(n, v.Version, false)
	clk.Advance(24 * time.Hour)
	nextDay := r.pass("next day", true)
	r.checkHealth(n, v.Version, true)

	for _, p := range []struct {
		key string
		res recomputeResult
	}{{"cold", cold}, {"model", model}, {"unchanged", unchanged}, {"nextday", nextDay}, {"nohealth_cold", noCold}, {"nohealth_warm", noWarm}} {
		b.ReportMetric(p.res.rate(), p.key+"_accounts/s")
		b.ReportMetric(p.res.per100k(), p.key+"_s/100k")
	}
	b.ReportMetric(cold.rate(), "accounts/s")
	b.ReportMetric(cold.per100k(), "s/100k")

	var sb strings.Builder
	fmt.Fprintf(&sb, "health recompute over %d accounts, %d shards at once, batch %d, shard %d (seeded in %s)\n",
		n, conc, r.engine.BatchSize, r.engine.ShardSize, seeded.Round(time.Second))
	for _, res := range []recomputeResult{noCold, noWarm, cold, model, unchanged, nextDay} {
		fmt.Fprintf(&sb, "  %-14s %7.2f s  %8.0f accounts/s  %6.2f s/100k\n", res.name+":", res.wall.Seconds(), res.rate(), res.per100k())
	}
	fmt.Fprintf(&sb, "  cost of health: cold %+.2f s (vs nohealth cold), model change %+.2f s, unchanged %+.2f s, next day %+.2f s (vs nohealth warm / cold)\n",
		(cold.wall - noCold.wall).Seconds(), (model.wall - noWarm.wall).Seconds(), (unchanged.wall - noWarm.wall).Seconds(), (nextDay.wall - noCold.wall).Seconds())
	fmt.Fprintf(&sb, "  target: 100k accounts rescored in <= %s: cold %s, model change %s, next day %s",
		benchTarget, verdict(cold.per100k() <= benchTarget.Seconds()), verdict(model.per100k() <= benchTarget.Seconds()), verdict(nextDay.per100k() <= benchTarget.Seconds()))
	b.Logf("%s", sb.String())
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// pass runs one full pass with or without health, after a vacuum (standing
// in for autovacuum between passes) and a minute on the clock (so that rows
// written by this pass can be told by computed_at), and checks that every
// account was evaluated.
func (r *recomputeRig) pass(name string, withHealth bool) recomputeResult {
	r.b.Helper()
	ctx := context.Background()
	r.vacuum()
	r.clock.Advance(time.Minute)
	r.engine.Health = nil
	if withHealth {
		r.engine.Health = r.health
	}
	r.passes++
	key := fmt.Sprintf("bench:%d", r.passes)

	start := time.Now()
	shards, err := r.engine.StartPass(ctx, key, 0)
	if err != nil {
		r.b.Fatal(err)
	}
	work := make(chan segment.Shard)
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		errs      []error
		evaluated int
	)
	for range r.conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sh := range work {
				st, err := r.engine.RunShard(ctx, sh)
				mu.Lock()
				evaluated += st.Accounts
				if err != nil {
					errs = append(errs, fmt.Errorf("shard [%d, %d): %w", sh.Lo, sh.Hi, err))
				}
				mu.Unlock()
			}
		}()
	}
	for _, sh := range shards {
		work <- sh
	}
	close(work)
	wg.Wait()
	wall := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		r.b.Fatalf("%s pass: %v", name, err)
	}
	if evaluated != r.n {
		r.b.Fatalf("%s pass evaluated %d accounts, want %d", name, evaluated, r.n)
	}
	var finished bool
	if err := r.db.GetContext(ctx, &finished, `SELECT finished_at IS NOT NULL FROM segment_pass WHERE key = $1`, key); err != nil || !finished {
		r.b.Fatalf("%s pass not finished (err %v)", name, err)
	}
	return recomputeResult{name: name, wall: wall, n: r.n}
}

// checkHealth fails unless account_health has want rows (one per account
// when want is n), all of modelVersion, and scored by the pass just run
// (computed_at is now) when rescored, else none of them; and unless every
// cached profile of the day holds its account's stored score and band.
func (r *recomputeRig) checkHealth(want int, modelVersion int64, rescored bool) {
	r.b.Helper()
	now := r.clock.Now()
	var c struct {
		Rows      int `db:"rows"`
		Accounts  int `db:"accounts"`
		Model     int `db:"model"`
		Now       int `db:"now"`
		Today     int `db:"today"`
		Profiles  int `db:"profiles"`
		Disagree  int `db:"disagree"`
		Histories int `db:"histories"`
	}
	err := r.db.Get(&c, `
		SELECT (SELECT count(*) FROM account_health) AS rows,
		       (SELECT count(*) FROM account_health h JOIN account a ON a.id = h.account_id) AS accounts,
		       (SELECT count(*) FROM account_health WHERE model_version = $1) AS model,
		       (SELECT count(*) FROM account_health WHERE computed_at = $2) AS now,
		       (SELECT count(*) FROM account_health WHERE day = ($2::timestamptz AT TIME ZONE 'UTC')::date) AS today,
		       (SELECT count(*) FROM account_profile WHERE day = ($2::timestamptz AT TIME ZONE 'UTC')::date) AS profiles,
		       (SELECT count(*) FROM account_profile p JOIN account_health h ON h.account_id = p.account_id
		        WHERE p.health_score <> h.score OR p.health_band <> h.band OR p.health_change_30d <> h.change_30d) AS disagree,
		       (SELECT count(DISTINCT account_id) FROM health_history) AS histories`, modelVersion, now)
	if err != nil {
		r.b.Fatal(err)
	}
	switch {
	case c.Rows != want || c.Accounts != want:
		r.b.Fatalf("account_health has %d rows (%d of accounts), want %d", c.Rows, c.Accounts, want)
	case c.Model != want:
		r.b.Fatalf("%d of %d scores are of model version %d", c.Model, want, modelVersion)
	case rescored && (c.Now != want || c.Today != want):
		r.b.Fatalf("%d of %d scores computed by this pass (%d of today), want all", c.Now, want, c.Today)
	case !rescored && c.Now != 0:
		r.b.Fatalf("%d scores recomputed by a pass with nothing changed, want none", c.Now)
	case c.Profiles != r.n:
		r.b.Fatalf("%d profiles cached for today, want %d", c.Profiles, r.n)
	case c.Disagree != 0:
		r.b.Fatalf("%d cached profiles disagree with the stored score", c.Disagree)
	case want > 0 && c.Histories != want:
		r.b.Fatalf("%d accounts have a score history, want %d (the first score is history)", c.Histories, want)
	}
}

// forget takes the database back to before any pass with health: no score,
// no history, no cached profile.
func (r *recomputeRig) forget() {
	r.b.Helper()
	if _, err := r.db.Exec(`TRUNCATE account_health, health_history, account_profile`); err != nil {
		r.b.Fatal(err)
	}
}

func (r *recomputeRig) vacuum() {
	r.b.Helper()
	if _, err := r.db.Exec(`VACUUM ANALYZE`); err != nil {
		r.b.Fatal(err)
	}
}

// seedRecompute fills the database with n accounts in set-based SQL, already
// evaluated (as after earlier passes): plans with MRR and seats, signups over
// two years, last logins; daily usage of the last 30 days for active accounts
// (logins on a few days, two of six features on the last login day) and the
// last login for dormant ones; user activity; NPS for 30% and open tickets for
// 25%. One account in ten has two contacts enrolled in a drip and three
// emails each over the last 30 days, with human opens, clicks and replies and
// some machine opens. Random but repeatable (setseed on one connection).
func seedRecompute(b *testing.B, db *testsvc.DB, n int, now time.Time) {
	b.Helper()
	ctx := context.Background()
	conn, err := db.Connx(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	start30 := now.Truncate(24*time.Hour).AddDate(0, 0, -29)
	steps := []struct {
		what  string
		query string
		args  []any
	}{
		{"session", `SET synchronous_commit = off`, nil},
		{"seed", `SELECT setseed(0.1337)`, nil},
		{"account", `
			WITH r AS (
				SELECT g, random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5
				FROM generate_series(1, $1::int) g
			), p AS (
				SELECT r.*,
				       CASE WHEN r1 < 0.50 THEN 'free' WHEN r1 < 0.75 THEN 'starter'
				            WHEN r1 < 0.93 THEN 'pro' ELSE 'enterprise' END AS plan,
				       $2::timestamptz - r4 * interval '730 days' AS signup_at
				FROM r
			)
			INSERT INTO account (external_id, name, plan, mrr, seats, signup_at, tier, last_login_at,
			                     created_at, updated_at, change_version, evaluated_version)
			SELECT 'acc-' || g, 'Account ' || g, plan,
			       CASE plan WHEN 'free' THEN 0 WHEN 'starter' THEN round(49 + r2 * 250)
			                 WHEN 'pro' THEN round(300 + r2 * 2700) ELSE round(3000 + r2 * 47000) END,
			       CASE plan WHEN 'free' THEN 1 + floor(r3 * 3) WHEN 'starter' THEN 3 + floor(r3 * 12)
			                 WHEN 'pro' THEN 10 + floor(r3 * 90) ELSE 50 + floor(r3 * 950) END,
			       signup_at,
			       CASE plan WHEN 'enterprise' THEN 'enterprise' WHEN 'pro' THEN 'mid-market' ELSE 'smb' END,
			       CASE WHEN r5 < 0.08 THEN NULL
			            ELSE greatest(signup_at, $2::timestamptz - power((r5 - 0.08) / 0.92, 3) * interval '150 days') END,
			       signup_at, signup_at, 1, 1
			FROM p`, []any{n, now}},
		// Logins on up to 4 days of the window, ending on the last login.
		{"usage_daily logins", `
			INSERT INTO usage_daily (account_id, day, kind, key, n)
			SELECT a.id, d.day, 'e', 'login', 1 + floor(random() * 6)::int
			FROM account a,
			     LATERAL (SELECT (a.last_login_at AT TIME ZONE 'UTC')::date - i * (1 + a.id % 5)::int AS day
			              FROM generate_series(0, 3) i) d
			WHERE (a.last_login_at AT TIME ZONE 'UTC')::date >= $1::date AND d.day >= $1::date`, []any{start30}},
		{"usage_daily old logins", `
			INSERT INTO usage_daily (account_id, day, kind, key, n)
			SELECT a.id, (a.last_login_at AT TIME ZONE 'UTC')::date, 'e', 'login', 1 + floor(random() * 3)::int
			FROM account a
			WHERE (a.last_login_at AT TIME ZONE 'UTC')::date < $1::date`, []any{start30}},
		// Two distinct features (key features among them) on the last login
		// day, with their feature_used total.
		{"usage_daily features", `
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
			UNION ALL SELECT id, day, 'e', 'feature_used', n1 + n2 FROM f`, []any{start30}},
		{"account_user_activity", `
			INSERT INTO account_user_activity (account_id, user_key, last_seen_at)
			SELECT a.id, 'u' || u.i,
			       CASE WHEN u.i = 1 THEN a.last_login_at ELSE a.last_login_at - random() * interval '45 days' END
			FROM account a,
			     LATERAL generate_series(1, 1 + floor(random() * least(a.seats, 12))::int) AS u(i)
			WHERE a.last_login_at >= $1::timestamptz - interval '90 days'`, []any{now}},
		{"account_metric", `
			INSERT INTO account_metric (account_id, name, value, at)
			SELECT id, 'nps', floor(random() * 11), $1::timestamptz - random() * interval '60 days'
			FROM account WHERE random() < 0.30
			UNION ALL
			SELECT id, 'open_tickets', floor(power(random(), 2) * 10), $1::timestamptz - random() * interval '10 days'
			FROM account WHERE random() < 0.25`, []any{now}},
		{"campaign", `
			INSERT INTO campaign (name, kind, topic, status, current_version, created_at, updated_at, activated_at)
			VALUES ('onboarding', 'drip', 'product', 'active', 1, $1, $1, $1)`, []any{now.AddDate(0, -3, 0)}},
		{"contact", `
			INSERT INTO contact (external_id, account_id, email, name, created_at, updated_at)
			SELECT a.external_id || '-u' || i, a.id, a.external_id || '-u' || i || '@example.com', 'User ' || i, a.signup_at, a.signup_at
			FROM account a, generate_series(1, 2) i WHERE a.id % 10 = 0`, nil},
		{"enrollment", `
			INSERT INTO enrollment (campaign_id, version, account_id, entry_number, contacts, status, step, anchor_at, entered_at)
			SELECT c.id, 1, a.id, 1, (SELECT array_agg(ct.id ORDER BY ct.id) FROM contact ct WHERE ct.account_id = a.id),
			       'active', 3, $1::timestamptz - interval '2 days', $1::timestamptz - interval '26 days'
			FROM campaign c, account a WHERE a.id % 10 = 0`, []any{now}},
		// Steps sent 25, 14 and 2 days ago (give or take a few hours).
		{"message", `
			INSERT INTO message (enrollment_id, campaign_id, version, step_id, contact_id, channel, status, due_at, sent_at,
			                     attempts, created_at, updated_at)
			SELECT e.id, e.campaign_id, 1, 's' || s.i, ct.id, 'email', 'sent', t.at, t.at, 1, t.at, t.at
			FROM enrollment e, unnest(e.contacts) AS ct(id),
			     (VALUES (1, 25), (2, 14), (3, 2)) AS s(i, days_ago),
			     LATERAL (SELECT $1::timestamptz - s.days_ago * interval '1 day' - random() * interval '6 hours' AS at) t`, []any{now}},
		// Human opens of half the messages, clicks of a fifth, replies of one
		// in twenty, some opened again; privacy-proxy opens of a tenth.
		{"engagement_event", `
			WITH m AS (SELECT id, sent_at, random() AS r1, random() AS r2, random() AS r3, random() AS r4 FROM message)
			INSERT INTO engagement_event (message_id, kind, human, at, metadata)
			SELECT id, 'open', true, sent_at + interval '3 hours', '{"user_agent": "Mozilla/5.0 (Macintosh)"}'::jsonb FROM m WHERE r1 < 0.5
			UNION ALL SELECT id, 'open', true, sent_at + interval '1 day', '{"user_agent": "Mozilla/5.0 (Macintosh)"}'::jsonb FROM m WHERE r1 < 0.2
			UNION ALL SELECT id, 'click', true, sent_at + interval '4 hours', '{"user_agent": "Mozilla/5.0 (Macintosh)"}'::jsonb FROM m WHERE r2 < 0.2
			UNION ALL SELECT id, 'reply', true, sent_at + interval '6 hours', '{}'::jsonb FROM m WHERE r3 < 0.05
			UNION ALL SELECT id, 'open', false, sent_at + interval '20 seconds', '{"user_agent": "Mozilla/5.0"}'::jsonb FROM m WHERE r4 < 0.1`, nil},
	}
	var sb strings.Builder
	for _, s := range steps {
		start := time.Now()
		res, err := conn.ExecContext(ctx, s.query, s.args...)
		if err != nil {
			b.Fatalf("seed %s: %v", s.what, err)
		}
		if rows, _ := res.RowsAffected(); rows > 0 && s.what != "seed" {
			fmt.Fprintf(&sb, " %s=%d (%.1fs)", s.what, rows, time.Since(start).Seconds())
		}
	}
	start := time.Now()
	if _, err := conn.ExecContext(ctx, `VACUUM ANALYZE`); err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded:%s; vacuum %.1fs", sb.String(), time.Since(start).Seconds())
}
