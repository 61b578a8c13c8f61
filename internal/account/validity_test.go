package account_test

import (
	"context"
	"fmt"
	"math/rand"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/testsvc"
)

// TestCachedProfilesHoldUntilTheirValidityRunsOut seeds accounts with data
// points scattered over the windows (logins, features and events on various
// days, a rollup dated days ahead of the clock, active users, active-users
// snapshots, emails and engagement), then moves the clock by minutes, hours
// and days over two months with no new data, and at every step compares the
// profiles read through the cache with profiles computed afresh: a cached
// profile must never outlive what it was computed from. It also checks that
// the cache is kept across midnights where nothing leaves a window, which is
// the point of the validity.
func TestCachedProfilesHoldUntilTheirValidityRunsOut(t *testing.T) {
	s, clk, db := newStore(t)
	ctx := context.Background()
	rng := rand.New(rand.NewSource(11))
	const n = 40
	var inputs []account.AccountInput
	for i := 0; i < n; i++ {
		signup := t0.AddDate(0, 0, -60)
		inputs = append(inputs, account.AccountInput{ID: fmt.Sprintf("a%02d", i), Seats: ptr(1 + rng.Intn(10)), SignupAt: &signup})
	}
	if _, err := s.UpsertAccounts(ctx, inputs); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`
		INSERT INTO campaign (name, kind, topic, status, current_version, created_at, updated_at)
		VALUES ('c', 'drip', 'general', 'active', 1, $1, $1)`, t0); err != nil {
		t.Fatal(err)
	}
	day := func(offset int) time.Time { return t0.Truncate(24*time.Hour).AddDate(0, 0, offset) }
	ids := make([]int64, n)
	for i := range ids {
		ext := fmt.Sprintf("a%02d", i)
		id := accountID(t, db, ext)
		ids[i] = id
		// Rollups on a few days between 45 days ago and 3 days ahead.
		for k := 0; k < rng.Intn(5); k++ {
			kind, key := "e", "login"
			switch rng.Intn(3) {
			case 1:
				kind, key = "f", "reports"
			case 2:
				key = "invite_sent"
			}
			db.MustExec(`INSERT INTO usage_daily (account_id, day, kind, key, n) VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT DO NOTHING`, id, day(-45+rng.Intn(49)), kind, key, 1+rng.Intn(4))
		}
		for k := 0; k < rng.Intn(3); k++ {
			db.MustExec(`INSERT INTO account_user_activity (account_id, user_key, last_seen_at) VALUES ($1, $2, $3)`,
				id, fmt.Sprintf("u%d", k), t0.Add(-time.Duration(rng.Int63n(int64(40*24*time.Hour)))))
		}
		if rng.Intn(3) == 0 {
			db.MustExec(`INSERT INTO account_metric (account_id, name, value, at) VALUES ($1, 'active_users', $2, $3)`,
				id, rng.Intn(9), t0.Add(-time.Duration(rng.Int63n(int64(35*24*time.Hour)))))
		}
		if rng.Intn(2) == 0 {
			var contact int64
			if err := db.Get(&contact, `INSERT INTO contact (account_id, external_id, email, created_at, updated_at)
				VALUES ($1, $2, $2 || '@example.com', $3, $3) RETURNING id`, id, "c-"+ext, t0); err != nil {
				t.Fatal(err)
			}
			for k := 0; k < 1+rng.Intn(3); k++ {
				sent := t0.Add(-time.Duration(rng.Int63n(int64(50 * 24 * time.Hour))))
				channel := []string{"email", "in_app"}[rng.Intn(2)]
				var msg int64
				if err := db.Get(&msg, `
					INSERT INTO message (campaign_id, version, step_id, contact_id, channel, status, due_at, sent_at, created_at, updated_at)
					SELECT (SELECT id FROM campaign), 1, $1, $2, $3, 'sent', $4, $4, $4, $4 RETURNING id`,
					fmt.Sprint("s", k), contact, channel, sent); err != nil {
					t.Fatal(err)
				}
				for e := 0; e < rng.Intn(3); e++ {
					kind := []string{"open", "click", "reply", "nudge_dismiss"}[rng.Intn(4)]
					at := sent.Add(time.Duration(rng.Int63n(int64(t0.Sub(sent)) + 1)))
					db.MustExec(`INSERT INTO engagement_event (message_id, kind, human, at) VALUES ($1, $2, $3, $4)`,
						msg, kind, rng.Intn(4) > 0, at)
				}
			}
		}
	}

	const stamps = `SELECT account_id, valid_until AS stamp FROM account_profile`
	moves := []time.Duration{time.Minute, 37 * time.Minute, 5 * time.Hour, 11*time.Hour + 3*time.Minute, 24 * time.Hour, 26 * time.Hour}
	var tally testsvc.CacheTally
	for step := 0; step < 120; step++ {
		before := db.Stamps(t, stamps)
		prev := clk.Now()
		if step > 0 {
			clk.Advance(moves[rng.Intn(len(moves))])
		}
		now := clk.Now()
		got, err := account.CachedProfiles(ctx, db, ids, now, account.AllMaps)
		if err != nil {
			t.Fatal(err)
		}
		want, err := account.Profiles(ctx, db, ids, now)
		if err != nil {
			t.Fatal(err)
		}
		sameProfiles(t, fmt.Sprintf("step %d at %s", step, now.Format(time.RFC3339)), ids, want, got)
		for _, id := range ids {
			if v := got[id].ValidUntil; !v.After(now) {
				t.Fatalf("step %d: account %d read with validity %s, not after now %s", step, id, v, now)
			}
		}
		if step > 0 {
			tally.Add(ids, before, db.Stamps(t, stamps), prev, now)
		}
	}
	tally.Check(t, "profile")
}
