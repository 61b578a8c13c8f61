package clock_test

import (
	"context"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/testsvc"
)

func TestSharedClockFollowsTheStoredOffset(t *testing.T) {
	t.Parallel()
	db := testsvc.NewDB(t)
	ctx := context.Background()
	a, err := clock.NewShared(ctx, db.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	b, err := clock.NewShared(ctx, db.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	if a.Offset() != 0 {
		t.Fatalf("a fresh database has no offset, got %s", a.Offset())
	}
	if _, err := clock.Advance(ctx, db.DB.DB, 48*time.Hour); err != nil {
		t.Fatal(err)
	}
	off, err := clock.Advance(ctx, db.DB.DB, 90*time.Minute)
	if err != nil || off != 49*time.Hour+30*time.Minute {
		t.Fatalf("offsets add up: %s, %v", off, err)
	}
	// Two "processes" see the same time once they refresh.
	a.Refresh(ctx)
	b.Refresh(ctx)
	if a.Offset() != off || b.Offset() != off {
		t.Fatalf("offsets %s and %s, want %s", a.Offset(), b.Offset(), off)
	}
	if d := time.Until(a.Now()); d < off-time.Second || d > off+time.Second {
		t.Fatalf("Now is %s ahead of real time, want about %s", d, off)
	}
	if _, err := clock.Advance(ctx, db.DB.DB, -time.Hour); err == nil {
		t.Fatal("the clock never goes back")
	}
}
