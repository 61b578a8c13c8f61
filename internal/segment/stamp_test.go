package segment

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
)

// fakeScorer stands in for the health service: a score that is a function of
// the account's version, the model version and the clock, changing at every
// UTC midnight and saying so (the Scorer's contract: a profile's ValidUntil
// is lowered to when its score may change), so that the stamps' handling of
// health is tested without the health package.
type fakeScorer struct{ model atomic.Int64 }

func (s *fakeScorer) ModelVersion(context.Context) (int64, error) { return s.model.Load(), nil }

func (s *fakeScorer) Refresh(_ context.Context, now time.Time, profiles map[int64]account.Cached) error {
	m := s.model.Load()
	midnight := now.UTC().Truncate(24 * time.Hour).Add(24 * time.Hour)
	for id, c := range profiles {
		c.Profile.HealthScore = fakeScore(c.Version, now, m)
		if midnight.Before(c.ValidUntil) {
			c.ValidUntil = midnight
		}
		profiles[id] = c
	}
	return nil
}

func fakeScore(version int64, now time.Time, model int64) int {
	day := now.UTC().Unix() / 86400
	return int((version*37 + day*13 + model*29) % 100)
}

// stampSegments cover every kind of time dependence, and none.
var stampSegments = []Input{
	{Name: "pro", Predicate: `plan == "pro"`},
	{Name: "active-big", Predicate: `seats >= 10 && logins_7d >= 1`},
	{Name: "flagged", Predicate: `traits.flag == true`},
	{Name: "healthy", Predicate: `health_score >= 50`},
	{Name: "new", Predicate: `days_since_signup >= 5 && days_since_signup <= 9`},
	{Name: "every-third-day", Predicate: `days_since(signup_at) % 3 == 0`},
	{Name: "quiet", Predicate: `days_since_last_login >= 2`},
	{Name: "quiet-paid", Predicate: `plan != "free" && days_since(last_login_at) >= 3`},
	{Name: "both", Predicate: `days_since_signup % 2 == 0 && days_since_last_login % 2 == 1`},
	{Name: "young", Predicate: `now() - signup_at < duration("100h")`},
}

// bruteForce evaluates every live segment for every account at the clock,
// the way a full pass without stamps did, from profiles computed afresh (not
// read through the cache, whose validity is under test too): the expected
// membership, as "segment/account" keys.
func (f *fixture) bruteForce(scorer *fakeScorer) map[string]bool {
	f.t.Helper()
	ctx := context.Background()
	var segs []Segment
	if err := f.db.Select(&segs, `SELECT id, name, predicate, generation FROM segment WHERE deleted_at IS NULL`); err != nil {
		f.t.Fatal(err)
	}
	var accs []struct {
		ID         int64  `db:"id"`
		ExternalID string `db:"external_id"`
		Version    int64  `db:"change_version"`
	}
	if err := f.db.Select(&accs, `SELECT id, external_id, change_version FROM account ORDER BY id`); err != nil {
		f.t.Fatal(err)
	}
	ids := make([]int64, len(accs))
	for i, a := range accs {
		ids[i] = a.ID
	}
	now := f.clock.Now()
	fresh, err := account.Profiles(ctx, f.db.DB, ids, now)
	if err != nil {
		f.t.Fatal(err)
	}
	profiles := make(map[int64]account.Cached, len(fresh))
	for _, a := range accs {
		profiles[a.ID] = account.Cached{Profile: fresh[a.ID], Version: a.Version, ValidUntil: now.Add(account.MaxValidity)}
	}
	if scorer != nil {
		scorer.Refresh(ctx, now, profiles)
	}
	out := map[string]bool{}
	var m Matcher
	for _, s := range segs {
		pred, err := Compile(s.Predicate, f.clock)
		if err != nil {
			f.t.Fatal(err)
		}
		for _, a := range accs {
			if ok, _ := m.Match(pred, profiles[a.ID].Profile); ok {
				out[s.Name+"/"+a.ExternalID] = true
			}
		}
	}
	return out
}

// open returns the open memberships as "segment/account" keys.
func (f *fixture) open() map[string]bool {
	f.t.Helper()
	var keys []string
	if err := f.db.Select(&keys, `
		SELECT s.name || '/' || a.external_id FROM segment_membership m
		JOIN segment s ON s.id = m.segment_id JOIN account a ON a.id = m.account_id
		WHERE m.exited_at IS NULL`); err != nil {
		f.t.Fatal(err)
	}
	out := map[string]bool{}
	for _, k := range keys {
		out[k] = true
	}
	return out
}

func (f *fixture) agree(step string, scorer *fakeScorer) {
	f.t.Helper()
	want, got := f.bruteForce(scorer), f.open()
	var diffs []string
	for k := range want {
		if !got[k] {
			diffs = append(diffs, "missing "+k)
		}
	}
	for k := range got {
		if !want[k] {
			diffs = append(diffs, "extra "+k)
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		if len(diffs) > 20 {
			diffs = append(diffs[:20], "…")
		}
		f.t.Fatalf("%s at %s: membership differs from a brute-force evaluation:\n%s", step, f.clock.Now().Format(time.RFC3339), strings.Join(diffs, "\n"))
	}
}

// TestStampedPassesAgreeWithBruteForce runs full passes (which skip what the
// stamps say cannot have changed) over randomised accounts while the clock
// moves by minutes, hours and days (and now and then back), data changes (with and without the
// on-change evaluation), segments are edited (with and without their build)
// and the health model changes, and after every pass compares membership
// with a brute-force evaluation of every segment for every account.
func TestStampedPassesAgreeWithBruteForce(t *testing.T) {
	for _, seed := range []int64{1, 2, 3} {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			f := newFixture(t)
			ctx := context.Background()
			rng := rand.New(rand.NewSource(seed))
			scorer := &fakeScorer{}
			f.engine.Health = scorer
			f.engine.BatchSize = 16

			const n = 90
			plans := []string{"free", "starter", "pro"}
			for i := 0; i < n; i++ {
				signup := t0.Add(-time.Duration(rng.Int63n(int64(20 * 24 * time.Hour))))
				f.account(fmt.Sprintf("a%02d", i), account.AccountInput{
					Plan: ptr(plans[rng.Intn(3)]), Seats: ptr(rng.Intn(20)), SignupAt: &signup,
					Traits: json.RawMessage(fmt.Sprintf(`{"flag": %v}`, rng.Intn(2) == 0)),
				})
				if rng.Intn(4) > 0 {
					// A login somewhere between signup and now.
					f.logins(fmt.Sprintf("a%02d", i), 1, signup.Add(time.Duration(rng.Int63n(int64(t0.Sub(signup))))))
				}
			}
			// A segment reading now() makes every pass evaluate every
			// account (against it); without one, most are skipped.
			withNow := seed != 2
			for _, in := range stampSegments {
				if in.Name != "young" || withNow {
					f.create(in.Name, in.Predicate)
				}
			}
			f.pass("fullpass:0", 0)
			f.agree("first pass", scorer)

			// Mostly forward; now and then back (a demo clock reset, a test).
			moves := []time.Duration{0, time.Minute, 17 * time.Minute, time.Hour, 3 * time.Hour, 7*time.Hour + 13*time.Minute, 26 * time.Hour, -95 * time.Minute}
			skipped := 0
			for step := 1; step <= 40; step++ {
				f.clock.Advance(moves[rng.Intn(len(moves))])
				what := []string{}
				if rng.Intn(3) == 0 {
					// Data changes: logins (at most a day ago), plan and seats.
					for k := 0; k < 1+rng.Intn(5); k++ {
						id := fmt.Sprintf("a%02d", rng.Intn(n))
						if rng.Intn(2) == 0 {
							f.logins(id, 1, f.clock.Now().Add(-time.Duration(rng.Int63n(int64(24*time.Hour)))))
						} else {
							f.account(id, account.AccountInput{Plan: ptr(plans[rng.Intn(3)]), Seats: ptr(rng.Intn(20))})
						}
					}
					what = append(what, "data")
					if rng.Intn(2) == 0 {
						f.dirty()
						what = append(what, "on-change")
					}
				}
				if rng.Intn(8) == 0 {
					// Edit a segment back and forth.
					pred := `days_since_last_login >= 2`
					if s, _ := f.segments.Get(ctx, "quiet"); s.Predicate == pred {
						pred = `days_since_last_login >= 1`
					}
					seg, err := f.segments.Update(ctx, "quiet", Input{Predicate: pred})
					if err != nil {
						t.Fatal(err)
					}
					what = append(what, "edit")
					if rng.Intn(2) == 0 {
						f.build(seg)
						what = append(what, "build")
					}
				}
				if rng.Intn(8) == 0 {
					scorer.model.Add(1)
					what = append(what, "model")
				}
				st := f.pass(fmt.Sprintf("fullpass:%d", step), 0)
				skipped += n - st.Accounts
				f.agree(fmt.Sprintf("step %d (%s)", step, strings.Join(what, ", ")), scorer)
			}
			if !withNow && skipped == 0 {
				t.Fatal("no pass skipped any account")
			}
			t.Logf("accounts skipped over 40 passes: %d of %d", skipped, 40*n)
		})
	}
}

// TestRacingPassesAreRepaired runs passes concurrently while the clock moves
// (so that two evaluations of one account may disagree about a day count and
// interleave their writes): the next quiet pass must leave membership as a
// brute-force evaluation says.
func TestRacingPassesAreRepaired(t *testing.T) {
	f := newFixture(t)
	rng := rand.New(rand.NewSource(7))
	f.engine.BatchSize = 4
	const n = 60
	for i := 0; i < n; i++ {
		signup := t0.Add(-time.Duration(rng.Int63n(int64(12 * 24 * time.Hour))))
		f.account(fmt.Sprintf("a%02d", i), account.AccountInput{Plan: ptr("pro"), SignupAt: &signup})
	}
	for _, in := range stampSegments {
		f.create(in.Name, in.Predicate)
	}
	f.pass("fullpass:0", 0)
	for round := 1; round <= 6; round++ {
		var wg sync.WaitGroup
		for k := 0; k < 3; k++ {
			shards, err := f.engine.StartPass(context.Background(), fmt.Sprintf("race:%d:%d", round, k), 0)
			if err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, sh := range shards {
					if _, err := f.engine.RunShard(context.Background(), sh); err != nil {
						t.Error(err)
					}
				}
			}()
			// Move the clock while the passes run: an hour here and there
			// crosses some accounts' signup time of day.
			f.clock.Advance(time.Duration(rng.Int63n(int64(2 * time.Hour))))
		}
		wg.Wait()
		f.pass(fmt.Sprintf("quiet:%d", round), 0)
		f.agree(fmt.Sprintf("round %d", round), nil)
	}
}

// TestInterleavedEvaluationsVoidTheStamp interleaves two evaluations of one
// account on either side of a day boundary (the earlier one writes its exit
// after the later one read the membership) and checks that the next pass
// still brings the account in line: the later stamp must not vouch for the
// earlier evaluation's exit.
func TestInterleavedEvaluationsVoidTheStamp(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	// Three whole days since signup from 14:00 today.
	signup := t0.AddDate(0, 0, -3).Add(2 * time.Hour)
	f.account("a", account.AccountInput{Plan: ptr("pro"), SignupAt: &signup})
	f.create("old-or-pro", `days_since_signup >= 3 || plan == "pro"`)
	f.pass("fullpass:0", 0)
	if !f.open()["old-or-pro/a"] {
		t.Fatal("a is a member as a pro account")
	}
	var id int64
	f.db.Get(&id, `SELECT id FROM account WHERE external_id = 'a'`)
	f.account("a", account.AccountInput{Plan: ptr("free")})

	// One evaluation at 13:00 (not a member any more), one at 15:00 (a
	// member again: three days), each paused between reading and writing.
	run := func(e *Engine) (release, done chan struct{}) {
		return pausedBeforeWrite(t, e, func() error { _, err := e.EvaluateAccounts(ctx, []int64{id}); return err })
	}
	newEngine := func() *Engine { return NewEngine(f.db.DB, f.clock, f.engine.log) }
	f.clock.Set(t0.Add(time.Hour))
	release1, done1 := run(newEngine())
	f.clock.Set(t0.Add(3 * time.Hour))
	release2, done2 := run(newEngine())
	close(release1)
	<-done1
	close(release2)
	<-done2
	f.exitWrittenLast("old-or-pro/a", "the 13:00 evaluation")
}

// exitWrittenLast checks that membership (segment/account) is closed, the
// exit of the earlier evaluation (what) having been written last, and that
// the next full pass, at 16:00, brings every membership in line all the same.
func (f *fixture) exitWrittenLast(membership, what string) {
	f.t.Helper()
	if f.open()[membership] {
		f.t.Fatalf("%s's exit was written last, so %s is closed for now", what, membership)
	}
	f.clock.Set(t0.Add(4 * time.Hour))
	f.pass("fullpass:1", 0)
	f.agree("the pass after "+what+" wrote last", nil)
}

// pausedBeforeWrite starts run (an evaluation by e) in the background and
// returns once it has read everything and waits to write: closing release
// lets it write, done closes when it has.
func pausedBeforeWrite(t *testing.T, e *Engine, run func() error) (release, done chan struct{}) {
	read := make(chan struct{})
	release, done = make(chan struct{}), make(chan struct{})
	e.beforeWrite = func() { close(read); <-release }
	go func() {
		defer close(done)
		if err := run(); err != nil {
			t.Error(err)
		}
	}()
	<-read
	return release, done
}

// TestInterleavedBuildVoidsTheStamp is the same for a build pass: its exit,
// decided before a day boundary, is written after a full evaluation past the
// boundary stamped the account.
func TestInterleavedBuildVoidsTheStamp(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	signup := t0.AddDate(0, 0, -3).Add(2 * time.Hour)
	f.account("a", account.AccountInput{Plan: ptr("pro"), SignupAt: &signup})
	f.create("s", `plan == "pro"`)
	f.pass("fullpass:0", 0)
	var id int64
	f.db.Get(&id, `SELECT id FROM account WHERE external_id = 'a'`)
	seg, err := f.segments.Update(ctx, "s", Input{Predicate: `days_since_signup >= 3`})
	if err != nil {
		t.Fatal(err)
	}
	// The build at 13:00 (a leaves), paused before writing.
	f.clock.Set(t0.Add(time.Hour))
	b := NewEngine(f.db.DB, f.clock, f.engine.log)
	shards, err := b.StartPass(ctx, BuildKey(seg.ID, seg.Generation), seg.ID)
	if err != nil || len(shards) != 1 {
		t.Fatalf("build shards %v, %v", shards, err)
	}
	release, done := pausedBeforeWrite(t, b, func() error { _, err := b.RunShard(ctx, shards[0]); return err })
	// A full evaluation at 15:00 (a stays) stamps a first.
	f.clock.Set(t0.Add(3 * time.Hour))
	if _, err := f.engine.EvaluateAccounts(ctx, []int64{id}); err != nil {
		t.Fatal(err)
	}
	close(release)
	<-done
	f.exitWrittenLast("s/a", "the build")
}

// TestCandidatesSettleAtTheEvaluationsClock chooses a shard's candidates at
// one time and evaluates them later, as a long shard does: a whole-day count
// that ticked over in between, or midnight, must be taken into account.
func TestCandidatesSettleAtTheEvaluationsClock(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	base := t0.Truncate(24 * time.Hour) // midnight of the test's day
	// a: five whole days since signup from 13:00, two since its last login
	// from 13:30. b: its only login six days before today, so it leaves
	// the 7-day window at midnight; five days since signup from 23:30.
	signupA, loginA := base.AddDate(0, 0, -5).Add(13*time.Hour), base.AddDate(0, 0, -2).Add(13*time.Hour+30*time.Minute)
	signupB := base.AddDate(0, 0, -5).Add(23*time.Hour + 30*time.Minute)
	f.account("a", account.AccountInput{SignupAt: &signupA})
	f.account("b", account.AccountInput{SignupAt: &signupB})
	f.logins("a", 1, loginA)
	f.logins("b", 1, base.AddDate(0, 0, -6).Add(time.Hour))
	for _, in := range []Input{
		{Name: "five-days", Predicate: `days_since_signup >= 5`},
		{Name: "quiet", Predicate: `days_since_last_login >= 2`},
		{Name: "active-week", Predicate: `logins_7d >= 1`},
	} {
		f.create(in.Name, in.Predicate)
	}
	shard := func(choose, evaluate time.Time) {
		t.Helper()
		p, err := f.engine.plan(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		targets, err := f.engine.candidates(ctx, p, 0, 1<<40, choose)
		if err != nil {
			t.Fatal(err)
		}
		f.clock.Set(evaluate)
		if _, err := f.engine.evaluate(ctx, p, targets); err != nil {
			t.Fatal(err)
		}
	}

	// A login count ticks over between choosing (for the signup count)
	// and evaluating.
	f.clock.Set(base.Add(12 * time.Hour))
	f.pass("fullpass:0", 0)
	shard(base.Add(13*time.Hour+10*time.Minute), base.Add(13*time.Hour+40*time.Minute))
	f.clock.Set(base.Add(13*time.Hour + 45*time.Minute))
	f.pass("fullpass:1", 0)
	f.agree("after a crossing between choosing and evaluating", nil)

	// Midnight between choosing and evaluating.
	f.clock.Set(base.Add(23 * time.Hour))
	f.pass("fullpass:2", 0)
	shard(base.Add(23*time.Hour+50*time.Minute), base.Add(24*time.Hour+10*time.Minute))
	f.clock.Set(base.Add(24*time.Hour + 20*time.Minute))
	f.pass("fullpass:3", 0)
	f.agree("after midnight between choosing and evaluating", nil)
}
