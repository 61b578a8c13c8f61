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

	next time.Time // when to look again, once caught up
}

// Run prunes, when due.
func (e *EventRetention) Run(ctx context.Context) error {
	now := e.Clock.Now()
	if e.Retention <= 0 || now.Before(e.next) {
		return nil
	}
	cutoff := now.Add(-e.Retention)
	start := time.Now() // the budget is the process's own time, not the clock's
	total := 0
	defer func() {
		if total > 0 {
			e.Log.Info("pruned raw usage events", "events", total, "received_before", cutoff)
		}
	}()
	for {
		n, err := e.Accounts.PruneEvents(ctx, cutoff, e.Batch)
		total += n
		if err != nil {
			return err
		}
		if n < e.Batch {
			e.next = now.Add(e.Every)
			return nil
		}
		if time.Since(start) >= e.Budget {
			return nil // more to do: the next sweep goes on
		}
	}
}
