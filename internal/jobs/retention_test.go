package jobs_test

import (
	"context"
	"io"
	"log/slog"
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
