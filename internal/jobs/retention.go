package jobs

import (
	"context"
	"log/slog"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
)

// EventRetention deletes raw usage events older than Retention, run by the
// Scheduler every sweep: in batches of Batch, for about Budget of a sweep (a
// batch at least), so that a large backlog (retention just turned on) is
// worked off over several sweeps without holding up the rest of each; once
// caught up, again after Every. Every scheduler process prunes: the deletes
// of two meet on the same oldest rows, and the later one finds them gone.
type EventRetention struct {
	Accounts  *account.Store
	Clock     clock.Clock
	Log       *slog.Logger
	Retention time.Duration // 0 keeps raw events for ever
	Every     time.Duration
	Batch     int
	Budget    time.Duration

	pass paced
}

// Run prunes, when due.
func (e *EventRetention) Run(ctx context.Context) error {
	if e.Retention <= 0 {
		return nil
	}
	e.pass.every, e.pass.budget = e.Every, e.Budget
	now := e.Clock.Now()
	cutoff := now.Add(-e.Retention)
	total := 0
	defer func() {
		if total > 0 {
			e.Log.Info("pruned raw usage events", "events", total, "received_before", cutoff)
		}
	}()
	return e.pass.run(now, func() (bool, error) {
		n, err := e.Accounts.PruneEvents(ctx, cutoff, e.Batch)
		total += n
		return err == nil && n < e.Batch, err
	})
}

// RollupRetention deletes the daily usage rollups of days before Retention
// ago, and the activity of users last seen before then (account.Store.
// PruneRollups), run by the Scheduler every sweep: Batch accounts at a time,
// for about Budget of a sweep (a batch at least), going on where it stopped
// at the next sweep; once through every account, again after Every. Every
// scheduler process prunes; deleting what another already deleted deletes
// nothing.
type RollupRetention struct {
	Accounts  *account.Store
	Clock     clock.Clock
	Log       *slog.Logger
	Retention time.Duration // 0 keeps rollups for ever; else at least account.MinRollupRetention
	Every     time.Duration
	Batch     int
	Budget    time.Duration

	pass  paced
	after int64 // the last account of the pass in progress
}

// Run prunes, when due.
func (r *RollupRetention) Run(ctx context.Context) error {
	if r.Retention <= 0 {
		return nil
	}
	r.pass.every, r.pass.budget = r.Every, r.Budget
	now := r.Clock.Now()
	cutoff := now.Add(-r.Retention)
	total := 0
	defer func() {
		if total > 0 {
			r.Log.Info("pruned daily usage rollups and user activity", "rows", total, "before", cutoff)
		}
	}()
	return r.pass.run(now, func() (bool, error) {
		last, n, err := r.Accounts.PruneRollups(ctx, cutoff, r.after, r.Batch)
		total += n
		if err != nil {
			return false, err // the same accounts again at the next sweep
		}
		r.after = last
		return last == 0, nil
	})
}
