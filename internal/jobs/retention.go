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
	return prune(&e.pass, e.Clock.Now(), e.Retention, e.Every, e.Budget, e.Log, "pruned raw usage events",
		func(cutoff time.Time) (int, bool, error) {
			n, err := e.Accounts.PruneEvents(ctx, cutoff, e.Batch)
			return n, err == nil && n < e.Batch, err
		})
}

// RollupRetention deletes the daily usage rollups of days before Retention
// ago, and the activity of users last seen before then (account.Store.
// PruneRollups), run by the Scheduler every sweep: Batch accounts and at
// most Rows rows of each table a statement, for about Budget of a sweep (a
// batch at least), going on where it stopped at the next sweep; once through
// every account, again after Every. Every scheduler process prunes;
// deleting what another already deleted deletes nothing.
type RollupRetention struct {
	Accounts  *account.Store
	Clock     clock.Clock
	Log       *slog.Logger
	Retention time.Duration // 0 keeps rollups for ever; else at least account.MinRollupRetention
	Every     time.Duration
	Batch     int // accounts a statement
	Rows      int // rollups and users deleted a statement, at most
	Budget    time.Duration

	pass  paced
	after int64 // the last account of the pass in progress
}

// Run prunes, when due.
func (r *RollupRetention) Run(ctx context.Context) error {
	return prune(&r.pass, r.Clock.Now(), r.Retention, r.Every, r.Budget, r.Log, "pruned daily usage rollups and user activity",
		func(cutoff time.Time) (int, bool, error) {
			next, n, through, err := r.Accounts.PruneRollups(ctx, cutoff, r.after, r.Batch, r.Rows)
			if err != nil {
				return n, false, err // the same accounts again at the next sweep
			}
			r.after = next
			return n, through, nil
		})
}

// prune runs a retention pass at now when retention is set (not 0): batches
// paced by p (see paced.run), each deleting what is older than retention and
// saying how many rows it deleted and whether the pass is through; what
// they deleted is logged as msg.
func prune(p *paced, now time.Time, retention, every, budget time.Duration, log *slog.Logger, msg string,
	batch func(cutoff time.Time) (n int, through bool, err error)) error {
	if retention <= 0 {
		return nil
	}
	cutoff := now.Add(-retention)
	total := 0
	defer func() {
		if total > 0 {
			log.Info(msg, "rows", total, "before", cutoff)
		}
	}()
	return p.run(now, every, budget, func() (bool, error) {
		n, through, err := batch(cutoff)
		total += n
		return through, err
	})
}
