package engagement_test

import (
	"context"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/engagement"
	"github.com/tendhq/tend/internal/testsvc"
	"github.com/tendhq/tend/internal/token"
)

// TestLaneConnectionsStayOutOfThePool: the tracker's lanes run their own
// connections with a setting of their own (sequential scans off); closing the
// tracker must close them, not hand them back to the pool where every other
// statement would inherit the setting.
func TestLaneConnectionsStayOutOfThePool(t *testing.T) {
	t.Parallel()
	db := testsvc.NewDB(t)
	ctx := context.Background()
	signer := token.NewSigner([]byte("lanes-secret-0123456789"))
	tr := engagement.NewTracker(db.DB, clock.NewManual(time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)), signer)
	// Hits on messages that do not exist still run a batch on their lane; ids
	// 1..8 reach every lane.
	for id := int64(1); id <= 8; id++ {
		if err := tr.Open(ctx, engagement.Hit{Token: signer.Open(id), UserAgent: "Mozilla/5.0 (X11)"}); err == nil {
			t.Fatalf("open of message %d that does not exist: no error", id)
		}
	}
	var lanes int
	if err := db.GetContext(ctx, &lanes, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE '%WITH ORDINALITY AS x(message_id%'`); err != nil {
		t.Fatal(err)
	}
	if lanes == 0 {
		t.Fatal("no lane connection found: the hits did not run on lanes")
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	// Take every connection the pool may hold at once: none runs with the
	// lanes' setting.
	const poolSize = 20 // postgres.Open's limit
	for i := 0; i < poolSize; i++ {
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var seqscan string
		if err := conn.QueryRowContext(ctx, `SHOW enable_seqscan`).Scan(&seqscan); err != nil {
			t.Fatal(err)
		}
		if seqscan != "on" {
			t.Fatalf("pooled connection %d has enable_seqscan=%s: a lane's connection went back to the pool", i, seqscan)
		}
	}
}
