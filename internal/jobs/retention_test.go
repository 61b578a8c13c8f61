package jobs_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/jobs"
	"github.com/tendhq/tend/internal/testsvc"
)

// EventRetention works off a backlog over several sweeps when its budget is
// spent, then rests for Every, then prunes what has aged since.
func TestEventRetention(t *testing.T) {
	t.Parallel()
	db := testsvc.NewDB(t)
	clk := clock.NewManual(t0)
	accounts := account.NewStore(db.DB, clk)
	ctx := context.Background()
	if _, err := accounts.UpsertAccounts(ctx, []account.AccountInput{{ID: "acme"}}); err != nil {
		t.Fatal(err)
	}
	send := func(n int) {
		t.Helper()
		in := make([]account.EventInput, n)
		for i := range in {
			in[i] = account.EventInput{AccountID: "acme", Name: account.EventLogin}
		}
		if _, err := accounts.IngestEvents(ctx, in, false); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		t.Helper()
		var n int
		if err := db.Get(&n, `SELECT count(*) FROM usage_event`); err != nil {
			t.Fatal(err)
		}
		return n
	}
	r := &jobs.EventRetention{Accounts: accounts, Clock: clk, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Retention: 24 * time.Hour, Every: 48 * time.Hour, Batch: 2, Budget: time.Nanosecond}

	send(5) // at t0
	clk.Advance(24 * time.Hour)
	send(1) // at t0+24h
	clk.Advance(time.Hour)
	// The budget allows one batch a sweep: 5 old events take three sweeps.
	for i, want := range []int{4, 2, 1, 1} {
		if err := r.Run(ctx); err != nil {
			t.Fatal(err)
		}
		if got := count(); got != want {
			t.Fatalf("after sweep %d: %d events left, want %d", i+1, got, want)
		}
	}

	// Caught up: nothing more until Every has passed, though the last event
	// ages past the retention meanwhile.
	clk.Advance(25 * time.Hour)
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got := count(); got != 1 {
		t.Fatalf("within Every of catching up: %d events left, want 1", got)
	}
	clk.Advance(24 * time.Hour)
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got := count(); got != 0 {
		t.Fatalf("after Every: %d events left, want 0", got)
	}

	// Retention 0 keeps every event.
	send(3)
	clk.Advance(1000 * time.Hour)
	keep := &jobs.EventRetention{Accounts: accounts, Clock: clk, Log: r.Log, Every: time.Hour, Batch: 2, Budget: time.Second}
	if err := keep.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got := count(); got != 3 {
		t.Fatalf("with no retention: %d events left, want 3", got)
	}
}

// RollupRetention walks the accounts a batch a sweep when its budget is
// spent, then rests for Every, then prunes the days that have aged since.
func TestRollupRetention(t *testing.T) {
	t.Parallel()
	db := testsvc.NewDB(t)
	clk := clock.NewManual(t0)
	accounts := account.NewStore(db.DB, clk)
	ctx := context.Background()
	if _, err := accounts.UpsertAccounts(ctx, []account.AccountInput{{ID: "a"}, {ID: "b"}, {ID: "c"}}); err != nil {
		t.Fatal(err)
	}
	login := func(ids ...string) {
		t.Helper()
		in := make([]account.EventInput, len(ids))
		for i, id := range ids {
			in[i] = account.EventInput{AccountID: id, Name: account.EventLogin}
		}
		if _, err := accounts.IngestEvents(ctx, in, false); err != nil {
			t.Fatal(err)
		}
	}
	left := func() string {
		t.Helper()
		var out []string
		if err := db.Select(&out, `
			SELECT concat_ws(' ', a.external_id, d.day) FROM usage_daily d JOIN account a ON a.id = d.account_id ORDER BY 1`); err != nil {
			t.Fatal(err)
		}
		return strings.Join(out, ", ")
	}
	day := func(ago int) string { return clk.Now().AddDate(0, 0, -ago).Format(time.DateOnly) }

	login("a", "b", "c")
	clk.Advance(24 * time.Hour)
	login("a", "b", "c")
	clk.Advance(24 * time.Hour)
	login("a", "b", "c")
	clk.Advance(account.MinRollupRetention - 24*time.Hour)
	r := &jobs.RollupRetention{Accounts: accounts, Clock: clk, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Retention: account.MinRollupRetention, Every: 24 * time.Hour, Batch: 1, Rows: 100, Budget: time.Nanosecond}

	// The first day is before the cutoff; the budget allows one account a
	// sweep, and the fourth finds no account left: the pass is through.
	kept := int(account.MinRollupRetention / (24 * time.Hour))
	d0, d1, d2 := day(kept+1), day(kept), day(kept-1)
	for i, want := range []string{
		"a " + d1 + ", a " + d2 + ", b " + d0 + ", b " + d1 + ", b " + d2 + ", c " + d0 + ", c " + d1 + ", c " + d2,
		"a " + d1 + ", a " + d2 + ", b " + d1 + ", b " + d2 + ", c " + d0 + ", c " + d1 + ", c " + d2,
		"a " + d1 + ", a " + d2 + ", b " + d1 + ", b " + d2 + ", c " + d1 + ", c " + d2,
		"a " + d1 + ", a " + d2 + ", b " + d1 + ", b " + d2 + ", c " + d1 + ", c " + d2,
	} {
		if err := r.Run(ctx); err != nil {
			t.Fatal(err)
		}
		if got := left(); got != want {
			t.Fatalf("after sweep %d:\n%s\nwant\n%s", i+1, got, want)
		}
	}

	// Through: nothing more until Every has passed, though the second day
	// ages past the cutoff meanwhile.
	sweeps := func(n int) {
		t.Helper()
		for range n {
			if err := r.Run(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	through := left()
	clk.Advance(12 * time.Hour)
	sweeps(4)
	if got := left(); got != through {
		t.Fatalf("within Every of the last pass: %s, want %s", got, through)
	}
	clk.Advance(12 * time.Hour)
	sweeps(4)
	if got, want := left(), "a "+d2+", b "+d2+", c "+d2; got != want {
		t.Fatalf("after Every: %s, want %s", got, want)
	}

	// Retention 0 keeps every rollup.
	clk.Advance(1000 * time.Hour)
	keep := &jobs.RollupRetention{Accounts: accounts, Clock: clk, Log: r.Log, Every: time.Hour, Batch: 1, Budget: time.Second}
	if err := keep.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := left(), "a "+d2+", b "+d2+", c "+d2; got != want {
		t.Fatalf("with no retention: %s, want %s", got, want)
	}
}
