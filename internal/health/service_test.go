package health_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/health"
	"github.com/tendhq/tend/internal/segment"
	"github.com/tendhq/tend/internal/testsvc"
)

var t0 = time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)

type fixture struct {
	t        *testing.T
	ctx      context.Context
	db       *testsvc.DB
	clock    *clock.Manual
	accounts *account.Store
	segments *segment.Store
	engine   *segment.Engine
	health   *health.Service
	passes   int
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	t.Parallel()
	db := testsvc.NewDB(t)
	clk := clock.NewManual(t0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f := &fixture{t: t, ctx: context.Background(), db: db, clock: clk, accounts: account.NewStore(db.DB, clk),
		segments: segment.NewStore(db.DB, clk), engine: segment.NewEngine(db.DB, clk, log), health: health.NewService(db.DB, clk)}
	f.engine.Health = f.health
	return f
}

func ptr[T any](v T) *T { return &v }

// account creates an account with ten seats, users u0..u(users-1) who each
// logged in on each of the last days days, and the key features given.
func (f *fixture) account(id string, mrr float64, users, days int, features []string, nps, tickets float64) {
	f.t.Helper()
	if _, err := f.accounts.UpsertAccounts(f.ctx, []account.AccountInput{{ID: id, Name: ptr("Account " + id), Seats: ptr(10), MRR: &mrr,
		SignupAt: ptr(t0.AddDate(0, -6, 0))}}); err != nil {
		f.t.Fatal(err)
	}
	f.use(id, users, days, features)
	if users == 0 {
		// Not an account with no data yet (which scores neutral): one that
		// was used, two months ago.
		f.lastLoginAt(id, f.clock.Now().AddDate(0, -2, 0))
	}
	if _, err := f.accounts.RecordMetrics(f.ctx, []account.MetricInput{{AccountID: id, Values: map[string]float64{
		account.MetricNPS: nps, account.MetricOpenTickets: tickets}}}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) use(id string, users, days int, features []string) {
	f.t.Helper()
	var ev []account.EventInput
	now := f.clock.Now()
	for d := 0; d < days; d++ {
		at := now.Add(-time.Duration(d)*24*time.Hour - time.Minute)
		for u := 0; u < users; u++ {
			ev = append(ev, account.EventInput{AccountID: id, ContactID: fmt.Sprintf("u%d", u), Name: account.EventLogin, Timestamp: ptr(at)})
		}
		for _, ft := range features {
			ev = append(ev, account.EventInput{AccountID: id, ContactID: "u0", Name: account.EventFeatureUsed,
				Properties: []byte(fmt.Sprintf(`{"feature": %q}`, ft)), Timestamp: ptr(at)})
		}
	}
	if len(ev) == 0 {
		return
	}
	if _, err := f.accounts.IngestEvents(f.ctx, ev, false); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) lastLoginAt(id string, at time.Time) {
	f.t.Helper()
	if _, err := f.accounts.IngestEvents(f.ctx, []account.EventInput{{AccountID: id, ContactID: "u0", Name: account.EventLogin, Timestamp: ptr(at)}}, false); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) dirty() {
	f.t.Helper()
	if _, more, err := f.engine.EvaluateDirty(f.ctx, 0, 1); err != nil || more {
		f.t.Fatalf("dirty: more=%v err=%v", more, err)
	}
}

func (f *fixture) fullPass() {
	f.t.Helper()
	f.passes++
	shards, err := f.engine.StartPass(f.ctx, fmt.Sprintf("test:%d", f.passes), 0)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, sh := range shards {
		if _, err := f.engine.RunShard(f.ctx, sh); err != nil {
			f.t.Fatal(err)
		}
	}
}

type current struct {
	Score, Change30d int
	Band             string
	History          int
}

func (f *fixture) score(id string) current {
	f.t.Helper()
	var c current
	err := f.db.QueryRow(`
		SELECT h.score, h.change_30d, h.band, (SELECT count(*) FROM health_history x WHERE x.account_id = a.id)
		FROM account a JOIN account_health h ON h.account_id = a.id WHERE a.external_id = $1`, id).
		Scan(&c.Score, &c.Change30d, &c.Band, &c.History)
	if err != nil {
		f.t.Fatalf("health of %s: %v", id, err)
	}
	return c
}

func (f *fixture) id(ext string) int64 {
	f.t.Helper()
	var id int64
	if err := f.db.Get(&id, `SELECT id FROM account WHERE external_id = $1`, ext); err != nil {
		f.t.Fatal(err)
	}
	return id
}

func (f *fixture) members(name string) map[string]bool {
	f.t.Helper()
	ms, err := f.segments.Members(f.ctx, name, 0, 1000)
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range ms {
		out[m.Account] = true
	}
	return out
}

func (f *fixture) explain(ext string) health.Explanation {
	f.t.Helper()
	ex, err := f.health.Explain(f.ctx, f.id(ext))
	if err != nil {
		f.t.Fatal(err)
	}
	sum := 0
	for _, c := range ex.Components {
		sum += c.Contribution
	}
	if sum != ex.Score || len(ex.Components) != 5 {
		f.t.Fatalf("%s: %d components add up to %d, score %d", ext, len(ex.Components), sum, ex.Score)
	}
	return ex
}

// The loop inside one evaluation: data changes → the score moves → the
// account moves between segments that read health, with reason data; an
// evaluation with nothing new rescores nothing and writes no history.
func TestHealthFollowsDataAndMovesSegments(t *testing.T) {
	f := newFixture(t)
	all := []string{"dashboards", "reports", "integrations", "alerts"}
	f.account("thriving", 1000, 9, 30, all, 10, 0)
	f.account("fading", 2500, 0, 0, nil, 3, 4)
	f.account("fine", 500, 5, 30, all[:2], 7, 1)
	atRisk, err := f.segments.Create(f.ctx, segment.Input{Name: "at-risk", Predicate: `health_band == "at_risk"`})
	if err != nil {
		t.Fatal(err)
	}
	f.dirty()
	f.fullPass() // builds the segment
	_ = atRisk

	thriving, fading, fine := f.score("thriving"), f.score("fading"), f.score("fine")
	if thriving.Band != account.BandAdvocate || fading.Band != account.BandAtRisk || fine.Band == account.BandAtRisk {
		t.Fatalf("bands: thriving %+v, fading %+v, fine %+v", thriving, fading, fine)
	}
	if m := f.members("at-risk"); len(m) != 1 || !m["fading"] {
		t.Fatalf("at-risk members %v", m)
	}
	// The profile (what predicates see) carries the stored score, cached or not.
	cached, err := account.CachedProfiles(f.ctx, f.db.DB, []int64{f.id("fading")}, f.clock.Now(), account.Maps{})
	if err != nil {
		t.Fatal(err)
	}
	if p := cached[f.id("fading")].Profile; p.HealthScore != fading.Score || p.HealthBand != fading.Band {
		t.Fatalf("cached profile health %d/%s, stored %+v", p.HealthScore, p.HealthBand, fading)
	}
	computed, err := f.accounts.ProfileOf(f.ctx, f.id("fading"))
	if err != nil {
		t.Fatal(err)
	}
	if computed.HealthScore != fading.Score || computed.HealthBand != fading.Band {
		t.Fatalf("computed profile health %d/%s, stored %+v", computed.HealthScore, computed.HealthBand, fading)
	}
	// A first score compares with the starting score.
	if fading.Change30d != fading.Score-account.StartingHealthScore || fading.History != 1 {
		t.Fatalf("fading: %+v", fading)
	}

	// Nothing new: a second pass the same day rescores nothing.
	f.fullPass()
	if again := f.score("fading"); again != fading {
		t.Fatalf("a pass with no change moved the score: %+v → %+v", fading, again)
	}

	// The account comes back: logins every day, features, happier.
	f.clock.Advance(time.Hour)
	f.use("fading", 8, 20, []string{"dashboards", "reports", "alerts"})
	if _, err := f.accounts.RecordMetrics(f.ctx, []account.MetricInput{{AccountID: "fading", Values: map[string]float64{
		account.MetricNPS: 8, account.MetricOpenTickets: 0}}}); err != nil {
		t.Fatal(err)
	}
	f.dirty()
	back := f.score("fading")
	if back.Band == account.BandAtRisk || back.Score < 45 || back.History != 2 {
		t.Fatalf("after recovery: %+v", back)
	}
	if m := f.members("at-risk"); len(m) != 0 {
		t.Fatalf("at-risk members after recovery %v", m)
	}
	var exits []string
	if err := f.db.Select(&exits, `SELECT e.reason FROM segment_event e JOIN account a ON a.id = e.account_id
		WHERE a.external_id = 'fading' AND e.kind = 'exit'`); err != nil || len(exits) != 1 || exits[0] != segment.ReasonData {
		t.Fatalf("exit events %v (%v)", exits, err)
	}
	ex := f.explain("fading")
	if ex.Previous == nil || ex.Previous.Score != fading.Score || ex.Previous.Band != account.BandAtRisk || len(ex.Changes) == 0 {
		t.Fatalf("explanation: %+v", ex)
	}
	changed := map[string]health.Change{}
	for _, c := range ex.Changes {
		changed[c.Component] = c
	}
	if u := changed[health.Usage]; u.To <= u.From {
		t.Fatalf("usage should explain the rise: %+v", ex.Changes)
	}
	if _, ok := changed[health.Support]; !ok {
		t.Fatalf("closed tickets should show in the changes: %+v", ex.Changes)
	}

	// A month on with no logins: the full pass (time, not data) scores the
	// thriving account down, and the change is against its score then.
	f.clock.Advance(31 * 24 * time.Hour)
	f.fullPass()
	later := f.score("thriving")
	if later.Score >= thriving.Score || later.Change30d != later.Score-thriving.Score {
		t.Fatalf("thriving a month later: %+v (was %+v)", later, thriving)
	}
}

func TestSummaryAndDryRun(t *testing.T) {
	f := newFixture(t)
	all := []string{"dashboards", "reports", "integrations", "alerts"}
	f.account("a-thriving", 1000, 9, 30, all, 10, 0)
	f.account("b-fading", 2500, 0, 0, nil, 3, 4)
	f.account("c-gone", 700, 0, 0, nil, 0, 5)
	f.account("d-middling", 300, 3, 10, all[:1], 6, 2)
	f.dirty()

	sum, err := f.health.Summary(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Accounts != 4 || sum.Unscored != 0 || sum.AtRisk.Accounts != 2 || sum.AtRisk.MRR != 3200 {
		t.Fatalf("summary: %+v", sum)
	}
	if len(sum.AtRisk.Top) != 2 || sum.AtRisk.Top[0].ID != "b-fading" || sum.AtRisk.Top[0].NPS != 3 {
		t.Fatalf("at-risk accounts by MRR: %+v", sum.AtRisk.Top)
	}
	if sum.Advocates.Accounts != 1 || sum.Advocates.Top[0].ID != "a-thriving" {
		t.Fatalf("advocates: %+v", sum.Advocates)
	}
	n := 0
	for _, b := range sum.Distribution {
		n += b.Accounts
	}
	if n != 4 || len(sum.Distribution) != 10 {
		t.Fatalf("distribution %+v", sum.Distribution)
	}

	before := f.snapshot()
	strict := health.Default()
	strict.Bands = health.Bands{AtRiskBelow: 80, HealthyFrom: 90, AdvocateFrom: 98, AdvocateMinNPS: 10, Hysteresis: 0}
	dry, err := f.health.DryRun(f.ctx, strict)
	if err != nil {
		t.Fatal(err)
	}
	if dry.Accounts != 4 || dry.WouldChange != 2 || dry.Bands[account.BandAtRisk] != 3 ||
		dry.Moves["neutral→at_risk"] != 1 || dry.Moves["advocate→healthy"] != 1 {
		t.Fatalf("dry run: %+v", dry)
	}
	if after := f.snapshot(); after != before {
		t.Fatalf("a dry run changed the scores:\n%s\n%s", before, after)
	}
	bad := strict
	bad.Weights = health.Weights{}
	if _, err := f.health.DryRun(f.ctx, bad); err == nil {
		t.Fatal("a dry run of an invalid model succeeded")
	}

	// Saved, the model rescores every account at the next pass.
	v, err := f.health.PutModel(f.ctx, strict, "test")
	if err != nil || v.Version != 1 {
		t.Fatalf("put model: %+v, %v", v, err)
	}
	f.fullPass()
	var versions []int64
	if err := f.db.Select(&versions, `SELECT DISTINCT model_version FROM account_health`); err != nil || len(versions) != 1 || versions[0] != 1 {
		t.Fatalf("model versions after the pass: %v (%v)", versions, err)
	}
	if sum, _ := f.health.Summary(f.ctx); sum.AtRisk.Accounts != 3 || sum.Advocates.Accounts != 0 {
		t.Fatalf("after the new model: %+v", sum.Bands)
	}
}

func (f *fixture) snapshot() string {
	f.t.Helper()
	var s string
	if err := f.db.Get(&s, `SELECT coalesce(string_agg(format('%s:%s:%s:%s', account_id, score, band, computed_at), ',' ORDER BY account_id), '')
		|| '/' || (SELECT count(*) FROM health_history) FROM account_health`); err != nil {
		f.t.Fatal(err)
	}
	return s
}
