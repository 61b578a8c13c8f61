package demo_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/demo"
	"github.com/tendhq/tend/internal/segment"
	"github.com/tendhq/tend/internal/testsvc"
)

// t0 is the tests' clock: mid-day, so that the same day also holds at t0+5h.
var t0 = time.Date(2026, 6, 15, 9, 30, 0, 0, time.UTC)

const smallDemo = 60 // three blocks of personas

type env struct {
	db     *testsvc.DB
	clock  *clock.Manual
	seeder *demo.Seeder
}

func newEnv(t *testing.T, now time.Time) *env {
	t.Helper()
	db := testsvc.NewDB(t)
	clk := clock.NewManual(now)
	return &env{db: db, clock: clk, seeder: &demo.Seeder{
		DB: db.DB, Accounts: account.NewStore(db.DB, clk), Segments: segment.NewStore(db.DB, clk), Clock: clk,
	}}
}

func (e *env) seed(t *testing.T, opt demo.Options) demo.Summary {
	t.Helper()
	sum, err := e.seeder.Seed(context.Background(), opt)
	if err != nil {
		t.Fatalf("seed %+v: %v", opt, err)
	}
	return sum
}

func (e *env) count(t *testing.T, table string) int {
	t.Helper()
	var n int
	if err := e.db.Get(&n, `SELECT count(*) FROM `+table); err != nil {
		t.Fatal(err)
	}
	return n
}

// digest sums up every row the seed writes that must not depend on when or
// how often it ran: CSMs, accounts, contacts, daily usage and metrics.
func (e *env) digest(t *testing.T) string {
	t.Helper()
	var d string
	err := e.db.Get(&d, `
		SELECT md5(string_agg(r, E'\n' ORDER BY r)) FROM (
			SELECT concat_ws('|', 'csm', email, name, title, signature_html, reply_to, phone, calendar_url) AS r FROM csm
			UNION ALL
			SELECT concat_ws('|', 'account', a.external_id, a.name, a.plan, a.mrr, a.seats, a.signup_at, a.stage, a.tier,
			                 a.region, c.email, a.timezone, a.traits::text, a.last_login_at)
			FROM account a LEFT JOIN csm c ON c.id = a.csm_id
			UNION ALL
			SELECT concat_ws('|', 'contact', c.external_id, a.external_id, c.email, c.name, c.role, c.timezone, c.locale, c.traits::text)
			FROM contact c JOIN account a ON a.id = c.account_id
			UNION ALL
			SELECT concat_ws('|', 'usage', a.external_id, d.day, d.kind, d.key, d.n)
			FROM usage_daily d JOIN account a ON a.id = d.account_id
			UNION ALL
			SELECT concat_ws('|', 'metric', a.external_id, m.name, m.value, m.at)
			FROM account_metric m JOIN account a ON a.id = m.account_id
		) rows`)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestSeedMakesTheDemoCustomerBase(t *testing.T) {
	t.Parallel()
	e := newEnv(t, t0)
	ctx := context.Background()
	// --if-empty seeds an empty database.
	sum := e.seed(t, demo.Options{Accounts: smallDemo, Seed: 1, IfEmpty: true})

	if sum.Skipped || sum.CSMs != 6 || sum.Accounts != smallDemo || sum.Contacts < smallDemo || sum.Contacts > 4*smallDemo {
		t.Fatalf("summary = %+v", sum)
	}
	if sum.Events == 0 || sum.NewEvents != sum.Events {
		t.Fatalf("events: %d generated, %d stored", sum.Events, sum.NewEvents)
	}
	// Every persona, in its share: 45%, 15%, 25%, 10%, 5%.
	want := map[demo.Persona]int{demo.Healthy: 27, demo.Onboarding: 9, demo.Disengaging: 15, demo.AtRisk: 6, demo.Advocate: 3}
	for _, p := range demo.Personas {
		if len(sum.Personas[p]) != want[p] {
			t.Errorf("%s: %d accounts, want %d", p, len(sum.Personas[p]), want[p])
		}
	}
	if got := e.count(t, "account"); got != smallDemo {
		t.Fatalf("%d accounts stored", got)
	}
	if got := e.count(t, "contact"); got != sum.Contacts {
		t.Fatalf("%d contacts stored, summary says %d", got, sum.Contacts)
	}
	if got := e.count(t, "usage_event"); got != sum.Events {
		t.Fatalf("%d events stored, summary says %d", got, sum.Events)
	}

	// CSMs read like people, on reserved domains.
	var csms []account.CSM
	if err := e.db.Select(&csms, `SELECT id, email, name, title, signature_html, reply_to, phone, calendar_url, created_at, updated_at FROM csm ORDER BY email`); err != nil {
		t.Fatal(err)
	}
	if len(csms) != 6 {
		t.Fatalf("%d CSMs", len(csms))
	}
	for _, c := range csms {
		if !strings.HasSuffix(c.Email, "@tend-demo.example") || !strings.Contains(c.Name, " ") || c.Title == "" ||
			!strings.Contains(c.SignatureHTML, c.Name) || c.Phone == "" || !strings.HasPrefix(c.CalendarURL, "https://cal.example/") ||
			c.ReplyTo != c.Email {
			t.Errorf("CSM %+v", c)
		}
	}

	// Accounts: plan, tier, seats and MRR agree; everything on reserved domains.
	var accounts []account.Account
	if err := e.db.Select(&accounts, `
		SELECT a.id, a.external_id, a.name, a.plan, a.mrr, a.seats, a.signup_at, a.stage, a.tier, a.region,
		       coalesce(c.email, '') AS csm_email, a.timezone, a.traits, a.created_at, a.updated_at
		FROM account a LEFT JOIN csm c ON c.id = a.csm_id ORDER BY a.external_id`); err != nil {
		t.Fatal(err)
	}
	plans := map[string][]string{"smb": {"starter", "pro"}, "mid-market": {"pro", "enterprise"}, "enterprise": {"enterprise"}}
	tiers := map[string]int{}
	names := map[string]bool{}
	ids := make([]int64, len(accounts))
	for i, a := range accounts {
		ids[i] = a.ID
		tiers[a.Tier]++
		names[a.Name] = true
		var traits struct {
			Industry string `json:"industry"`
			Domain   string `json:"domain"`
		}
		json.Unmarshal(a.Traits, &traits)
		if !slices.Contains(plans[a.Tier], a.Plan) || a.Seats < 2 || a.MRR < float64(a.Seats)*10 || a.MRR > float64(a.Seats)*60 ||
			!strings.HasSuffix(a.CSMEmail, "@tend-demo.example") || a.Region == "" || traits.Industry == "" ||
			!strings.HasSuffix(traits.Domain, ".example") {
			t.Errorf("account %+v", a)
		}
		if _, err := time.LoadLocation(a.Timezone); err != nil || a.Timezone == "" {
			t.Errorf("account %s: time zone %q", a.ExternalID, a.Timezone)
		}
		contacts, err := e.seeder.Accounts.ContactsOf(ctx, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(contacts) < 1 || len(contacts) > 4 || contacts[0].Role != "admin" {
			t.Errorf("account %s: %d contacts, first %+v", a.ExternalID, len(contacts), contacts[0])
		}
		for _, c := range contacts {
			if !strings.HasSuffix(c.Email, "@"+traits.Domain) || !slices.Contains([]string{"admin", "champion", "user"}, c.Role) ||
				c.Name == "" || c.Timezone == "" || c.Locale == "" {
				t.Errorf("contact %+v", c)
			}
		}
	}
	if tiers["smb"] == 0 || tiers["mid-market"] == 0 || tiers["enterprise"] == 0 {
		t.Errorf("tiers: %v", tiers)
	}
	if len(names) != len(accounts) {
		t.Errorf("%d distinct names for %d accounts", len(names), len(accounts))
	}

	// Usage: features from the demo's list, inside the 90 days before the clock's day.
	day := time.Date(2026, 6, 15, 0, 0, 0, 0, time.UTC)
	var span struct {
		First, Last time.Time
		Features    []string `db:"-"`
	}
	e.db.Get(&span, `SELECT min(occurred_at) AS first, max(occurred_at) AS last FROM usage_event`)
	if span.First.Before(day.AddDate(0, 0, -90)) || !span.Last.Before(day) || span.Last.Before(day.AddDate(0, 0, -1)) {
		t.Errorf("events from %s to %s, want the 90 days before %s", span.First, span.Last, day)
	}
	var features []string
	e.db.Select(&features, `SELECT DISTINCT key FROM usage_daily WHERE kind = 'f' ORDER BY key`)
	all := append(append([]string{}, demo.KeyFeatures...), demo.ExtraFeatures...)
	sort.Strings(all)
	if !slices.Equal(features, all) {
		t.Errorf("features used: %v, want %v", features, all)
	}

	// Profiles have each persona's shape.
	profiles, err := account.Profiles(ctx, e.db, ids, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*account.Profile{}
	for _, a := range accounts {
		byID[a.ExternalID] = profiles[a.ID]
	}
	persona := func(p demo.Persona) []*account.Profile {
		var out []*account.Profile
		for _, id := range sum.Personas[p] {
			out = append(out, byID[id])
		}
		return out
	}
	mean := func(ps []*account.Profile, f func(*account.Profile) int) float64 {
		total := 0
		for _, p := range ps {
			total += f(p)
		}
		return float64(total) / float64(len(ps))
	}
	logins30 := func(p *account.Profile) int { return p.Logins30d }
	for _, p := range demo.Personas {
		ps := persona(p)
		t.Logf("%-12s logins_30d %.1f, logins_7d %.1f, active_users %.1f, since last login %.1f, features %.1f, tickets %.1f",
			p, mean(ps, logins30), mean(ps, func(p *account.Profile) int { return p.Logins7d }),
			mean(ps, func(p *account.Profile) int { return p.ActiveUsers }),
			mean(ps, func(p *account.Profile) int { return p.DaysSinceLastLogin }),
			mean(ps, func(p *account.Profile) int { return len(p.Features) }),
			mean(ps, func(p *account.Profile) int { return p.OpenTickets }))
	}
	for _, p := range persona(demo.Advocate) {
		for _, f := range demo.KeyFeatures {
			if p.Features[f] == 0 {
				t.Errorf("an advocate has not used %s in 30 days: %+v", f, p)
			}
		}
		if p.NPS < 9 || p.Logins30d < 40 || p.LicenseUtilization < 0.6 {
			t.Errorf("advocate: nps %d, logins_30d %d, utilization %.2f", p.NPS, p.Logins30d, p.LicenseUtilization)
		}
	}
	for _, p := range persona(demo.AtRisk) {
		if p.Logins7d != 0 || p.Logins30d > 5 || p.DaysSinceLastLogin < 10 || p.OpenTickets == 0 || p.NPS > 6 {
			t.Errorf("at risk: logins_7d %d, logins_30d %d, since last login %d, tickets %d, nps %d",
				p.Logins7d, p.Logins30d, p.DaysSinceLastLogin, p.OpenTickets, p.NPS)
		}
	}
	missingKey := 0
	for _, p := range persona(demo.Onboarding) {
		if p.DaysSinceSignup > 30 || p.Stage != "onboarding" || p.Logins30d == 0 {
			t.Errorf("onboarding: days_since_signup %d, stage %s, logins_30d %d", p.DaysSinceSignup, p.Stage, p.Logins30d)
		}
		if p.Features["reports"] == 0 || p.Features["integrations"] == 0 {
			missingKey++
		}
	}
	if missingKey == 0 {
		t.Error("every new account already uses reports and integrations; the onboarding drips would have no one")
	}
	for _, p := range persona(demo.Healthy) {
		if p.DaysSinceSignup <= 90 || p.Stage != "customer" || p.DaysSinceLastLogin > 7 || p.ActiveUsers < 2 {
			t.Errorf("healthy: days_since_signup %d, stage %s, since last login %d, active users %d",
				p.DaysSinceSignup, p.Stage, p.DaysSinceLastLogin, p.ActiveUsers)
		}
	}
	// Disengaging accounts: the last two weeks are a fraction of two weeks, 90 days ago.
	for _, id := range sum.Personas[demo.Disengaging] {
		var early, late int
		e.db.Get(&early, `SELECT coalesce(sum(n), 0) FROM usage_daily d JOIN account a ON a.id = d.account_id
			WHERE a.external_id = $1 AND kind = 'e' AND key = 'login' AND day < $2::date - 76`, id, day)
		e.db.Get(&late, `SELECT coalesce(sum(n), 0) FROM usage_daily d JOIN account a ON a.id = d.account_id
			WHERE a.external_id = $1 AND kind = 'e' AND key = 'login' AND day >= $2::date - 14`, id, day)
		if early < 3 || late*3 > early {
			t.Errorf("disengaging %s: %d logins 90 to 77 days ago, %d in the last 14 days", id, early, late)
		}
	}
	if h, d, r := mean(persona(demo.Healthy), logins30), mean(persona(demo.Disengaging), logins30), mean(persona(demo.AtRisk), logins30); !(h > 2*d && d > r) {
		t.Errorf("mean logins_30d: healthy %.1f, disengaging %.1f, at risk %.1f", h, d, r)
	}
	npsAnswers := 0
	for _, p := range profiles {
		if p.NPS >= 0 {
			npsAnswers++
		}
	}
	if npsAnswers != sum.NPS || npsAnswers < smallDemo/3 || npsAnswers > 2*smallDemo/3 {
		t.Errorf("%d NPS answers (summary: %d) of %d accounts", npsAnswers, sum.NPS, smallDemo)
	}

	// The segments exist, and the ones that read account data find the
	// right accounts.
	if len(sum.SegmentsCreated) != len(demo.Segments) {
		t.Fatalf("segments created: %v", sum.SegmentsCreated)
	}
	for _, in := range demo.Segments {
		s, err := e.seeder.Segments.Get(ctx, in.Name)
		if err != nil || s.Predicate != in.Predicate {
			t.Fatalf("segment %s: %+v %v", in.Name, s, err)
		}
	}
	engine := segment.NewEngine(e.db.DB, e.clock, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if _, err := engine.EvaluateAccounts(ctx, ids); err != nil {
		t.Fatal(err)
	}
	members := func(name string) []string {
		ms, err := e.seeder.Segments.Members(ctx, name, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		out := []string{}
		for _, m := range ms {
			out = append(out, m.Account)
		}
		sort.Strings(out)
		return out
	}
	onboarding := append([]string{}, sum.Personas[demo.Onboarding]...)
	sort.Strings(onboarding)
	if got := members("new-accounts"); !slices.Equal(got, onboarding) {
		t.Errorf("new-accounts = %v, want the onboarding accounts %v", got, onboarding)
	}
	if got := len(members("smb")); got != tiers["smb"] {
		t.Errorf("smb has %d members, want %d", got, tiers["smb"])
	}
	if got := len(members("enterprise")); got != tiers["enterprise"] {
		t.Errorf("enterprise has %d members, want %d", got, tiers["enterprise"])
	}
	if got := len(members("low-adoption")); got == 0 || got > smallDemo/2 {
		t.Errorf("low-adoption has %d members", got)
	}
}

func TestSeedIsDeterministic(t *testing.T) {
	t.Parallel()
	// The same seed on the same clock day, at different hours.
	a, b := newEnv(t, t0), newEnv(t, t0.Add(5*time.Hour))
	sa := a.seed(t, demo.Options{Accounts: 40, Seed: 7})
	sb := b.seed(t, demo.Options{Accounts: 40, Seed: 7})
	if da, db := a.digest(t), b.digest(t); da != db {
		t.Fatalf("same seed, same day: digests %s and %s differ", da, db)
	}
	if sa.Events != sb.Events || !slices.Equal(sa.Personas[demo.AtRisk], sb.Personas[demo.AtRisk]) {
		t.Fatalf("summaries differ: %+v / %+v", sa, sb)
	}
	// Another seed is other data (so the digest does see the data).
	c := newEnv(t, t0)
	c.seed(t, demo.Options{Accounts: 40, Seed: 8})
	if a.digest(t) == c.digest(t) {
		t.Fatal("seeds 7 and 8 made the same data")
	}
}

func TestSeedAgainDuplicatesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, t0)
	first := e.seed(t, demo.Options{Accounts: 30, Seed: 1})
	tables := []string{"csm", "account", "contact", "usage_event", "usage_daily", "account_user_activity", "account_metric", "segment"}
	counts := map[string]int{}
	for _, tb := range tables {
		counts[tb] = e.count(t, tb)
	}
	before := e.digest(t)

	e.clock.Advance(time.Hour)
	again := e.seed(t, demo.Options{Accounts: 30, Seed: 1})
	if again.NewEvents != 0 || again.Events != first.Events || len(again.SegmentsCreated) != 0 ||
		len(again.SegmentsExisting) != len(demo.Segments) {
		t.Fatalf("second seed: %+v", again)
	}
	for _, tb := range tables {
		if n := e.count(t, tb); n != counts[tb] {
			t.Errorf("%s: %d rows, %d before seeding again", tb, n, counts[tb])
		}
	}
	if after := e.digest(t); after != before {
		t.Error("seeding again changed the data")
	}

	// --if-empty leaves a database with accounts alone.
	skipped := e.seed(t, demo.Options{Accounts: 50, Seed: 2, IfEmpty: true})
	if !skipped.Skipped || skipped.Accounts != 0 {
		t.Fatalf("--if-empty on a seeded database: %+v", skipped)
	}
	if n := e.count(t, "account"); n != 30 {
		t.Fatalf("--if-empty seeded anyway: %d accounts", n)
	}
}

func TestSeedRefusesABadNumberOfAccounts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, t0)
	for _, n := range []int{-1, demo.MaxAccounts + 1} {
		if _, err := e.seeder.Seed(context.Background(), demo.Options{Accounts: n}); err == nil {
			t.Errorf("%d accounts: want an error", n)
		}
	}
	if n := e.count(t, "csm"); n != 0 {
		t.Fatalf("a refused seed wrote %d CSMs", n)
	}
}
