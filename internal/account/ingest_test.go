package account_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/testsvc"
)

// ingestAccounts creates accounts a0..a(n-1).
func ingestAccounts(t *testing.T, s *account.Store, n int) {
	t.Helper()
	in := make([]account.AccountInput, n)
	for i := range in {
		in[i] = account.AccountInput{ID: fmt.Sprintf("a%d", i)}
	}
	if _, err := s.UpsertAccounts(context.Background(), in); err != nil {
		t.Fatal(err)
	}
}

// wantSameRows fails unless two queries return the same set of rows.
func wantSameRows(t *testing.T, db *testsvc.DB, what, stored, derived string) {
	t.Helper()
	for _, q := range []string{
		`SELECT count(*) FROM ((` + stored + `) EXCEPT ALL (` + derived + `)) x`,
		`SELECT count(*) FROM ((` + derived + `) EXCEPT ALL (` + stored + `)) x`,
	} {
		var n int
		if err := db.Get(&n, q); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if n != 0 {
			t.Errorf("%s: %d rows differ from what the stored events imply", what, n)
		}
	}
}

// The rollups, user activity, last logins and change versions written with
// the events agree with the events stored, whatever the batches hold: repeated
// message ids (within and across batches), bad items in partial mode, a
// "Feature" key that is not "feature", and nanosecond timestamps next to a
// day boundary (PostgreSQL keeps microseconds).
func TestIngestDerivedDataMatchesEvents(t *testing.T) {
	s, _, db := newStore(t)
	ctx := context.Background()
	const accounts = 12
	ingestAccounts(t, s, accounts)
	versions := func() map[string]int64 {
		var rows []struct {
			Ext string `db:"external_id"`
			V   int64  `db:"change_version"`
		}
		if err := db.Select(&rows, `SELECT external_id, change_version FROM account`); err != nil {
			t.Fatal(err)
		}
		m := map[string]int64{}
		for _, r := range rows {
			m[r.Ext] = r.V
		}
		return m
	}
	before := versions()

	rng := rand.New(rand.NewPCG(7, 8))
	midnight := time.Date(2026, 6, 14, 0, 0, 0, 0, time.UTC)
	bumps := map[int64]int64{}
	accepted := 0
	for batch := 0; batch < 12; batch++ {
		var in []account.EventInput
		for j := 0; j < 150; j++ {
			// Half the events sit within a microsecond of a midnight.
			at := midnight.AddDate(0, 0, -rng.IntN(3)).Add(time.Duration(rng.IntN(2000)-1000) * time.Nanosecond)
			if rng.IntN(2) == 0 {
				at = t0.Add(-time.Duration(rng.Int64N(int64(72 * time.Hour))))
			}
			e := account.EventInput{AccountID: fmt.Sprintf("a%d", rng.IntN(accounts)), Timestamp: &at}
			if c := rng.IntN(6); c > 0 {
				e.ContactID = fmt.Sprintf("u%d", c)
			}
			switch rng.IntN(5) {
			case 0, 1:
				e.Name = account.EventLogin
			case 2:
				e.Name = account.EventFeatureUsed
				e.Properties = json.RawMessage(fmt.Sprintf(`{"feature":"f%d","Feature":"other"}`, rng.IntN(3)))
			case 3:
				e.Name = "export_csv"
			default:
				e.Name = "feature_used_not" // an ordinary name
				e.Properties = json.RawMessage(`{"feature":"ignored"}`)
			}
			if rng.IntN(3) == 0 {
				e.MessageID = fmt.Sprintf("m%d", rng.IntN(120)) // repeats within and across batches
			}
			if rng.IntN(25) == 0 {
				e.AccountID = "ghost" // a bad item, dropped in partial mode
			}
			in = append(in, e)
		}
		res, err := s.IngestEvents(ctx, in, true)
		if err != nil {
			t.Fatalf("batch %d: %v", batch, err)
		}
		accepted += res.Accepted
		for _, id := range res.Changed {
			bumps[id]++
		}
	}

	var stored int
	db.Get(&stored, `SELECT count(*) FROM usage_event`)
	if stored != accepted {
		t.Errorf("results accepted %d events, %d stored", accepted, stored)
	}
	var distinctIDs, withIDs int
	db.Get(&distinctIDs, `SELECT count(DISTINCT message_id) FROM usage_event`)
	db.Get(&withIDs, `SELECT count(message_id) FROM usage_event`)
	if distinctIDs != withIDs {
		t.Errorf("%d events with a message id, %d distinct ids", withIDs, distinctIDs)
	}
	wantSameRows(t, db, "usage_daily",
		`SELECT account_id, day, kind, key, n FROM usage_daily`,
		`SELECT account_id, (occurred_at AT TIME ZONE 'UTC')::date, 'e'::"char", name, count(*)::int FROM usage_event GROUP BY 1, 2, 4
		 UNION ALL
		 SELECT account_id, (occurred_at AT TIME ZONE 'UTC')::date, 'f'::"char", properties->>'feature', count(*)::int
		 FROM usage_event WHERE name = 'feature_used' GROUP BY 1, 2, 4`)
	wantSameRows(t, db, "account_user_activity",
		`SELECT account_id, user_key, last_seen_at FROM account_user_activity`,
		`SELECT account_id, user_key, max(occurred_at) FROM usage_event WHERE user_key <> '' GROUP BY 1, 2`)
	wantSameRows(t, db, "account.last_login_at",
		`SELECT id, last_login_at FROM account`,
		`SELECT a.id, (SELECT max(occurred_at) FROM usage_event e WHERE e.account_id = a.id AND e.name = 'login') FROM account a`)
	after := versions()
	for ext, v := range after {
		id := accountID(t, db, ext)
		if v-before[ext] != bumps[id] {
			t.Errorf("account %s: change_version moved by %d, reported changed %d times", ext, v-before[ext], bumps[id])
		}
	}
	var changedWithoutEvents int
	db.Get(&changedWithoutEvents, `SELECT count(*) FROM account a WHERE change_version > 1 AND NOT EXISTS (SELECT 1 FROM usage_event e WHERE e.account_id = a.id)`)
	if changedWithoutEvents != 0 {
		t.Errorf("%d accounts changed without a stored event", changedWithoutEvents)
	}
}

// Concurrent batches over the same accounts meet on message ids, rollup,
// activity and account rows; they must wait for each other, never deadlock.
func TestConcurrentIngestOverSharedAccounts(t *testing.T) {
	_, clk, db := newStore(t)
	ctx := context.Background()
	const accounts, workers, batches, size = 1000, 4, 6, 500
	s := account.NewStore(db.DB, clk, account.IngestConcurrency(workers)) // all of them at once
	ingestAccounts(t, s, accounts)
	var wg sync.WaitGroup
	var accepted atomic.Int64
	errc := make(chan error, workers*batches)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			for b := 0; b < batches; b++ {
				in := make([]account.EventInput, size)
				for j := range in {
					at := t0.Add(-time.Duration(rng.IntN(5)) * 24 * time.Hour)
					in[j] = account.EventInput{AccountID: fmt.Sprintf("a%d", rng.IntN(accounts)), ContactID: fmt.Sprintf("u%d", rng.IntN(3)), Name: account.EventLogin, Timestamp: &at}
					if j%2 == 0 {
						in[j].Name, in[j].Properties = account.EventFeatureUsed, json.RawMessage(fmt.Sprintf(`{"feature":"f%d"}`, rng.IntN(2)))
					}
					if j%3 == 0 {
						in[j].MessageID = fmt.Sprintf("m%d", rng.IntN(2000)) // shared by the workers
					}
				}
				res, err := s.IngestEvents(ctx, in, false)
				if err != nil {
					errc <- err
					return
				}
				accepted.Add(int64(res.Accepted))
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	var n, sum, ids, distinctIDs int
	db.Get(&n, `SELECT count(*) FROM usage_event`)
	db.Get(&sum, `SELECT coalesce(sum(n), 0) FROM usage_daily WHERE kind = 'e'`)
	db.Get(&ids, `SELECT count(message_id) FROM usage_event`)
	db.Get(&distinctIDs, `SELECT count(DISTINCT message_id) FROM usage_event`)
	if int64(n) != accepted.Load() || sum != n || ids != distinctIDs || n <= workers*batches*size/2 {
		t.Errorf("accepted %d, stored %d events (%d message ids, %d distinct), daily counts sum to %d",
			accepted.Load(), n, ids, distinctIDs, sum)
	}
}

// A Store writes at most IngestConcurrency batches at once; the next waits
// for a turn as long as its context allows, and stores nothing if it gives
// up.
func TestIngestConcurrencyBound(t *testing.T) {
	_, clk, db := newStore(t)
	ctx := context.Background()
	one := account.NewStore(db.DB, clk, account.IngestConcurrency(1))
	two := account.NewStore(db.DB, clk, account.IngestConcurrency(2))
	ingestAccounts(t, one, 2)
	batch := func(id string) []account.EventInput {
		return []account.EventInput{{AccountID: id, Name: account.EventLogin}}
	}

	// Hold a0's row: a batch naming it waits in PostgreSQL, in its turn.
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`SELECT 1 FROM account WHERE external_id = 'a0' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	// blocked starts a batch naming a0 and returns once it is the want-th
	// waiting on a0's row.
	blocked := func(s *account.Store, want int) chan error {
		done := make(chan error, 1)
		go func() {
			_, err := s.IngestEvents(ctx, batch("a0"), false)
			done <- err
		}()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var waiting int
			// This test's database only: other packages' tests ingest
			// (and wait on rows) in theirs at the same time.
			if err := db.Get(&waiting, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database()
				  AND query LIKE '%INSERT INTO usage_event%' AND wait_event_type = 'Lock'`); err != nil {
				t.Fatal(err)
			}
			if waiting == want {
				return done
			}
			if time.Now().After(deadline) {
				t.Fatal("the batch naming a0 never waited on its row")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// Bound 2: a batch for a1 goes on beside it.
	done2 := blocked(two, 1)
	if _, err := two.IngestEvents(ctx, batch("a1"), false); err != nil {
		t.Fatalf("with a second turn free: %v", err)
	}

	// Bound 1: the batch for a1 waits for the turn, and gives up with its
	// context, having stored nothing.
	done1 := blocked(one, 2)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := one.IngestEvents(short, batch("a1"), false); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("with no turn free: err = %v, want the context's deadline", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	for _, done := range []chan error{done2, done1} {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := one.IngestEvents(ctx, batch("a1"), false); err != nil {
		t.Fatalf("after the turn came free: %v", err)
	}
	var a0, a1 int
	db.Get(&a0, `SELECT count(*) FROM usage_event e JOIN account a ON a.id = e.account_id WHERE a.external_id = 'a0'`)
	db.Get(&a1, `SELECT count(*) FROM usage_event e JOIN account a ON a.id = e.account_id WHERE a.external_id = 'a1'`)
	if a0 != 2 || a1 != 2 {
		t.Fatalf("events stored: a0 %d, a1 %d; want 2 each (the batch that gave up stores none)", a0, a1)
	}
}
