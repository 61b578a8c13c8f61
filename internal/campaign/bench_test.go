package campaign_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/testsvc"
)

// BenchmarkBroadcastFanOut schedules a broadcast to TEND_BENCH_CONTACTS
// (default 100,000) contacts across 20 time zones with two variants over
// overlapping segments, and reports the time from send_at to the last
// outbox row scheduled.
func BenchmarkBroadcastFanOut(b *testing.B) {
	contacts := 100000
	if v, err := strconv.Atoi(os.Getenv("TEND_BENCH_CONTACTS")); err == nil && v > 0 {
		contacts = v
	}
	perAccount := 10
	accounts := contacts / perAccount
	db := testsvc.NewDB(b)
	clk := clock.NewManual(time.Date(2026, 12, 1, 15, 0, 0, 0, time.UTC))
	ctx := context.Background()
	zones := []string{"UTC", "Europe/London", "Europe/Paris", "Europe/Berlin", "Europe/Helsinki", "Europe/Moscow",
		"Asia/Dubai", "Asia/Kolkata", "Asia/Bangkok", "Asia/Singapore", "Asia/Tokyo", "Australia/Sydney",
		"Pacific/Auckland", "America/Sao_Paulo", "America/New_York", "America/Chicago", "America/Denver",
		"America/Los_Angeles", "America/Anchorage", "Pacific/Honolulu"}
	exec := func(q string, args ...any) {
		b.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			b.Fatal(err)
		}
	}
	exec(`INSERT INTO account (external_id, plan, seats, signup_at, timezone, created_at, updated_at)
		SELECT 'a' || i, CASE WHEN i % 3 = 0 THEN 'enterprise' ELSE 'pro' END, i % 150, now(), ($2::text[])[1 + i % 20], now(), now()
		FROM generate_series(1, $1) i`, accounts, pq.Array(zones))
	exec(`INSERT INTO contact (external_id, account_id, email, name, role, created_at, updated_at)
		SELECT 'c' || a.id || '-' || j, a.id, 'c' || a.id || '.' || j || '@example.com', 'C ' || j, 'admin', now(), now()
		FROM account a, generate_series(1, $1) j`, perAccount)
	exec(`INSERT INTO segment (name, predicate, created_at, updated_at, built_generation) VALUES
		('enterprise', 'plan == "enterprise"', now(), now(), 1), ('smb', 'seats < 150', now(), now(), 1)`)
	// Overlapping membership: enterprise accounts with few seats are in both.
	exec(`INSERT INTO segment_membership (segment_id, account_id, entered_at, entry_reason)
		SELECT s.id, a.id, now(), 'initial' FROM account a, segment s
		WHERE (s.name = 'enterprise' AND a.plan = 'enterprise') OR (s.name = 'smb' AND a.seats < 150)`)
	store := campaign.NewStore(db.DB, clk, nil)
	sendAt := clk.Now()
	if _, err := store.Apply(ctx, campaign.Bundle{
		Campaigns: []campaign.Definition{{Name: "release", Kind: campaign.KindBroadcast, SendAt: &sendAt,
			Window:   &campaign.Window{Days: []string{"mon", "tue", "wed", "thu", "fri"}, From: "09:00", To: "17:00"},
			Variants: []campaign.Variant{{Segment: "enterprise", Template: "r/ent"}, {Segment: "smb", Template: "r/smb"}}}},
		Templates: []campaign.TemplateInput{{Name: "r/ent", Kind: "email", Source: "x"}, {Name: "r/smb", Kind: "email", Source: "x"}},
	}, false); err != nil {
		b.Fatal(err)
	}
	if _, err := store.SetStatus(ctx, "release", "activate"); err != nil {
		b.Fatal(err)
	}
	e := campaign.NewEnroller(db.DB, clk, slog.New(slog.NewTextHandler(io.Discard, nil)), time.UTC)
	b.ResetTimer()
	start := time.Now()
	n, err := e.RunDueBroadcasts(ctx)
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	var want, dupes int
	db.Get(&want, `SELECT count(*) FROM contact ct JOIN account a ON a.id = ct.account_id WHERE a.plan = 'enterprise' OR a.seats < 150`)
	db.Get(&dupes, `SELECT count(*) FROM (SELECT contact_id FROM message GROUP BY 1 HAVING count(*) > 1) d`)
	if n != want || dupes != 0 {
		b.Fatalf("scheduled %d messages for %d reachable contacts, %d contacts twice", n, want, dupes)
	}
	b.ReportMetric(elapsed.Seconds(), "s")
	b.ReportMetric(float64(n)/elapsed.Seconds(), "rows/s")
	b.Logf("broadcast fan-out: %d outbox rows over %d accounts in 20 zones in %s", n, accounts, elapsed.Round(time.Millisecond))
}
