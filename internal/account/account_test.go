package account_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/testsvc"
)

var t0 = time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)

func newStore(t *testing.T) (*account.Store, *clock.Manual, *testsvc.DB) {
	t.Helper()
	t.Parallel()
	db := testsvc.NewDB(t)
	clk := clock.NewManual(t0)
	return account.NewStore(db.DB, clk), clk, db
}

func ptr[T any](v T) *T { return &v }

func itemsOf(t *testing.T, err error) []errs.ItemError {
	t.Helper()
	var e *errs.Error
	if err == nil {
		t.Fatal("want an invalid_batch error, got nil")
	}
	if !asErr(err, &e) || e.Code != "invalid_batch" {
		t.Fatalf("want invalid_batch, got %v", err)
	}
	return e.Details["items"].([]errs.ItemError)
}

func asErr(err error, target **errs.Error) bool {
	for err != nil {
		if e, ok := err.(*errs.Error); ok {
			*target = e
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

func TestUpsertAccountsMergesAndReportsChanges(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	if _, err := s.UpsertCSMs(ctx, []account.CSMInput{{Email: "Dana@Example.com", Name: ptr("Dana Reyes")}}); err != nil {
		t.Fatal(err)
	}
	changed, err := s.UpsertAccounts(ctx, []account.AccountInput{{
		ID: "acme", Name: ptr("Acme"), Plan: ptr("pro"), MRR: ptr(1200.0), Seats: ptr(10),
		CSMEmail: ptr("dana@example.com"), Timezone: ptr("Europe/Paris"),
		Traits: json.RawMessage(`{"industry":"retail","size":"mid"}`),
	}})
	if err != nil || len(changed) != 1 {
		t.Fatalf("insert: changed=%v err=%v", changed, err)
	}
	// A partial update keeps what it does not name, merges traits and removes null traits.
	changed, err = s.UpsertAccounts(ctx, []account.AccountInput{{ID: "acme", Plan: ptr("enterprise"), Traits: json.RawMessage(`{"size":null,"region":"emea"}`)}})
	if err != nil || len(changed) != 1 {
		t.Fatalf("update: changed=%v err=%v", changed, err)
	}
	a, err := s.Get(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if a.Name != "Acme" || a.Plan != "enterprise" || a.MRR != 1200 || a.CSMEmail != "dana@example.com" || a.Timezone != "Europe/Paris" {
		t.Fatalf("merge lost fields: %+v", a)
	}
	var traits map[string]any
	json.Unmarshal(a.Traits, &traits)
	if traits["industry"] != "retail" || traits["region"] != "emea" || traits["size"] != nil {
		t.Fatalf("traits = %v", traits)
	}
	if !a.SignupAt.Equal(t0) {
		t.Fatalf("signup_at defaults to the clock: %s", a.SignupAt)
	}
	// The same values again change nothing.
	changed, err = s.UpsertAccounts(ctx, []account.AccountInput{{ID: "acme", Plan: ptr("enterprise")}})
	if err != nil || len(changed) != 0 {
		t.Fatalf("no-op upsert: changed=%v err=%v", changed, err)
	}
	// Clearing the CSM with an empty string.
	if _, err := s.UpsertAccounts(ctx, []account.AccountInput{{ID: "acme", CSMEmail: ptr("")}}); err != nil {
		t.Fatal(err)
	}
	if a, _ := s.Get(ctx, "acme"); a.CSMEmail != "" {
		t.Fatalf("csm not cleared: %q", a.CSMEmail)
	}
}

func TestUpsertAccountsRejectsBadItemsWhole(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	items := itemsOf(t, func() error {
		_, err := s.UpsertAccounts(ctx, []account.AccountInput{
			{ID: "good", Name: ptr("Good")},
			{ID: "", Name: ptr("no id")},
			{ID: "neg", MRR: ptr(-1.0), Seats: ptr(-2)},
			{ID: "tz", Timezone: ptr("Mars/Olympus")},
			{ID: "csm", CSMEmail: ptr("nobody@example.com")},
			{ID: "traits", Traits: json.RawMessage(`[1,2]`)},
			{ID: "good"},
			{ID: "future", SignupAt: ptr(t0.Add(48 * time.Hour))},
		})
		return err
	}())
	want := map[int]bool{1: true, 2: true, 3: true, 4: true, 5: true, 6: true, 7: true}
	got := map[int]bool{}
	for _, it := range items {
		got[it.Index] = true
		if it.Reason == "" {
			t.Errorf("item %d has no reason", it.Index)
		}
	}
	for i := range want {
		if !got[i] {
			t.Errorf("item %d not reported; got %+v", i, items)
		}
	}
	if got[0] {
		t.Errorf("good item 0 reported: %+v", items)
	}
	if _, err := s.Get(ctx, "good"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("a refused batch must store nothing; get: %v", err)
	}
}

func TestContactsNeedTheirAccount(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	if _, err := s.UpsertAccounts(ctx, []account.AccountInput{{ID: "acme"}}); err != nil {
		t.Fatal(err)
	}
	items := itemsOf(t, s.UpsertContacts(ctx, []account.ContactInput{
		{ID: "c1", AccountID: "acme", Email: ptr("Ann@Acme.com")},
		{ID: "c2", AccountID: "ghost"},
		{ID: "c3", AccountID: "acme", Email: ptr("not-an-email")},
	}))
	if len(items) != 2 || items[0].Index != 2 && items[1].Index != 2 {
		t.Fatalf("items = %+v", items)
	}
	if _, err := s.GetContact(ctx, "c1"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("refused batch stored c1: %v", err)
	}
	if err := s.UpsertContacts(ctx, []account.ContactInput{{ID: "c1", AccountID: "acme", Email: ptr("Ann@Acme.com"), Role: ptr("admin")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.UpsertContacts(ctx, []account.ContactInput{{ID: "c1", AccountID: "acme", Name: ptr("Ann Lee")}}); err != nil {
		t.Fatal(err)
	}
	c, err := s.GetContact(ctx, "c1")
	if err != nil || c.Email != "ann@acme.com" || c.Role != "admin" || c.Name != "Ann Lee" || c.AccountID != "acme" {
		t.Fatalf("contact = %+v, %v", c, err)
	}
}

func TestProfileUnderAControlledClock(t *testing.T) {
	s, clk, db := newStore(t)
	ctx := context.Background()
	signup := t0.AddDate(0, 0, -40)
	if _, err := s.UpsertAccounts(ctx, []account.AccountInput{
		{ID: "acme", Plan: ptr("pro"), Seats: ptr(4), MRR: ptr(99.5), SignupAt: &signup, Traits: json.RawMessage(`{"industry":"retail"}`)},
		{ID: "quiet", SignupAt: &signup},
	}); err != nil {
		t.Fatal(err)
	}
	ev := func(name, user string, at time.Time, props string) account.EventInput {
		e := account.EventInput{AccountID: "acme", ContactID: user, Name: name, Timestamp: ptr(at)}
		if props != "" {
			e.Properties = json.RawMessage(props)
		}
		return e
	}
	res, err := s.IngestEvents(ctx, []account.EventInput{
		ev("login", "u1", t0.Add(-1*time.Hour), ""),  // today: in 7d and 30d
		ev("login", "u2", t0.AddDate(0, 0, -6), ""),  // 7th day back: still in 7d
		ev("login", "u2", t0.AddDate(0, 0, -7), ""),  // 8th day back: 30d only
		ev("login", "u3", t0.AddDate(0, 0, -29), ""), // 30th day back: in 30d
		ev("login", "u4", t0.AddDate(0, 0, -30), ""), // 31st day back: outside
		ev("feature_used", "u1", t0.Add(-2*time.Hour), `{"feature":"reports"}`),
		ev("feature_used", "u1", t0.AddDate(0, 0, -3), `{"feature":"reports"}`),
		ev("export_csv", "u2", t0.AddDate(0, 0, -2), ""),
	}, false)
	if err != nil || res.Accepted != 8 || len(res.Changed) != 1 {
		t.Fatalf("ingest: %+v %v", res, err)
	}
	id := accountID(t, db, "acme")
	p, err := s.ProfileOf(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, got, want any) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("logins_7d", p.Logins7d, 2)
	check("logins_30d", p.Logins30d, 4)
	check("features[reports]", p.Features["reports"], 2)
	check("features[missing]", p.Features["missing"], 0)
	check("events[export_csv]", p.Events["export_csv"], 1)
	check("events[login]", p.Events["login"], 4)
	check("events[feature_used]", p.Events["feature_used"], 2)
	check("active_users", p.ActiveUsers, 3) // u1, u2, u3 seen within 30 days; u4 not
	check("license_utilization", p.LicenseUtilization, 0.75)
	check("days_since_signup", p.DaysSinceSignup, 40)
	check("days_since_last_login", p.DaysSinceLastLogin, 0)
	check("nps", p.NPS, -1)
	check("open_tickets", p.OpenTickets, 0)
	check("health_score", p.HealthScore, account.StartingHealthScore)
	check("traits.industry", p.Traits["industry"], "retail")
	check("plan", p.Plan, "pro")
	check("mrr", p.MRR, 99.5)

	// Time passes with no new event: the windows slide.
	clk.Advance(3 * 24 * time.Hour)
	p, _ = s.ProfileOf(ctx, id)
	check("logins_7d after 3 days", p.Logins7d, 1)
	check("logins_30d after 3 days", p.Logins30d, 3)
	check("days_since_last_login after 3 days", p.DaysSinceLastLogin, 3)

	// A metric snapshot under 30 days old beats the count from events; NPS and tickets appear.
	if _, err := s.RecordMetrics(ctx, []account.MetricInput{{AccountID: "acme", Values: map[string]float64{"active_users": 1, "nps": 9, "open_tickets": 2}}}); err != nil {
		t.Fatal(err)
	}
	p, _ = s.ProfileOf(ctx, id)
	check("active_users from snapshot", p.ActiveUsers, 1)
	check("license_utilization from snapshot", p.LicenseUtilization, 0.25)
	check("nps", p.NPS, 9)
	check("open_tickets", p.OpenTickets, 2)
	// An older snapshot does not replace a newer one.
	if _, err := s.RecordMetrics(ctx, []account.MetricInput{{AccountID: "acme", At: ptr(t0), Values: map[string]float64{"nps": 3}}}); err != nil {
		t.Fatal(err)
	}
	p, _ = s.ProfileOf(ctx, id)
	check("nps after an older snapshot", p.NPS, 9)
	// After 30 days the snapshot is stale and events count again (none left in the window now).
	clk.Advance(31 * 24 * time.Hour)
	p, _ = s.ProfileOf(ctx, id)
	check("active_users from events once the snapshot is stale", p.ActiveUsers, 0)

	// Never logged in: days since last login = days since signup, and seats 0 means utilization 0.
	q, _ := s.ProfileOf(ctx, accountID(t, db, "quiet"))
	check("never logged in", q.DaysSinceLastLogin, q.DaysSinceSignup)
	check("utilization with 0 seats", q.LicenseUtilization, 0.0)
}

func TestEventsBadItemsAndIdempotency(t *testing.T) {
	s, _, db := newStore(t)
	ctx := context.Background()
	if _, err := s.UpsertAccounts(ctx, []account.AccountInput{{ID: "acme"}}); err != nil {
		t.Fatal(err)
	}
	items := itemsOf(t, func() error {
		_, err := s.IngestEvents(ctx, []account.EventInput{
			{AccountID: "acme", Name: "login"},
			{AccountID: "ghost", Name: "login"},
			{AccountID: "acme", Name: "feature_used"},
			{AccountID: "acme", Name: ""},
			{AccountID: "acme", Name: "x", Timestamp: ptr(t0.Add(time.Hour))},
			{AccountID: "acme", Name: "x", Properties: json.RawMessage(`"str"`)},
			{AccountID: "acme", Name: "feature_used", Properties: json.RawMessage(`{"Feature": "reports"}`)},
		}, false)
		return err
	}())
	if len(items) != 6 {
		t.Fatalf("want 6 bad items (a key is case-sensitive), got %+v", items)
	}
	var n int
	db.Get(&n, `SELECT count(*) FROM usage_event`)
	if n != 0 {
		t.Fatalf("a refused batch stored %d events", n)
	}
	// Partial mode (Segment) keeps the good ones.
	res, err := s.IngestEvents(ctx, []account.EventInput{{AccountID: "acme", Name: "login", MessageID: "m1"}, {AccountID: "ghost", Name: "login"}}, true)
	if err != nil || res.Accepted != 1 || len(res.Rejected) != 1 || res.Rejected[0].Index != 1 {
		t.Fatalf("partial: %+v %v", res, err)
	}
	// A repeated message id counts once.
	res, err = s.IngestEvents(ctx, []account.EventInput{{AccountID: "acme", Name: "login", MessageID: "m1"}}, false)
	if err != nil || res.Accepted != 0 || res.Duplicates != 1 || len(res.Changed) != 0 {
		t.Fatalf("replay: %+v %v", res, err)
	}
	p, _ := s.ProfileOf(ctx, accountID(t, db, "acme"))
	if p.Logins7d != 1 {
		t.Fatalf("logins_7d = %d after a replay, want 1", p.Logins7d)
	}
}

func TestMetricsValidation(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	if _, err := s.UpsertAccounts(ctx, []account.AccountInput{{ID: "acme"}}); err != nil {
		t.Fatal(err)
	}
	items := itemsOf(t, func() error {
		_, err := s.RecordMetrics(ctx, []account.MetricInput{
			{AccountID: "acme", Values: map[string]float64{"nps": 11}},
			{AccountID: "acme", Values: map[string]float64{"mood": 1}},
			{AccountID: "acme", Values: map[string]float64{"active_users": 1.5}},
			{AccountID: "acme", Values: map[string]float64{}},
			{AccountID: "ghost", Values: map[string]float64{"nps": 5}},
			{AccountID: "acme", Values: map[string]float64{"open_tickets": 3}},
		})
		return err
	}())
	if len(items) != 5 {
		t.Fatalf("want 5 bad items, got %+v", items)
	}
}

func accountID(t *testing.T, db *testsvc.DB, ext string) int64 {
	t.Helper()
	var id int64
	if err := db.Get(&id, `SELECT id FROM account WHERE external_id = $1`, ext); err != nil {
		t.Fatal(err)
	}
	return id
}

// sameProfiles fails the test unless the cached profiles of ids are the
// computed ones.
func sameProfiles(t *testing.T, when string, ids []int64, want map[int64]*account.Profile, got map[int64]account.Cached) {
	t.Helper()
	for _, id := range ids {
		w, _ := json.Marshal(want[id])
		g, _ := json.Marshal(got[id].Profile)
		if string(w) != string(g) {
			t.Fatalf("%s: cached profile of %d differs:\n got %s\nwant %s", when, id, g, w)
		}
	}
}

func TestCachedProfilesAgreeWithComputed(t *testing.T) {
	s, clk, db := newStore(t)
	ctx := context.Background()
	signup := t0.AddDate(0, 0, -10)
	if _, err := s.UpsertAccounts(ctx, []account.AccountInput{{ID: "a", Seats: ptr(3), SignupAt: &signup, Traits: json.RawMessage(`{"k":"v"}`)}, {ID: "b"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.IngestEvents(ctx, []account.EventInput{
		{AccountID: "a", ContactID: "u1", Name: "login", Timestamp: ptr(t0.AddDate(0, 0, -6))},
		{AccountID: "a", ContactID: "u2", Name: "feature_used", Properties: json.RawMessage(`{"feature":"reports"}`)},
	}, false); err != nil {
		t.Fatal(err)
	}
	ids := []int64{accountID(t, db, "a"), accountID(t, db, "b")}
	same := func(when string) {
		t.Helper()
		want, err := account.Profiles(ctx, db, ids, clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		got, err := account.CachedProfiles(ctx, db, ids, clk.Now(), account.AllMaps)
		if err != nil {
			t.Fatal(err)
		}
		sameProfiles(t, when, ids, want, got)
	}
	same("cold cache")
	same("warm cache")
	var rows int
	db.Get(&rows, `SELECT count(*) FROM account_profile`)
	if rows != 2 {
		t.Fatalf("the cache holds %d rows, want 2", rows)
	}
	clk.Advance(time.Hour)
	same("an hour later (days_since fields move with the clock, not the cache)")
	clk.Advance(24 * time.Hour)
	same("the next day (the windows slid)")
	if _, err := s.RecordMetrics(ctx, []account.MetricInput{{AccountID: "a", Values: map[string]float64{"nps": 10}}}); err != nil {
		t.Fatal(err)
	}
	same("after new data (version moved)")
	got, _ := account.CachedProfiles(ctx, db, ids[:1], clk.Now(), account.Maps{})
	if p := got[ids[0]].Profile; p.NPS != 10 || len(p.Traits) != 0 {
		t.Fatalf("maps not asked for stay empty and scalars are fresh: %+v", p)
	}
}

func TestEngagementCountsInTheProfile(t *testing.T) {
	s, clk, db := newStore(t)
	ctx := context.Background()
	if _, err := s.UpsertAccounts(ctx, []account.AccountInput{{ID: "acme"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.UpsertContacts(ctx, []account.ContactInput{{ID: "ann", AccountID: "acme"}}); err != nil {
		t.Fatal(err)
	}
	// Three sent emails (one 40 days ago), one nudge; opens by a person and
	// by a proxy, a click, a dismissal, and a test send that never counts.
	_, err := db.Exec(`
		INSERT INTO campaign (name, kind, topic, status, current_version, created_at, updated_at) VALUES ('c', 'drip', 'general', 'active', 1, $1, $1);
	`, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	ins := func(step, channel string, test bool, sentAgo time.Duration) int64 {
		var id int64
		if err := db.Get(&id, `
			INSERT INTO message (campaign_id, version, step_id, contact_id, channel, test, status, due_at, sent_at, created_at, updated_at)
			SELECT (SELECT id FROM campaign), 1, $1, (SELECT id FROM contact), $2, $3, 'sent', $4, $4, $4, $4 RETURNING id`,
			step, channel, test, clk.Now().Add(-sentAgo)); err != nil {
			t.Fatal(err)
		}
		return id
	}
	a := ins("a", "email", false, time.Hour)
	b := ins("b", "email", false, 24*time.Hour)
	ins("old", "email", false, 40*24*time.Hour)
	n := ins("n", "in_app", false, time.Hour)
	tst := ins("t", "email", true, time.Hour)
	for _, e := range []struct {
		msg   int64
		kind  string
		human bool
	}{{a, "open", true}, {a, "open", true}, {b, "open", false}, {b, "click", true}, {n, "nudge_dismiss", true}, {tst, "open", true}} {
		if _, err := db.Exec(`INSERT INTO engagement_event (message_id, kind, human, at) VALUES ($1, $2, $3, $4)`, e.msg, e.kind, e.human, clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
	p, err := s.ProfileOf(ctx, accountID(t, db, "acme"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Emails30d != 2 || p.Opens30d != 1 || p.Clicks30d != 1 || p.NudgesDismissed30d != 1 || p.Replies30d != 0 {
		t.Fatalf("emails %d opens %d clicks %d dismissed %d replies %d", p.Emails30d, p.Opens30d, p.Clicks30d, p.NudgesDismissed30d, p.Replies30d)
	}
}
