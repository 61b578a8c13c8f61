package account_test

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
)

// Pruning deletes raw events received before the cutoff, oldest first and a
// batch at a time, and nothing a profile is computed from.
func TestPruneEvents(t *testing.T) {
	s, clk, db := newStore(t)
	ctx := context.Background()
	ingestAccounts(t, s, 2)
	send := func(id, name, messageID string) {
		t.Helper()
		at := clk.Now().Add(-time.Hour)
		res, err := s.IngestEvents(ctx, []account.EventInput{{AccountID: id, Name: name, Timestamp: &at, MessageID: messageID}}, false)
		if err != nil || res.Accepted != 1 {
			t.Fatalf("ingest %s %s: %+v, %v", id, name, res, err)
		}
	}
	for _, e := range [][3]string{{"a0", "login", "m1"}, {"a0", "export", ""}, {"a1", "login", ""}, {"a1", "login", ""}, {"a0", "login", ""}} {
		send(e[0], e[1], e[2])
	}
	clk.Advance(48 * time.Hour)
	send("a1", "login", "")
	send("a0", "export", "")
	clk.Advance(time.Hour)

	var a0 int64
	db.Get(&a0, `SELECT id FROM account WHERE external_id = 'a0'`)
	before, err := s.ProfileOf(ctx, a0)
	if err != nil {
		t.Fatal(err)
	}
	var rollups []string
	db.Select(&rollups, `SELECT concat_ws(' ', account_id, day, kind, key, n) FROM usage_daily ORDER BY 1`)

	cutoff := t0.Add(24 * time.Hour)
	var got []int
	for {
		n, err := s.PruneEvents(ctx, cutoff, 2)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
		if n < 2 {
			break
		}
	}
	if !reflect.DeepEqual(got, []int{2, 2, 1}) {
		t.Fatalf("batches deleted %v, want [2 2 1]", got)
	}
	var left []time.Time
	db.Select(&left, `SELECT received_at FROM usage_event ORDER BY id`)
	if len(left) != 2 || left[0].Before(cutoff) || left[1].Before(cutoff) {
		t.Fatalf("left %v, want the 2 events received after %s", left, cutoff)
	}
	if n, err := s.PruneEvents(ctx, cutoff, 2); n != 0 || err != nil {
		t.Fatalf("pruning again: %d, %v; want nothing", n, err)
	}

	after, err := s.ProfileOf(ctx, a0)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("the profile changed:\nbefore %+v\nafter  %+v", before, after)
	}
	var rollupsAfter []string
	db.Select(&rollupsAfter, `SELECT concat_ws(' ', account_id, day, kind, key, n) FROM usage_daily ORDER BY 1`)
	if !reflect.DeepEqual(rollups, rollupsAfter) || len(rollups) == 0 {
		t.Fatalf("rollups changed: %v -> %v", rollups, rollupsAfter)
	}

	// A pruned event's message id is no longer a repeat.
	send("a0", "login", "m1")
}

// Pruning rollups deletes, a batch of accounts at a time, the daily rollups
// of days before the cutoff and the users last seen before it, and nothing a
// profile is computed from; it refuses a cutoff that would.
func TestPruneRollups(t *testing.T) {
	s, clk, db := newStore(t)
	ctx := context.Background()
	ingestAccounts(t, s, 3)
	send := func(id, contact, name, feature string) {
		t.Helper()
		at := clk.Now().Add(-time.Hour)
		var props json.RawMessage
		if feature != "" {
			props = json.RawMessage(`{"feature": "` + feature + `"}`)
		}
		res, err := s.IngestEvents(ctx, []account.EventInput{{AccountID: id, ContactID: contact, Name: name, Properties: props, Timestamp: &at}}, false)
		if err != nil || res.Accepted != 1 {
			t.Fatalf("ingest %s %s: %+v, %v", id, name, res, err)
		}
	}
	send("a0", "u-old", "login", "")
	send("a1", "u-old", "feature_used", "export")
	clk.Advance(account.MinRollupRetention + 24*time.Hour)
	send("a0", "u-new", "login", "")
	send("a2", "u-new", "login", "")
	send("a1", "u-new", "feature_used", "export")

	var ids []int64
	if err := db.Select(&ids, `SELECT id FROM account ORDER BY id`); err != nil {
		t.Fatal(err)
	}
	rows := func() string {
		t.Helper()
		var out []string
		if err := db.Select(&out, `
			SELECT concat_ws(' ', a.external_id, d.day, d.kind, d.key, d.n) FROM usage_daily d JOIN account a ON a.id = d.account_id
			UNION ALL
			SELECT concat_ws(' ', a.external_id, u.user_key) FROM account_user_activity u JOIN account a ON a.id = u.account_id
			ORDER BY 1`); err != nil {
			t.Fatal(err)
		}
		return strings.Join(out, ", ")
	}
	all := rows()
	before, err := account.Profiles(ctx, db.DB, ids, clk.Now())
	if err != nil {
		t.Fatal(err)
	}

	// A cutoff within MinRollupRetention of now would change profiles.
	if _, _, _, err := s.PruneRollups(ctx, clk.Now().Add(-account.MinRollupRetention+time.Second), 0, 10, 10); err == nil {
		t.Fatal("a cutoff within MinRollupRetention: want an error")
	}
	if got := rows(); got != all {
		t.Fatalf("a refused prune deleted rows: %s -> %s", all, got)
	}

	// Two accounts a statement, at most two rows of each table: a0 and a1
	// have three old rollups and two old users, so the first statement
	// leaves one rollup and goes on with the same accounts.
	cutoff := clk.Now().Add(-account.MinRollupRetention)
	for i, want := range []struct {
		next    int64
		n       int
		through bool
	}{{0, 4, false}, {ids[1], 1, false}, {0, 0, true}} {
		var after int64
		if i == 2 {
			after = ids[1]
		}
		next, n, through, err := s.PruneRollups(ctx, cutoff, after, 2, 2)
		if err != nil || next != want.next || n != want.n || through != want.through {
			t.Fatalf("statement %d after %d: next %d, %d rows, through %v, %v; want next %d, %d rows, through %v",
				i+1, after, next, n, through, err, want.next, want.n, want.through)
		}
	}
	day := clk.Now().Add(-time.Hour).Format(time.DateOnly)
	want := strings.Join([]string{"a0 " + day + " e login 1", "a0 u-new", "a1 " + day + " e feature_used 1", "a1 " + day + " f export 1",
		"a1 u-new", "a2 " + day + " e login 1", "a2 u-new"}, ", ")
	if got := rows(); got != want {
		t.Fatalf("left:\n%s\nwant:\n%s\n(all before: %s)", got, want, all)
	}
	after, err := account.Profiles(ctx, db.DB, ids, clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("profiles changed:\nbefore %+v\nafter  %+v", before, after)
	}
	if next, n, through, err := s.PruneRollups(ctx, cutoff, 0, 10, 10); next != 0 || n != 0 || !through || err != nil {
		t.Fatalf("pruning again: next %d, %d rows, through %v, %v; want through, nothing", next, n, through, err)
	}
}
