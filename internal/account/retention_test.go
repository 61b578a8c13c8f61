package account_test

import (
	"context"
	"reflect"
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
