package campaign_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/postgres"
	"github.com/tendhq/tend/internal/segment"
)

type loop struct {
	*fixture
	t        *testing.T
	accounts *account.Store
	engine   *segment.Engine
	enroller *campaign.Enroller
}

func newLoop(t *testing.T) *loop {
	f := newFixture(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return &loop{fixture: f, t: t, accounts: account.NewStore(f.db.DB, f.clock), engine: segment.NewEngine(f.db.DB, f.clock, log),
		enroller: campaign.NewEnroller(f.db.DB, f.clock, log, time.UTC)}
}

func ptr[T any](v T) *T { return &v }

// setHealth moves an account in or out of "at-risk" (health_score < 40) by
// changing its NPS-free profile: the test segment reads a trait instead.
func (l *loop) account(id, tz string, contacts ...account.ContactInput) {
	l.t.Helper()
	ctx := context.Background()
	if _, err := l.accounts.UpsertAccounts(ctx, []account.AccountInput{{ID: id, Timezone: ptr(tz), Traits: []byte(`{"risk": "low"}`)}}); err != nil {
		l.t.Fatal(err)
	}
	for i := range contacts {
		contacts[i].AccountID = id
	}
	if len(contacts) > 0 {
		if err := l.accounts.UpsertContacts(ctx, contacts); err != nil {
			l.t.Fatal(err)
		}
	}
}

func (l *loop) risk(id, level string) {
	l.t.Helper()
	if _, err := l.accounts.UpsertAccounts(context.Background(), []account.AccountInput{{ID: id, Traits: []byte(`{"risk": "` + level + `"}`)}}); err != nil {
		l.t.Fatal(err)
	}
	l.settle()
}

// settle runs what the worker pool would: evaluate dirty accounts, then
// consume segment events.
func (l *loop) settle() {
	l.t.Helper()
	ctx := context.Background()
	if _, _, err := l.engine.EvaluateDirty(ctx, 0, 1); err != nil {
		l.t.Fatal(err)
	}
	for {
		n, err := l.enroller.ProcessSegmentEvents(ctx, 100)
		if err != nil {
			l.t.Fatal(err)
		}
		if n == 0 {
			return
		}
	}
}

type msg struct {
	Step, Contact, Status, Reason string
	Due                           time.Time
}

func (l *loop) messages() []msg {
	l.t.Helper()
	var out []msg
	if err := l.db.Select(&out, `
		SELECT m.step_id AS step, c.external_id AS contact, m.status, m.reason, m.due_at AS due
		FROM message m JOIN contact c ON c.id = m.contact_id ORDER BY m.id`); err != nil {
		l.t.Fatal(err)
	}
	return out
}

func (l *loop) enrollments() []string {
	var out []string
	l.db.Select(&out, `SELECT status || ':' || entry_number FROM enrollment ORDER BY id`)
	return out
}

func (l *loop) applyDrip(d campaign.Definition) {
	l.t.Helper()
	ctx := context.Background()
	b := campaign.Bundle{Campaigns: []campaign.Definition{d}, Templates: []campaign.TemplateInput{
		{Name: "t/one", Kind: "email", Source: checkinV1},
		{Name: "t/two", Kind: "email", Source: checkinV1},
	}}
	if _, err := l.store.Apply(ctx, b, false); err != nil {
		l.t.Fatal(err)
	}
	if _, err := l.store.SetStatus(ctx, d.Name, "activate"); err != nil {
		l.t.Fatal(err)
	}
}

func riskDrip() campaign.Definition {
	return campaign.Definition{
		Name: "risk", Kind: campaign.KindDrip, Segment: "risky", Exit: campaign.ExitLeavesSegment,
		Audience: `contact.role in ["admin", "champion"]`,
		Steps: []campaign.Step{
			{ID: "one", Wait: "0h", Channel: "email", Template: "t/one"},
			{ID: "two", Wait: "2d", Channel: "email", Template: "t/two"},
		},
	}
}

// riskDripForEveryContact creates the risky segment and applies the risk
// drip to every contact of an account that enters it (no audience).
func (l *loop) riskDripForEveryContact() {
	l.riskySegment()
	d := riskDrip()
	d.Audience = ""
	l.applyDrip(d)
}

func (l *loop) riskySegment() {
	l.t.Helper()
	s, err := l.segments.Create(context.Background(), segment.Input{Name: "risky", Predicate: `traits.risk == "high"`})
	if err != nil {
		l.t.Fatal(err)
	}
	shards, _ := l.engine.StartPass(context.Background(), segment.BuildKey(s.ID, s.Generation), s.ID)
	for _, sh := range shards {
		l.engine.RunShard(context.Background(), sh)
	}
}

func TestEntryEnrollsTheAudienceAndExitStopsIt(t *testing.T) {
	l := newLoop(t)
	l.riskySegment()
	l.applyDrip(riskDrip())
	l.account("acme", "Europe/Paris",
		account.ContactInput{ID: "ann", Role: ptr("admin"), Email: ptr("ann@acme.example")},
		account.ContactInput{ID: "bob", Role: ptr("viewer"), Email: ptr("bob@acme.example")},
		account.ContactInput{ID: "cat", Role: ptr("champion"), Email: ptr("cat@acme.example"), Timezone: ptr("America/New_York")},
	)
	l.settle()
	if got := l.messages(); len(got) != 0 {
		t.Fatalf("no entry, no message: %v", got)
	}
	l.risk("acme", "high")
	got := l.messages()
	if len(got) != 2 || got[0].Contact != "ann" || got[1].Contact != "cat" || got[0].Step != "one" || got[0].Status != "scheduled" {
		t.Fatalf("step one for the audience (admin, champion): %+v", got)
	}
	if !got[0].Due.Equal(l.clock.Now()) {
		t.Fatalf("a 0h wait is due at entry: %s vs %s", got[0].Due, l.clock.Now())
	}
	// A contact added later is not enrolled mid-drip.
	if err := l.accounts.UpsertContacts(context.Background(), []account.ContactInput{{ID: "dan", AccountID: "acme", Role: ptr("admin")}}); err != nil {
		t.Fatal(err)
	}
	// The account leaves the segment: the enrollment exits, the scheduled rows are skipped.
	l.risk("acme", "low")
	if e := l.enrollments(); len(e) != 1 || e[0] != "exited:1" {
		t.Fatalf("enrollments = %v", e)
	}
	for _, m := range l.messages() {
		if m.Status != "skipped" || m.Reason == "" {
			t.Fatalf("scheduled messages of an exited enrollment are skipped with a reason: %+v", m)
		}
	}
	// Re-entry is not allowed without reenroll_after.
	l.risk("acme", "high")
	if e := l.enrollments(); len(e) != 1 {
		t.Fatalf("re-entered without reenroll_after: %v", e)
	}
}

func TestReenrollAfter(t *testing.T) {
	l := newLoop(t)
	l.riskySegment()
	d := riskDrip()
	d.Audience, d.ReenrollAfter = "", "30d"
	l.applyDrip(d)
	l.account("acme", "UTC", account.ContactInput{ID: "ann", Email: ptr("ann@acme.example")})
	l.risk("acme", "high")
	l.risk("acme", "low")
	l.clock.Advance(10 * 24 * time.Hour)
	l.risk("acme", "high") // 10 days later: too soon
	if e := l.enrollments(); len(e) != 1 {
		t.Fatalf("re-entered too soon: %v", e)
	}
	l.risk("acme", "low")
	l.clock.Advance(25 * 24 * time.Hour)
	l.risk("acme", "high") // 35 days after the first entry
	if e := l.enrollments(); len(e) != 2 || e[1] != "active:2" {
		t.Fatalf("want a second entry: %v", e)
	}
}

func TestInitialEntriesNeedEnrollExisting(t *testing.T) {
	for _, existing := range []bool{false, true} {
		t.Run(map[bool]string{false: "without", true: "with"}[existing], func(t *testing.T) { initialEntries(t, existing) })
	}
}

func initialEntries(t *testing.T, existing bool) {
	{
		l := newLoop(t)
		l.account("acme", "UTC", account.ContactInput{ID: "ann", Email: ptr("ann@acme.example")})
		l.risk("acme", "high")
		d := riskDrip()
		d.Audience, d.EnrollExisting = "", existing
		// The segment is created while the drip is active: its entries are "initial".
		s, err := l.segments.Create(context.Background(), segment.Input{Name: "risky", Predicate: `traits.risk == "high"`})
		if err != nil {
			t.Fatal(err)
		}
		l.applyDrip(d)
		shards, _ := l.engine.StartPass(context.Background(), segment.BuildKey(s.ID, s.Generation), s.ID)
		for _, sh := range shards {
			l.engine.RunShard(context.Background(), sh)
		}
		l.settle()
		if got := len(l.enrollments()); (got == 1) != existing {
			t.Fatalf("enroll_existing=%v: %d enrollments", existing, got)
		}
	}
}

func TestStepsAdvanceOnTheLastSendInTheContactsZone(t *testing.T) {
	l := newLoop(t)
	// Enter on Friday 2026-03-27 09:00 Paris: step two (2d) crosses the DST change.
	l.clock.Set(time.Date(2026, 3, 27, 8, 0, 0, 0, time.UTC))
	l.riskDripForEveryContact()
	l.account("acme", "Europe/Paris", account.ContactInput{ID: "ann", Email: ptr("ann@acme.example")})
	l.risk("acme", "high")
	sent := l.clock.Now().Add(5 * time.Minute)
	// The step is sent (what delivery does), then the enrollment advances.
	err := postgres.InTx(context.Background(), l.db.DB, func(tx *sqlx.Tx) error {
		if _, err := tx.Exec(`UPDATE message SET status = 'sent', sent_at = $1`, sent); err != nil {
			return err
		}
		var ids []int64
		tx.Select(&ids, `SELECT id FROM enrollment`)
		return l.enroller.Advance(context.Background(), tx, ids)
	})
	if err != nil {
		t.Fatal(err)
	}
	got := l.messages()
	if len(got) != 2 || got[1].Step != "two" {
		t.Fatalf("messages = %+v", got)
	}
	paris, _ := time.LoadLocation("Europe/Paris")
	want := time.Date(2026, 3, 29, 9, 5, 0, 0, paris)
	if !got[1].Due.Equal(want) {
		t.Fatalf("step two due %s, want %s (2 calendar days in Paris)", got[1].Due.In(paris), want)
	}
	// Finishing the last step completes the enrollment.
	postgres.InTx(context.Background(), l.db.DB, func(tx *sqlx.Tx) error {
		tx.Exec(`UPDATE message SET status = 'skipped', reason = 'test' WHERE status = 'scheduled'`)
		var ids []int64
		tx.Select(&ids, `SELECT id FROM enrollment`)
		return l.enroller.Advance(context.Background(), tx, ids)
	})
	if e := l.enrollments(); e[0] != "completed:1" {
		t.Fatalf("enrollments = %v", e)
	}
}

func TestActivationEnrollsExistingMembersOnlyWhenAsked(t *testing.T) {
	for _, existing := range []bool{false, true} {
		t.Run(map[bool]string{false: "without", true: "with"}[existing], func(t *testing.T) {
			l := newLoop(t)
			l.riskySegment()
			l.account("acme", "UTC", account.ContactInput{ID: "ann", Email: ptr("ann@acme.example")})
			l.risk("acme", "high") // a member before the drip exists
			d := riskDrip()
			d.Audience, d.EnrollExisting = "", existing
			l.applyDrip(d) // activates
			n, err := l.enroller.EnrollExisting(context.Background(), "risk")
			if err != nil {
				t.Fatal(err)
			}
			if got := len(l.enrollments()); got != map[bool]int{false: 0, true: 1}[existing] || n != got {
				t.Fatalf("enroll_existing=%v: %d enrollments (reported %d)", existing, got, n)
			}
			// Activating again enrolls nobody twice.
			if n, _ := l.enroller.EnrollExisting(context.Background(), "risk"); n != 0 {
				t.Fatalf("a second activation enrolled %d", n)
			}
		})
	}
}

func TestArchiveEndsRunningEnrollments(t *testing.T) {
	l := newLoop(t)
	l.riskDripForEveryContact()
	l.account("acme", "UTC", account.ContactInput{ID: "ann", Email: ptr("ann@acme.example")})
	l.risk("acme", "high")
	// An archive that fails half way changes nothing: the status and the
	// end of the enrollments commit together.
	l.db.MustExec(`CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'refused'; END $$`)
	l.db.MustExec(`CREATE TRIGGER refuse BEFORE UPDATE ON message FOR EACH ROW EXECUTE FUNCTION refuse()`)
	if _, err := l.store.SetStatus(context.Background(), "risk", "archive"); err == nil {
		t.Fatal("the archive succeeded although its messages could not be skipped")
	}
	var status string
	l.db.Get(&status, `SELECT status FROM campaign WHERE name = 'risk'`)
	if e := l.enrollments(); status != "active" || len(e) != 1 || e[0] != "active:1" {
		t.Fatalf("after a failed archive: campaign %s, enrollments %v; want it active and running", status, e)
	}
	l.db.MustExec(`DROP TRIGGER refuse ON message`)
	if _, err := l.store.SetStatus(context.Background(), "risk", "archive"); err != nil {
		t.Fatal(err)
	}
	if e := l.enrollments(); len(e) != 1 || e[0] != "exited:1" {
		t.Fatalf("enrollments = %v", e)
	}
	for _, m := range l.messages() {
		if m.Status != "skipped" || m.Reason != "exited: the campaign was archived" {
			t.Fatalf("message = %+v", m)
		}
	}
}

// TestEntriesAndExitsInBatches: one ProcessSegmentEvents call consumes the
// entries of several accounts and then exits of some of them, as a run of
// entries and a run of exits, and ends where one event at a time would: the
// exited accounts' first messages skipped, an account without contacts
// completed, the others waiting. One Advance then moves the enrollments
// whose step is done, and only those.
func TestEntriesAndExitsInBatches(t *testing.T) {
	l := newLoop(t)
	ctx := context.Background()
	l.riskDripForEveryContact()
	ids := []string{"a1", "a2", "a3", "a4", "a5"}
	for _, id := range ids {
		l.account(id, "UTC", account.ContactInput{ID: id + "-ann", Email: ptr(id + "-ann@example.com")})
	}
	l.account("a6", "UTC") // nobody to write to
	set := func(level string, ids ...string) {
		t.Helper()
		in := make([]account.AccountInput, len(ids))
		for i, id := range ids {
			in[i] = account.AccountInput{ID: id, Traits: []byte(`{"risk": "` + level + `"}`)}
		}
		if _, err := l.accounts.UpsertAccounts(ctx, in); err != nil {
			t.Fatal(err)
		}
		if _, _, err := l.engine.EvaluateDirty(ctx, 0, 1); err != nil {
			t.Fatal(err)
		}
	}
	set("high", append(ids, "a6")...)
	set("low", "a1", "a2")
	if n, err := l.enroller.ProcessSegmentEvents(ctx, 100); err != nil || n != 8 {
		t.Fatalf("consumed %d events (%v), want 6 entries and 2 exits", n, err)
	}
	type row struct {
		Account, Status, Reason string
		Messages                string
	}
	state := func() map[string]row {
		t.Helper()
		var rows []row
		if err := l.db.Select(&rows, `
			SELECT a.external_id AS account, en.status, coalesce(en.finish_reason, '') AS reason,
			       coalesce(string_agg(m.step_id || ':' || m.status, ',' ORDER BY m.id), '') AS messages
			FROM enrollment en JOIN account a ON a.id = en.account_id LEFT JOIN message m ON m.enrollment_id = en.id
			GROUP BY a.external_id, en.id`); err != nil {
			t.Fatal(err)
		}
		out := map[string]row{}
		for _, r := range rows {
			out[r.Account] = r
		}
		return out
	}
	want := map[string]row{
		"a1": {"a1", "exited", "left segment risky", "one:skipped"},
		"a2": {"a2", "exited", "left segment risky", "one:skipped"},
		"a3": {"a3", "active", "", "one:scheduled"},
		"a4": {"a4", "active", "", "one:scheduled"},
		"a5": {"a5", "active", "", "one:scheduled"},
		"a6": {"a6", "completed", "no contact in the audience", ""},
	}
	if got := state(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after one batch:\n got %v\nwant %v", got, want)
	}
	// a3 and a4 had their first message sent; a5's is still scheduled.
	if _, err := l.db.Exec(`
		UPDATE message m SET status = 'sent', sent_at = $1 FROM enrollment en JOIN account a ON a.id = en.account_id
		WHERE m.enrollment_id = en.id AND a.external_id IN ('a3', 'a4')`, l.clock.Now()); err != nil {
		t.Fatal(err)
	}
	var all []int64
	if err := l.db.Select(&all, `SELECT id FROM enrollment ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	if err := postgres.InTx(ctx, l.db.DB, func(tx *sqlx.Tx) error { return l.enroller.Advance(ctx, tx, all) }); err != nil {
		t.Fatal(err)
	}
	want["a3"] = row{"a3", "active", "", "one:sent,two:scheduled"}
	want["a4"] = row{"a4", "active", "", "one:sent,two:scheduled"}
	if got := state(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after one advance:\n got %v\nwant %v", got, want)
	}
}

// TestEnrollExistingPagesThroughTheSegment: members are enrolled a page at a
// time, every one of them once, however the pages fall.
func TestEnrollExistingPagesThroughTheSegment(t *testing.T) {
	l := newLoop(t)
	ctx := context.Background()
	l.enroller.EnrollBatch = 2
	l.riskySegment()
	for _, id := range []string{"a1", "a2", "a3", "a4", "a5"} {
		l.account(id, "UTC", account.ContactInput{ID: id + "-ann", Email: ptr(id + "-ann@example.com")})
		l.risk(id, "high")
	}
	d := riskDrip()
	d.Audience, d.EnrollExisting = "", true
	l.applyDrip(d)
	n, err := l.enroller.EnrollExisting(ctx, "risk")
	if err != nil || n != 5 {
		t.Fatalf("enrolled %d (%v), want all 5 members", n, err)
	}
	var per []int
	if err := l.db.Select(&per, `
		SELECT count(m.id) FROM enrollment en LEFT JOIN message m ON m.enrollment_id = en.id GROUP BY en.id ORDER BY en.id`); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(per) != "[1 1 1 1 1]" {
		t.Fatalf("messages per enrollment %v, want one first-step message each", per)
	}
}

// AdvanceStalled moves on the enrollments whose step was settled without
// them moving on (a message made uncertain by the reaper, a step whose
// contact was deleted with its messages), not those still waiting on a
// message, and each only once, however many passes run at once.
func TestAdvanceStalledMovesEachStepOnce(t *testing.T) {
	l := newLoop(t)
	ctx := context.Background()
	l.riskDripForEveryContact()
	for _, id := range []string{"a1", "a2", "a3", "a4"} {
		l.account(id, "UTC", account.ContactInput{ID: id + "-ann", Email: ptr(id + "-ann@example.com")})
		l.risk(id, "high")
	}
	l.db.MustExec(`UPDATE message m SET status = 'uncertain', reason = 'reaped' FROM contact c
		WHERE c.id = m.contact_id AND c.external_id IN ('a1-ann', 'a2-ann')`)
	l.db.MustExec(`DELETE FROM contact WHERE external_id = 'a4-ann'`)

	const passes = 4
	moved := make(chan int, passes)
	errs := make(chan error, passes)
	for range passes {
		go func() {
			_, n, _, err := l.enroller.AdvanceStalled(ctx, campaign.StalledCursor{}, 100)
			moved <- n
			errs <- err
		}()
	}
	total := 0
	for range passes {
		total += <-moved
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if total != 3 {
		t.Errorf("%d passes at once moved %d enrollments on, want 3 (a1, a2, a4) once each", passes, total)
	}
	state := func() string {
		t.Helper()
		var rows []string
		if err := l.db.Select(&rows, `
			SELECT a.external_id || ' ' || en.status || ' at ' || en.step || coalesce(' (' || nullif(en.finish_reason, '') || ')', '') || ':' ||
			       coalesce((SELECT string_agg(m.step_id || ' ' || m.status, ',' ORDER BY m.id) FROM message m WHERE m.enrollment_id = en.id), '')
			FROM enrollment en JOIN account a ON a.id = en.account_id ORDER BY a.external_id`); err != nil {
			t.Fatal(err)
		}
		return strings.Join(rows, "; ")
	}
	want := "a1 active at 1:one uncertain,two scheduled; a2 active at 1:one uncertain,two scheduled; " +
		"a3 active at 0:one scheduled; a4 completed at 0 (no contact in the audience):"
	if got := state(); got != want {
		t.Fatalf("after the passes:\n got %s\nwant %s", got, want)
	}
	// Again: nothing to move on, nothing written.
	if _, n, through, err := l.enroller.AdvanceStalled(ctx, campaign.StalledCursor{}, 100); err != nil || n != 0 || !through {
		t.Fatalf("a second pass moved %d on (%v, through %v), want none, through", n, err, through)
	}
	if got := state(); got != want {
		t.Fatalf("after a second pass:\n got %s\nwant %s", got, want)
	}
}
