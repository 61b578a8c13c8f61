package testsvc

import (
	"testing"
	"time"
)

// CacheTally counts, while a test moves the clock with no new data, the
// cached rows (profiles, scores) read again after a midnight without being
// recomputed, and those recomputed because their validity ran out: a test of
// validity must see both, or it did not exercise what it tests.
type CacheTally struct{ KeptOverMidnight, Recomputed int }

// Stamps returns, by account, the column of query's rows that changes when a
// cached row is recomputed (query selects an account_id and that column).
func (d *DB) Stamps(tb testing.TB, query string) map[int64]time.Time {
	tb.Helper()
	var rows []struct {
		ID    int64     `db:"account_id"`
		Stamp time.Time `db:"stamp"`
	}
	if err := d.Select(&rows, query); err != nil {
		tb.Fatal(err)
	}
	out := make(map[int64]time.Time, len(rows))
	for _, r := range rows {
		out[r.ID] = r.Stamp
	}
	return out
}

// Add counts the accounts of one step, from their stamps before and after
// a read at now (the clock was at prev before the step).
func (c *CacheTally) Add(ids []int64, before, after map[int64]time.Time, prev, now time.Time) {
	midnight := now.UTC().Truncate(24 * time.Hour).After(prev.UTC().Truncate(24 * time.Hour))
	for _, id := range ids {
		switch {
		case !after[id].Equal(before[id]):
			c.Recomputed++
		case midnight:
			c.KeptOverMidnight++
		}
	}
}

// Check fails the test unless both happened; what names the rows.
func (c CacheTally) Check(tb testing.TB, what string) {
	tb.Helper()
	tb.Logf("%s kept over a midnight: %d; recomputed on validity alone: %d", what, c.KeptOverMidnight, c.Recomputed)
	if c.KeptOverMidnight == 0 {
		tb.Fatalf("no cached %s outlived a midnight: validity is not used", what)
	}
	if c.Recomputed == 0 {
		tb.Fatalf("no %s was recomputed as time passed: the test did not exercise validity", what)
	}
}
