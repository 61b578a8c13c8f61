package clock

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// Shared is the demo clock: real time plus an offset stored in PostgreSQL
// (table clock_state), so every process of a deployment sees the same time.
// The offset is cached and refreshed every RefreshEvery; Refresh forces a read.
type Shared struct {
	db       *sql.DB
	offset   atomic.Int64 // nanoseconds
	interval time.Duration
}

// RefreshEvery is how often a Shared clock re-reads its offset.
const RefreshEvery = time.Second

// NewShared loads the stored offset and returns a clock that follows it.
func NewShared(ctx context.Context, db *sql.DB) (*Shared, error) {
	s := &Shared{db: db, interval: RefreshEvery}
	if err := s.Refresh(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Now returns real time plus the shared offset.
func (s *Shared) Now() time.Time {
	return time.Now().UTC().Add(time.Duration(s.offset.Load()))
}

// Offset returns the cached offset from real time.
func (s *Shared) Offset() time.Duration { return time.Duration(s.offset.Load()) }

// Refresh re-reads the offset from PostgreSQL.
func (s *Shared) Refresh(ctx context.Context) error {
	off, err := ReadOffset(ctx, s.db)
	if err != nil {
		return err
	}
	s.offset.Store(int64(off))
	return nil
}

// Follow refreshes the offset until ctx ends. Run it in its own goroutine.
func (s *Shared) Follow(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.Refresh(ctx); err != nil && ctx.Err() == nil {
				log.Warn("demo clock: refresh failed", "err", err)
			}
		}
	}
}

// ReadOffset returns the stored demo-clock offset (zero when none was set).
func ReadOffset(ctx context.Context, db *sql.DB) (time.Duration, error) {
	var ms int64
	err := db.QueryRowContext(ctx, `SELECT offset_ms FROM clock_state WHERE id = 1`).Scan(&ms)
	if err == sql.ErrNoRows {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("clock: read offset: %w", err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// Advance adds d to the stored demo-clock offset and returns the new offset.
func Advance(ctx context.Context, db *sql.DB, d time.Duration) (time.Duration, error) {
	if d <= 0 {
		return 0, fmt.Errorf("clock: advance by %s: must be positive", d)
	}
	var ms int64
	err := db.QueryRowContext(ctx, `
		INSERT INTO clock_state (id, offset_ms, updated_at) VALUES (1, $1, now())
		ON CONFLICT (id) DO UPDATE SET offset_ms = clock_state.offset_ms + EXCLUDED.offset_ms, updated_at = now()
		RETURNING offset_ms`, d.Milliseconds()).Scan(&ms)
	if err != nil {
		return 0, fmt.Errorf("clock: advance: %w", err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}
