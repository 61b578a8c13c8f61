package segment

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
	"github.com/tendhq/tend/internal/testsvc"
)

var t0 = time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)

type fixture struct {
	t        *testing.T
	db       *testsvc.DB
	clock    *clock.Manual
	accounts *account.Store
	segments *Store
	engine   *Engine
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	t.Parallel()
	db := testsvc.NewDB(t)
	clk := clock.NewManual(t0)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f := &fixture{t: t, db: db, clock: clk, accounts: account.NewStore(db.DB, clk), segments: NewStore(db.DB, clk), engine: NewEngine(db.DB, clk, log)}
	f.engine.ShardSize = 7 // several shards even for a handful of accounts
	return f
}

func ptr[T any](v T) *T { return &v }

func (f *fixture) account(id string, in account.AccountInput) {
	f.t.Helper()
	in.ID = id
	if _, err := f.accounts.UpsertAccounts(context.Background(), []account.AccountInput{in}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) logins(id string, n int, at time.Time) {
	f.t.Helper()
	ev := make([]account.EventInput, n)
	for i := range ev {
		ev[i] = account.EventInput{AccountID: id, Name: "login", ContactID: "u1", Timestamp: ptr(at)}
	}
	if _, err := f.accounts.IngestEvents(context.Background(), ev, false); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) create(name, pred string) Segment {
	f.t.Helper()
	s, err := f.segments.Create(context.Background(), Input{Name: name, Predicate: pred})
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// pass runs a whole pass (key) the way the worker pool does, shard by shard.
func (f *fixture) pass(key string, segmentID int64) Stats {
	f.t.Helper()
	shards, err := f.engine.StartPass(context.Background(), key, segmentID)
	if err != nil {
		f.t.Fatal(err)
	}
	var st Stats
	for _, sh := range shards {
		s, err := f.engine.RunShard(context.Background(), sh)
		if err != nil {
			f.t.Fatal(err)
		}
		st.add(s)
	}
	return st
}

func (f *fixture) build(s Segment) {
	f.t.Helper()
	f.pass(BuildKey(s.ID, s.Generation), s.ID)
}

func (f *fixture) dirty() Stats {
	f.t.Helper()
	st, more, err := f.engine.EvaluateDirty(context.Background(), 0, 1)
	if err != nil || more {
		f.t.Fatalf("dirty: more=%v err=%v", more, err)
	}
	return st
}

// members returns the segment's current members by external id.
func (f *fixture) members(name string) map[string]string {
	f.t.Helper()
	ms, err := f.segments.Members(context.Background(), name, 0, 1000)
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range ms {
		out[m.Account] = m.Reason
	}
	return out
}

type event struct {
	Account, Kind, Reason string
}

func (f *fixture) events(segment string) []event {
	f.t.Helper()
	var out []event
	err := f.db.Select(&out, `
		SELECT a.external_id AS account, e.kind, e.reason FROM segment_event e
		JOIN account a ON a.id = e.account_id JOIN segment s ON s.id = e.segment_id
		WHERE s.name = $1 ORDER BY e.id`, segment)
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

func TestEntryAndExitHistoryWithReasons(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	signup := t0.AddDate(0, 0, -60)
	f.account("active", account.AccountInput{Plan: ptr("pro"), SignupAt: &signup})
	f.account("idle", account.AccountInput{Plan: ptr("pro"), SignupAt: &signup})
	f.account("free", account.AccountInput{Plan: ptr("free"), SignupAt: &signup})
	f.logins("active", 3, t0.Add(-time.Hour))
	f.dirty() // no segments yet: accounts are marked evaluated all the same

	seg := f.create("engaged-pro", `plan == "pro" && logins_7d >= 2`)
	if seg.Status != StatusBuilding {
		t.Fatalf("a new segment is building, got %s", seg.Status)
	}
	f.build(seg)
	if got := f.members("engaged-pro"); len(got) != 1 || got["active"] != ReasonInitial {
		t.Fatalf("after the build: %v", got)
	}
	if s, _ := f.segments.Get(ctx, "engaged-pro"); s.Status != StatusReady || s.Members != 1 {
		t.Fatalf("after the build the segment is ready with 1 member: %+v", s)
	}

	// Data changes: idle logs in twice and enters with reason data.
	f.logins("idle", 2, t0)
	if st := f.dirty(); st.Entered != 1 {
		t.Fatalf("dirty evaluation: %+v", st)
	}
	if got := f.members("engaged-pro"); got["idle"] != ReasonData {
		t.Fatalf("idle entered with reason %q", got["idle"])
	}

	// Time passes with no new event: both slide out of the 7-day window.
	f.clock.Advance(8 * 24 * time.Hour)
	if st := f.pass("fullpass:1", 0); st.Exited != 2 {
		t.Fatalf("time pass: %+v", st)
	}
	if got := f.members("engaged-pro"); len(got) != 0 {
		t.Fatalf("members after 8 days: %v", got)
	}
	want := []event{{"active", "enter", "initial"}, {"idle", "enter", "data"}, {"active", "exit", "time"}, {"idle", "exit", "time"}}
	if got := f.events("engaged-pro"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events = %v, want %v", got, want)
	}

	// History per account keeps both stays' entry and exit.
	var id int64
	f.db.Get(&id, `SELECT id FROM account WHERE external_id = 'active'`)
	hist, err := f.segments.History(ctx, id, 10)
	if err != nil || len(hist) != 1 || hist[0].ExitedAt == nil || *hist[0].ExitReason != ReasonTime {
		t.Fatalf("history = %+v, %v", hist, err)
	}
	// Re-entry opens a new stay and keeps the old one.
	f.logins("active", 2, f.clock.Now())
	f.dirty()
	hist, _ = f.segments.History(ctx, id, 10)
	if len(hist) != 2 || hist[0].ExitedAt != nil || hist[0].EntryReason != ReasonData {
		t.Fatalf("history after re-entry = %+v", hist)
	}
	cur, _ := f.segments.CurrentOf(ctx, id)
	if len(cur) != 1 || cur[0] != "engaged-pro" {
		t.Fatalf("current segments = %v", cur)
	}
}

func TestEditAndDeleteRecordDefinitionAndDeletedReasons(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.account("a", account.AccountInput{Seats: ptr(5)})
	f.account("b", account.AccountInput{Seats: ptr(50)})
	seg := f.create("big", `seats >= 10`)
	f.build(seg)
	seg, err := f.segments.Update(ctx, "big", Input{Predicate: `seats >= 3`})
	if err != nil || seg.Status != StatusBuilding || seg.Generation != 2 {
		t.Fatalf("update: %+v %v", seg, err)
	}
	f.build(seg)
	if got := f.members("big"); got["a"] != ReasonDefinition || got["b"] != ReasonInitial {
		t.Fatalf("members after edit: %v", got)
	}
	// Saving the same predicate again does not rebuild.
	if s, _ := f.segments.Update(ctx, "big", Input{Predicate: `seats >= 3`, Description: ptr("teams")}); s.Generation != 2 || s.Status != StatusReady || s.Description != "teams" {
		t.Fatalf("no-op edit: %+v", s)
	}
	if err := f.segments.Delete(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.segments.Get(ctx, "big"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("deleted segment still found: %v", err)
	}
	var exits int
	f.db.Get(&exits, `SELECT count(*) FROM segment_event WHERE kind = 'exit' AND reason = 'deleted'`)
	if exits != 2 {
		t.Fatalf("deleting closes both stays, got %d exits", exits)
	}
	// The name is free again.
	f.create("big", `seats >= 3`)
}

func TestConcurrentFullPassesAgree(t *testing.T) {
	f := newFixture(t)
	for i := 0; i < 60; i++ {
		f.account(fmt.Sprintf("acc-%02d", i), account.AccountInput{Seats: ptr(i)})
	}
	segs := []Segment{f.create("even", `seats % 2 == 0`), f.create("large", `seats >= 30`)}
	f.engine.BatchSize = 8
	// Two schedulers' passes under different keys (worst case), each run by
	// four workers at once.
	var wg sync.WaitGroup
	for _, key := range []string{"fullpass:a", "fullpass:b"} {
		shards, err := f.engine.StartPass(context.Background(), key, 0)
		if err != nil {
			t.Fatal(err)
		}
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := w; i < len(shards); i += 4 {
					if _, err := f.engine.RunShard(context.Background(), shards[i]); err != nil {
						t.Error(err)
					}
				}
			}(w)
		}
	}
	wg.Wait()
	if got := len(f.members("even")); got != 30 {
		t.Fatalf("even has %d members, want 30", got)
	}
	if got := len(f.members("large")); got != 30 {
		t.Fatalf("large has %d members, want 30", got)
	}
	var dupes int
	f.db.Get(&dupes, `SELECT count(*) FROM (SELECT segment_id, account_id FROM segment_event GROUP BY 1, 2 HAVING count(*) > 1) d`)
	if dupes != 0 {
		t.Fatalf("%d (segment, account) pairs have duplicate history", dupes)
	}
	var events int
	f.db.Get(&events, `SELECT count(*) FROM segment_event`)
	if events != 60 {
		t.Fatalf("want 60 entry events, got %d", events)
	}
	for _, s := range segs {
		if got, _ := f.segments.Get(context.Background(), s.Name); got.Status != StatusReady {
			t.Errorf("%s not ready after a full pass: %s", s.Name, got.Status)
		}
	}
	// The same pass key again is idempotent: no open shards, nothing new.
	if shards, err := f.engine.StartPass(context.Background(), "fullpass:a", 0); err != nil || len(shards) != 0 {
		t.Fatalf("restarting a finished pass: %v %v", shards, err)
	}
}

func TestRuntimeErrorsAreCountedNotFatal(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.account("numeric", account.AccountInput{Traits: json.RawMessage(`{"employees": 500}`)})
	f.account("wrong", account.AccountInput{Traits: json.RawMessage(`{"employees": "many"}`)})
	f.account("missing", account.AccountInput{})
	seg := f.create("large-co", `traits.employees > 100`)
	f.build(seg)
	if got := f.members("large-co"); len(got) != 1 || got["numeric"] == "" {
		t.Fatalf("members = %v", got)
	}
	s, _ := f.segments.Get(ctx, "large-co")
	if s.ErrorCount != 1 || s.LastError == "" || s.LastErrorAt == nil {
		t.Fatalf("want one counted error with a message: %+v", s)
	}
}

func TestStaleEvaluationWritesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.account("a", account.AccountInput{Seats: ptr(5)})
	seg := f.create("any", `seats > 0`)
	var v versionRow
	f.db.Get(&v, `SELECT id, change_version, evaluated_version FROM account WHERE external_id = 'a'`)
	// New data arrives after an evaluation read version v...
	f.account("a", account.AccountInput{Seats: ptr(6)})
	// ...so its result for v must not be written, nor v marked evaluated.
	entered, _, err := f.engine.write(ctx, f.clock.Now(),
		[]diff{{SegmentID: seg.ID, Generation: seg.Generation, AccountID: v.ID, Version: v.Version, Reason: ReasonData}},
		nil, nil, []versionRow{v})
	if err != nil || entered != 0 {
		t.Fatalf("stale write entered %d, err %v", entered, err)
	}
	if dirty, _ := f.engine.HasDirty(ctx); !dirty {
		t.Fatal("the account must stay dirty for the newer version")
	}
	st := f.dirty()
	if st.Entered != 1 {
		t.Fatalf("the newer evaluation enters it: %+v", st)
	}
	if dirty, _ := f.engine.HasDirty(ctx); dirty {
		t.Fatal("nothing dirty after evaluation")
	}
}

func TestSegmentInputErrors(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.create("taken", `seats > 1`)
	cases := []struct {
		in   Input
		code string
	}{
		{Input{Name: "Bad Name", Predicate: `seats > 1`}, "invalid_name"},
		{Input{Name: "", Predicate: `seats > 1`}, "invalid_name"},
		{Input{Name: "x", Predicate: `seats >`}, "invalid_predicate"},
		{Input{Name: "x", Predicate: `nope == 1`}, "invalid_predicate"},
		{Input{Name: "x", Predicate: `seats + 1`}, "invalid_predicate"},
		{Input{Name: "taken", Predicate: `seats > 2`}, "segment_exists"},
	}
	for _, c := range cases {
		_, err := f.segments.Create(ctx, c.in)
		e, ok := err.(*errs.Error)
		if !ok || e.Code != c.code {
			t.Errorf("%+v: got %v, want %s", c.in, err, c.code)
		}
	}
	if _, err := f.segments.Update(ctx, "ghost", Input{Predicate: `seats > 1`}); !errs.Is(err, errs.NotFound) {
		t.Errorf("update of a missing segment: %v", err)
	}
	if _, err := f.segments.Update(ctx, "taken", Input{Name: "other", Predicate: `seats > 1`}); !errs.Is(err, errs.Invalid) {
		t.Errorf("rename: %v", err)
	}
	if err := f.segments.Delete(ctx, "ghost"); !errs.Is(err, errs.NotFound) {
		t.Errorf("delete of a missing segment: %v", err)
	}
	var n int
	f.db.Get(&n, `SELECT count(*) FROM segment`)
	if n != 1 {
		t.Fatalf("refused input stored segments: %d", n)
	}
}

// TestChangesWaitInAccountPending: every write of the account store that
// changes an account leaves it in account_pending, where EvaluateDirty finds
// it without a signal, and its evaluation takes it off.
func TestChangesWaitInAccountPending(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	pending := func() []string {
		t.Helper()
		var ids []string
		if err := f.db.Select(&ids, `SELECT a.external_id FROM account_pending p JOIN account a ON a.id = p.account_id ORDER BY 1`); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	evaluated := func(what string) {
		t.Helper()
		f.dirty()
		if p := pending(); len(p) != 0 {
			t.Fatalf("after evaluation (%s), still pending: %v", what, p)
		}
	}
	writes := []struct {
		what  string
		write func()
	}{
		{"a new account", func() { f.account("a", account.AccountInput{Seats: ptr(5)}) }},
		{"an account update", func() { f.account("a", account.AccountInput{Seats: ptr(6)}) }},
		{"events", func() { f.logins("a", 2, t0.Add(-time.Hour)) }},
		{"metrics", func() {
			if _, err := f.accounts.RecordMetrics(ctx, []account.MetricInput{{AccountID: "a", Values: map[string]float64{"nps": 9}}}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, w := range writes {
		w.write()
		if p := pending(); fmt.Sprint(p) != "[a]" {
			t.Fatalf("after %s: pending %v, want [a]", w.what, p)
		}
		evaluated(w.what)
	}
	// An update that changes nothing leaves nothing to evaluate.
	f.account("a", account.AccountInput{Seats: ptr(6)})
	if p := pending(); len(p) != 0 {
		t.Fatalf("an update that changed nothing made %v pending", p)
	}
}

// TestPendingSurvivesAConcurrentChange: an evaluation of version v that
// records itself while a writer holds the account, bumping it to v+1, must
// leave the account pending — the writer's own insert found the account
// already listed and added nothing.
func TestPendingSurvivesAConcurrentChange(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.account("a", account.AccountInput{Seats: ptr(5)}) // pending at version v
	var v versionRow
	if err := f.db.Get(&v, `SELECT id, change_version, evaluated_version FROM account WHERE external_id = 'a'`); err != nil {
		t.Fatal(err)
	}
	w, err := f.db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Rollback()
	if _, err := w.Exec(`UPDATE account SET change_version = change_version + 1 WHERE id = $1`, v.ID); err != nil {
		t.Fatal(err)
	}
	if err := account.MarkPending(ctx, w, []int64{v.ID}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := f.engine.write(ctx, f.clock.Now(), nil, nil, nil, []versionRow{v})
		done <- err
	}()
	// The evaluation waits for the writer's row lock.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting bool
		if err := f.db.Get(&waiting, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock')`); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the evaluation never waited for the writer's lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if dirty, _ := f.engine.HasDirty(ctx); !dirty {
		t.Fatal("the account lost its place in account_pending: version v+1 would never be evaluated without a signal")
	}
	f.dirty()
	if dirty, _ := f.engine.HasDirty(ctx); dirty {
		t.Fatal("still dirty after evaluating v+1")
	}
}
