package health_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
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
//   - unchanged: a pass a minute later: nothing rescored but the few scores
//     whose validity ran out in that minute;
//   - next day: the first pass of the next day: the profiles and scores
//     whose validity ran out (a window lost a data point, the recency of a
//     last login moved) recomputed, and those accounts re-evaluated.
//
// The target is a health recompute of 100,000 accounts in at most 10 s.
// After each pass account_health is checked: one row per account, of the
// expected model version, rescored (or not) as the pass should, and the
// cached profiles hold the stored scores.
func BenchmarkHealthRecompute(b *testing.B) {
	n := testsvc.EnvInt(b, "TEND_BENCH_ACCOUNTS", benchDefaultAccounts)
	conc := testsvc.EnvInt(b, "TEND_BENCH_CONCURRENCY", benchDefaultConcurrency)
	ctx := context.Background()
	db := testsvc.NewDB(b)
	start := time.Now()
	seedRecompute(b, db, n, t0)
	seeded := time.Since(start)

	clk := clock.NewManual(t0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := &recomputeRig{b: b, db: db, clock: clk, engine: segment.NewEngine(db.DB, clk, log), health: health.NewService(db.DB, clk), n: n, conc: conc}

	// Without health: the same passes' cost when nothing is scored.
	noCold := r.pass("nohealth cold", false, n)
	r.checkHealth(0, 0, rescoredNone)
	noWarm := r.pass("nohealth warm", false, 0)
	r.checkHealth(0, 0, rescoredNone)

	var cold recomputeResult
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		r.forget()
		b.StartTimer()
		cold = r.pass("cold", true, n)
	}
	b.StopTimer()
	r.checkHealth(n, 0, rescoredAll)

	m := health.Default()
	m.Weights.Usage, m.Weights.Engagement = 25, 30
	v, err := r.health.PutModel(ctx, m, "bench")
	if err != nil {
		b.Fatal(err)
	}
	model := r.pass("model", true, n)
	r.checkHealth(n, v.Version, rescoredAll)
	// A minute later: only the few scores whose validity ran out in that
	// minute (a last login's whole days ticking over) are rescored.
	unchanged := r.pass("unchanged", true, -1)
	r.checkHealth(n, v.Version, rescoredFew)
	clk.Advance(24 * time.Hour)
	nextDay := r.pass("next day", true, -1)
	r.checkHealth(n, v.Version, rescoredSome)

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
	fmt.Fprintf(&sb, "  cost of health: cold %+.2f s (vs nohealth cold), model change %+.2f s, unchanged %+.2f s (vs nohealth warm)\n",
		(cold.wall - noCold.wall).Seconds(), (model.wall - noWarm.wall).Seconds(), (unchanged.wall - noWarm.wall).Seconds())
	fmt.Fprintf(&sb, "  next day: %d of %d accounts re-evaluated, their profiles or scores out of validity, in %.2f s\n",
		nextDay.n, n, nextDay.wall.Seconds())
	fmt.Fprintf(&sb, "  target: 100k accounts rescored in <= %s: cold %s, model change %s",
		benchTarget, verdict(cold.per100k() <= benchTarget.Seconds()), verdict(model.per100k() <= benchTarget.Seconds()))
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
// pass runs a full pass and checks it evaluated want accounts: every one, or
// none when nothing can have changed since their stamps (internal/segment),
// or any number when want is negative (the result then counts those).
func (r *recomputeRig) pass(name string, withHealth bool, want int) recomputeResult {
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
	if want >= 0 && evaluated != want {
		r.b.Fatalf("%s pass evaluated %d accounts, want %d", name, evaluated, want)
	}
	n := r.n
	if want < 0 {
		n = evaluated
	}
	var finished bool
	if err := r.db.GetContext(ctx, &finished, `SELECT finished_at IS NOT NULL FROM segment_pass WHERE key = $1`, key); err != nil || !finished {
		r.b.Fatalf("%s pass not finished (err %v)", name, err)
	}
	return recomputeResult{name: name, wall: wall, n: n}
}

// What a pass should have rescored.
type rescoring int

const (
	rescoredNone rescoring = iota
	rescoredFew            // under 1%
	rescoredSome           // some, not all
	rescoredAll
)

// checkHealth fails unless account_health has want rows (one per account
// when want is n), all of modelVersion, and scored by the pass just run
// (computed_at is now) as rescored says; and unless every account has a
// cached profile valid now, holding its account's stored score and band.
func (r *recomputeRig) checkHealth(want int, modelVersion int64, rescored rescoring) {
	r.b.Helper()
	now := r.clock.Now()
	var c struct {
		Rows      int `db:"rows"`
		Accounts  int `db:"accounts"`
		Model     int `db:"model"`
		Now       int `db:"now"`
		Today     int `db:"today"`
		Profiles  int `db:"profiles"`
		Histories int `db:"histories"`
	}
	err := r.db.Get(&c, `
		SELECT (SELECT count(*) FROM account_health) AS rows,
		       (SELECT count(*) FROM account_health h JOIN account a ON a.id = h.account_id) AS accounts,
		       (SELECT count(*) FROM account_health WHERE model_version = $1) AS model,
		       (SELECT count(*) FROM account_health WHERE computed_at = $2) AS now,
		       (SELECT count(*) FROM account_health WHERE day = ($2::timestamptz AT TIME ZONE 'UTC')::date) AS today,
		       (SELECT count(*) FROM account_profile WHERE valid_until > $2) AS profiles,
		       (SELECT count(DISTINCT account_id) FROM health_history) AS histories`, modelVersion, now)
	if err != nil {
		r.b.Fatal(err)
	}
	switch {
	case c.Rows != want || c.Accounts != want:
		r.b.Fatalf("account_health has %d rows (%d of accounts), want %d", c.Rows, c.Accounts, want)
	case c.Model != want:
		r.b.Fatalf("%d of %d scores are of model version %d", c.Model, want, modelVersion)
	case rescored == rescoredAll && (c.Now != want || c.Today != want):
		r.b.Fatalf("%d of %d scores computed by this pass (%d of today), want all", c.Now, want, c.Today)
	case rescored == rescoredSome && (c.Now == 0 || c.Now >= want):
		r.b.Fatalf("%d of %d scores computed by this pass, want some (those whose validity ran out), not all", c.Now, want)
	case rescored == rescoredFew && c.Now*100 >= want:
		r.b.Fatalf("%d of %d scores recomputed a minute after they all were, want under 1%%", c.Now, want)
	case rescored == rescoredNone && c.Now != 0:
		r.b.Fatalf("%d scores recomputed by a pass with nothing changed, want none", c.Now)
	case c.Profiles != r.n:
		r.b.Fatalf("%d profiles cached and valid now, want %d", c.Profiles, r.n)
	case want > 0 && c.Histories != want:
		r.b.Fatalf("%d accounts have a score history, want %d (the first score is history)", c.Histories, want)
	}
	// Cached profiles show the stored scores (a sample: the first thousand).
	var stored []struct {
		ID     int64  `db:"account_id"`
		Score  int    `db:"score"`
		Band   string `db:"band"`
		Change int    `db:"change_30d"`
	}
	if err := r.db.Select(&stored, `SELECT account_id, score, band, change_30d FROM account_health ORDER BY account_id LIMIT 1000`); err != nil {
		r.b.Fatal(err)
	}
	ids := make([]int64, len(stored))
	for i, h := range stored {
		ids[i] = h.ID
	}
	cached, err := account.CachedProfiles(context.Background(), r.db, ids, now, account.Maps{})
	if err != nil {
		r.b.Fatal(err)
	}
	for _, h := range stored {
		p := cached[h.ID].Profile
		if p == nil || p.HealthScore != h.Score || p.HealthBand != h.Band || p.HealthChange30d != h.Change {
			r.b.Fatalf("account %d: cached profile %+v disagrees with its stored score %+v", h.ID, p, h)
		}
	}
}

// forget takes the database back to before any pass with health: no score,
// no history, no cached profile.
func (r *recomputeRig) forget() {
	r.b.Helper()
	if _, err := r.db.Exec(`TRUNCATE account_health, health_history, account_profile, segment_stamp`); err != nil {
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
	// Already evaluated, as after earlier passes.
	steps := append(testsvc.AccountSteps(n, now),
		testsvc.SeedStep{What: "evaluated", Query: `UPDATE account SET evaluated_version = change_version`})
	steps = append(steps, []testsvc.SeedStep{
		{What: "campaign", Query: `
			INSERT INTO campaign (name, kind, topic, status, current_version, created_at, updated_at, activated_at)
			VALUES ('onboarding', 'drip', 'product', 'active', 1, $1, $1, $1)`, Args: []any{now.AddDate(0, -3, 0)}},
		{What: "contact", Query: `
			INSERT INTO contact (external_id, account_id, email, name, created_at, updated_at)
			SELECT a.external_id || '-u' || i, a.id, a.external_id || '-u' || i || '@example.com', 'User ' || i, a.signup_at, a.signup_at
			FROM account a, generate_series(1, 2) i WHERE a.id % 10 = 0`},
		{What: "enrollment", Query: `
			INSERT INTO enrollment (campaign_id, version, account_id, entry_number, contacts, status, step, anchor_at, entered_at)
			SELECT c.id, 1, a.id, 1, (SELECT array_agg(ct.id ORDER BY ct.id) FROM contact ct WHERE ct.account_id = a.id),
			       'active', 3, $1::timestamptz - interval '2 days', $1::timestamptz - interval '26 days'
			FROM campaign c, account a WHERE a.id % 10 = 0`, Args: []any{now}},
		// Steps sent 25, 14 and 2 days ago (give or take a few hours).
		{What: "message", Query: `
			INSERT INTO message (enrollment_id, campaign_id, version, step_id, contact_id, channel, status, due_at, sent_at,
			                     attempts, created_at, updated_at)
			SELECT e.id, e.campaign_id, 1, 's' || s.i, ct.id, 'email', 'sent', t.at, t.at, 1, t.at, t.at
			FROM enrollment e, unnest(e.contacts) AS ct(id),
			     (VALUES (1, 25), (2, 14), (3, 2)) AS s(i, days_ago),
			     LATERAL (SELECT $1::timestamptz - s.days_ago * interval '1 day' - random() * interval '6 hours' AS at) t`, Args: []any{now}},
		// Human opens of half the messages, clicks of a fifth, replies of one
		// in twenty, some opened again; privacy-proxy opens of a tenth.
		{What: "engagement_event", Query: `
			WITH m AS (SELECT id, sent_at, random() AS r1, random() AS r2, random() AS r3, random() AS r4 FROM message)
			INSERT INTO engagement_event (message_id, kind, human, at, metadata)
			SELECT id, 'open', true, sent_at + interval '3 hours', '{"user_agent": "Mozilla/5.0 (Macintosh)"}'::jsonb FROM m WHERE r1 < 0.5
			UNION ALL SELECT id, 'open', true, sent_at + interval '1 day', '{"user_agent": "Mozilla/5.0 (Macintosh)"}'::jsonb FROM m WHERE r1 < 0.2
			UNION ALL SELECT id, 'click', true, sent_at + interval '4 hours', '{"user_agent": "Mozilla/5.0 (Macintosh)"}'::jsonb FROM m WHERE r2 < 0.2
			UNION ALL SELECT id, 'reply', true, sent_at + interval '6 hours', '{}'::jsonb FROM m WHERE r3 < 0.05
			UNION ALL SELECT id, 'open', false, sent_at + interval '20 seconds', '{"user_agent": "Mozilla/5.0"}'::jsonb FROM m WHERE r4 < 0.1`},
	}...)
	b.Logf("seeded:%s", testsvc.Seed(b, db.DB, 0.1337, steps))
}
