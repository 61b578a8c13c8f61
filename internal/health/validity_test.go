package health_test

import (
	"fmt"
	"math/rand"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/testsvc"
)

// TestStoredScoresHoldUntilTheirValidityRunsOut scores accounts whose last
// logins fall before, inside and after the model's recency ramp, with emails
// answered and unanswered (half the accounts with one still answerable), nudges, and scores in the
// history of the last 35 days, then moves the clock by minutes, hours and
// days over six weeks with no new data. At every step the scores Refresh
// keeps or recomputes must be those a fresh scoring gives, and the
// profiles' validity must not reach past now. It also checks that scores are
// kept across midnights, which is the point of the validity.
func TestStoredScoresHoldUntilTheirValidityRunsOut(t *testing.T) {
	f := newFixture(t)
	rng := rand.New(rand.NewSource(5))
	const n = 30
	if _, err := f.db.Exec(`
		INSERT INTO campaign (name, kind, topic, status, current_version, created_at, updated_at)
		VALUES ('c', 'drip', 'general', 'active', 1, $1, $1)`, t0); err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, n)
	for i := 0; i < n; i++ {
		ext := fmt.Sprintf("a%02d", i)
		features := []string{"reports", "dashboards", "exports", "alerts"}[:rng.Intn(4)]
		f.account(ext, 1000, rng.Intn(3), rng.Intn(4), features, float64(rng.Intn(11)), float64(rng.Intn(3)))
		if rng.Intn(2) == 0 {
			f.lastLoginAt(ext, t0.Add(-time.Duration(rng.Int63n(int64(40*24*time.Hour)))))
		}
		id := f.id(ext)
		ids[i] = id
		for k := 0; k < rng.Intn(3); k++ {
			f.db.MustExec(`INSERT INTO health_history (account_id, at, score, band, components, model_version)
				VALUES ($1, $2, $3, 'neutral', '[]', 0)`, id, t0.Add(-time.Duration(rng.Int63n(int64(35*24*time.Hour)))), rng.Intn(100))
		}
		var contact int64
		if err := f.db.Get(&contact, `INSERT INTO contact (account_id, external_id, email, created_at, updated_at)
			VALUES ($1, $2, $2 || '@example.com', $3, $3) RETURNING id`, id, "c-"+ext, t0); err != nil {
			t.Fatal(err)
		}
		for k := 0; k < rng.Intn(5)+i%2; k++ {
			sent := t0.Add(-time.Duration(rng.Int63n(int64(35 * 24 * time.Hour))))
			if k == 0 && i%2 == 1 {
				sent = t0.Add(-time.Duration(rng.Int63n(int64(2 * 24 * time.Hour)))) // still answerable
			}
			channel := []string{"email", "email", "in_app"}[rng.Intn(3)]
			var msg int64
			if err := f.db.Get(&msg, `
				INSERT INTO message (campaign_id, version, step_id, contact_id, channel, status, due_at, sent_at, created_at, updated_at)
				SELECT (SELECT id FROM campaign), 1, $1, $2, $3, 'sent', $4, $4, $4, $4 RETURNING id`,
				fmt.Sprint("s", k), contact, channel, sent); err != nil {
				t.Fatal(err)
			}
			if rng.Intn(2) == 0 {
				kind := []string{"open", "click", "reply", "nudge_dismiss"}[rng.Intn(4)]
				f.db.MustExec(`INSERT INTO engagement_event (message_id, kind, human, at) VALUES ($1, $2, true, $3)`,
					msg, kind, sent.Add(time.Duration(rng.Int63n(int64(t0.Sub(sent))+1))))
			}
		}
	}

	const stamps = `SELECT account_id, computed_at AS stamp FROM account_health`
	moves := []time.Duration{time.Minute, 41 * time.Minute, 6 * time.Hour, 13*time.Hour + 7*time.Minute, 24 * time.Hour, 30 * time.Hour}
	var tally testsvc.CacheTally
	for step := 0; step < 100; step++ {
		before := f.db.Stamps(t, stamps)
		prev := f.clock.Now()
		if step > 0 {
			f.clock.Advance(moves[rng.Intn(len(moves))])
		}
		now := f.clock.Now()
		profiles, err := account.CachedProfiles(f.ctx, f.db, ids, now, account.Maps{Features: true, NoHealth: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.health.Refresh(f.ctx, now, profiles); err != nil {
			t.Fatal(err)
		}
		plain := map[int64]*account.Profile{}
		for id, c := range profiles {
			plain[id] = c.Profile
			if !c.ValidUntil.After(now) {
				t.Fatalf("step %d: account %d valid until %s, not after now %s", step, id, c.ValidUntil, now)
			}
		}
		fresh, err := f.health.FreshScores(f.ctx, now, plain)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			p, w := profiles[id].Profile, fresh[id]
			if p.HealthScore != w.Score || p.HealthBand != w.Band || p.HealthChange30d != w.Change30d {
				t.Fatalf("step %d at %s: account %d has score %d, band %s, change %d; scored afresh %d, %s, %d",
					step, now.Format(time.RFC3339), id, p.HealthScore, p.HealthBand, p.HealthChange30d, w.Score, w.Band, w.Change30d)
			}
		}
		if step > 0 {
			tally.Add(ids, before, f.db.Stamps(t, stamps), prev, now)
		}
	}
	tally.Check(t, "score")
}
