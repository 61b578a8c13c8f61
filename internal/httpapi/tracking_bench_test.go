package httpapi_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/audit"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/engagement"
	"github.com/tendhq/tend/internal/httpapi"
	"github.com/tendhq/tend/internal/testsvc"
	"github.com/tendhq/tend/internal/token"
)

// Shape of the tracking benchmark; hits and clients can be changed with
// TEND_BENCH_TRACKING_HITS and TEND_BENCH_TRACKING_CLIENTS.
const (
	trackAccounts    = 1000
	trackContactsPer = 4 // one sent message per contact: 4,000 messages
	trackHits        = 40000
	trackClients     = 48
	trackSentAgo     = 48 * time.Hour // far outside the scanner and prefetch windows: every hit is human
	trackHitShare    = 0.75           // the share of messages that get any hit; the rest must record nothing
	trackOpenShare   = 0.6            // of hits; the rest are clicks
	trackTarget      = 10000          // hits/s to report against
)

var trackUserAgents = []string{
	"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
	"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
	"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
	"Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17726; Pro)",
}

// trackHit is one prepared request: the message it is for and whether it is
// a click (else an open).
type trackHit struct {
	msg   int // index into the message ids
	click bool
	path  string
	url   string // where a click must redirect
	ua    string
}

// newTrackingServer is the API with the tracker wired as newHarness wires it
// (same signing secret) on db, for a benchmark (newHarness takes a *testing.T
// and runs in parallel): only the dependencies the tracking routes use, and a
// rate limit that never bites.
func newTrackingServer(b *testing.B, db *testsvc.DB, clk clock.Clock, signer *token.Signer) *httptest.Server {
	b.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	api := httpapi.New(httpapi.Deps{
		Accounts: account.NewStore(db.DB, clk), Keys: apikey.NewStore(db.DB, clk), Audit: audit.NewLog(db.DB), Clock: clk,
		Tracker: engagement.NewTracker(db.DB, clk, signer),
		Log:     log,
		Ready:   func(ctx context.Context) error { return db.PingContext(ctx) },
	}, httpapi.Options{BodyLimit: 1 << 20, RateLimit: 1e9, RateBurst: 1 << 30})
	srv := httptest.NewServer(api.Handler())
	b.Cleanup(srv.Close)
	return srv
}

// seedSentMessages creates, in set-based SQL, an active drip campaign and
// trackAccounts accounts with trackContactsPer contacts each, one enrollment
// per account with its contacts as the audience, and one message per contact
// sent at sentAt. It returns the message ids in id order.
func seedSentMessages(b *testing.B, db *testsvc.DB, now, sentAt time.Time) []int64 {
	b.Helper()
	ctx := context.Background()
	steps := []struct {
		what  string
		query string
		args  []any
	}{
		{"campaign", `
			INSERT INTO campaign (name, kind, topic, status, current_version, created_at, updated_at, activated_at)
			VALUES ('bench-tracking', 'drip', 'product', 'active', 1, $1, $1, $1)`, []any{now.AddDate(0, -1, 0)}},
		{"account", `
			INSERT INTO account (external_id, name, plan, seats, signup_at, created_at, updated_at)
			SELECT 'trk-' || g, 'Account ' || g, (ARRAY['free', 'pro', 'enterprise'])[1 + g % 3], 5 + g % 50,
			       $2::timestamptz - (g % 400) * interval '1 day', $2, $2
			FROM generate_series(1, $1::int) g`, []any{trackAccounts, now.AddDate(0, -3, 0)}},
		{"contact", `
			INSERT INTO contact (external_id, account_id, email, name, created_at, updated_at)
			SELECT a.external_id || '-u' || i, a.id, a.external_id || '-u' || i || '@example.com', 'User ' || i, $2, $2
			FROM account a, generate_series(1, $1::int) i`, []any{trackContactsPer, now.AddDate(0, -3, 0)}},
		{"enrollment", `
			INSERT INTO enrollment (campaign_id, version, account_id, entry_number, contacts, status, step, anchor_at, entered_at)
			SELECT c.id, 1, a.id, 1, (SELECT array_agg(ct.id ORDER BY ct.id) FROM contact ct WHERE ct.account_id = a.id),
			       'active', 1, $1::timestamptz, $1::timestamptz - interval '1 hour'
			FROM campaign c, account a WHERE c.name = 'bench-tracking'`, []any{sentAt}},
		{"message", `
			INSERT INTO message (enrollment_id, campaign_id, version, step_id, contact_id, channel, status, due_at, sent_at,
			                     attempts, created_at, updated_at)
			SELECT e.id, e.campaign_id, 1, 'welcome', ct.id, 'email', 'sent', $1, $1, 1, $1, $1
			FROM enrollment e, unnest(e.contacts) AS ct(id)`, []any{sentAt}},
	}
	for _, s := range steps {
		if _, err := db.ExecContext(ctx, s.query, s.args...); err != nil {
			b.Fatalf("seed %s: %v", s.what, err)
		}
	}
	if _, err := db.ExecContext(ctx, `VACUUM ANALYZE`); err != nil {
		b.Fatal(err)
	}
	var ids []int64
	if err := db.SelectContext(ctx, &ids, `SELECT id FROM message ORDER BY id`); err != nil {
		b.Fatal(err)
	}
	if len(ids) != trackAccounts*trackContactsPer {
		b.Fatalf("seeded %d messages, want %d", len(ids), trackAccounts*trackContactsPer)
	}
	return ids
}

// trackingHits prepares n hits over the first trackHitShare of msgs (in a
// random order, so hits of one account are spread out): opens and clicks in
// trackOpenShare proportion, the messages drawn with replacement so most are
// hit several times (replays), a browser user agent each.
func trackingHits(signer *token.Signer, msgs []int64, n int) []trackHit {
	rng := rand.New(rand.NewPCG(7, 11))
	pool := rng.Perm(len(msgs))[:int(float64(len(msgs))*trackHitShare)]
	hits := make([]trackHit, n)
	for i := range hits {
		m := pool[rng.IntN(len(pool))]
		h := trackHit{msg: m, click: rng.Float64() >= trackOpenShare, ua: trackUserAgents[rng.IntN(len(trackUserAgents))]}
		if h.click {
			// One of a few links per message, like a real email.
			h.url = fmt.Sprintf("https://docs.example.com/guides/%d?utm_source=tend&utm_campaign=bench", rng.IntN(3))
			h.path = "/t/c/" + signer.Click(msgs[m], h.url)
		} else {
			h.path = "/t/o/" + signer.Open(msgs[m])
		}
		hits[i] = h
	}
	return hits
}

// percentileMs is the p-quantile of sorted durations, in milliseconds.
func percentileMs(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(int(p*float64(len(sorted))), len(sorted)-1)
	return float64(sorted[i].Microseconds()) / 1000
}

// BenchmarkTracking measures the open pixel (GET /t/o/:token) and click
// redirect (GET /t/c/:token) end to end — HTTP, token check, PostgreSQL — with
// many concurrent clients over 4,000 sent messages (1,000 accounts), a mix of
// opens and clicks and many replays of the same token. It reports hits/s and
// p50/p99 latency against a target of 10,000 hits/s, and fails unless every
// open answered 200 with the pixel, every click 302 to its signed URL, and
// every hit left exactly one engagement_event row (human) on its message,
// with none on the messages not hit. One iteration sends
// TEND_BENCH_TRACKING_HITS hits (default 40,000) from
// TEND_BENCH_TRACKING_CLIENTS clients (default 48); run it with -benchtime 1x.
func BenchmarkTracking(b *testing.B) {
	n := testsvc.EnvInt(b, "TEND_BENCH_TRACKING_HITS", trackHits)
	clients := testsvc.EnvInt(b, "TEND_BENCH_TRACKING_CLIENTS", trackClients)
	ctx := context.Background()
	db := testsvc.NewDB(b)
	clk := clock.NewManual(t0)
	signer := token.NewSigner([]byte("harness-secret-0123456789"))
	srv := newTrackingServer(b, db, clk, signer)
	msgs := seedSentMessages(b, db, t0, t0.Add(-trackSentAgo))
	hits := trackingHits(signer, msgs, n)

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = clients + 1
	tr.MaxIdleConnsPerHost = clients + 1 // the default (2) would make most clients reconnect on every hit
	client := &http.Client{
		Transport: tr,
		// A click answers with a redirect to the customer's site: measure
		// Tend's answer, never follow it.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	b.Cleanup(tr.CloseIdleConnections)

	b.ResetTimer()
	latencies, elapsed := drive(b, clients, len(hits), func(i int) error {
		if err := trackingGet(client, srv.URL, hits[i]); err != nil {
			return fmt.Errorf("hit %d (%s): %w", i, hits[i].path, err)
		}
		return nil
	})
	b.StopTimer()

	// Every hit left one row on its own message, of its kind, human; the
	// messages never hit have none.
	want := map[[2]int64]int64{} // (message id, 1 for click) -> hits
	for _, h := range hits {
		k := [2]int64{msgs[h.msg], 0}
		if h.click {
			k[1] = 1
		}
		want[k] += int64(b.N)
	}
	var rows []struct {
		MessageID int64 `db:"message_id"`
		Click     bool  `db:"click"`
		N         int64 `db:"n"`
		Machine   int64 `db:"machine"`
	}
	if err := db.SelectContext(ctx, &rows, `
		SELECT message_id, kind = 'click' AS click, count(*) AS n, count(*) FILTER (WHERE NOT human) AS machine
		FROM engagement_event GROUP BY message_id, kind`); err != nil {
		b.Fatal(err)
	}
	got := map[[2]int64]int64{}
	for _, r := range rows {
		if r.Machine > 0 {
			b.Fatalf("message %d: %d events flagged as a machine; every hit was a browser 48 h after sending", r.MessageID, r.Machine)
		}
		k := [2]int64{r.MessageID, 0}
		if r.Click {
			k[1] = 1
		}
		got[k] = r.N
	}
	for k, w := range want {
		if got[k] != w {
			b.Fatalf("message %d (click %v): %d engagement events, want %d", k[0], k[1] == 1, got[k], w)
		}
	}
	if len(got) != len(want) {
		b.Fatalf("engagement events on %d (message, kind) pairs, want %d: a hit was recorded on the wrong message", len(got), len(want))
	}
	// Replays are recorded but count once: the messages engaged with are
	// fewer than the hits.
	var engaged int
	if err := db.GetContext(ctx, &engaged, `SELECT count(DISTINCT message_id) FROM engagement_event`); err != nil {
		b.Fatal(err)
	}

	slices.Sort(latencies)
	total := n * b.N
	perSec := float64(total) / elapsed.Seconds()
	p50, p99 := percentileMs(latencies, 0.50), percentileMs(latencies, 0.99)
	b.ReportMetric(perSec, "hits/s")
	b.ReportMetric(p50, "p50_ms")
	b.ReportMetric(p99, "p99_ms")
	verdict := "met"
	if perSec < trackTarget {
		verdict = "MISSED"
	}
	b.Logf("tracking: %d hits (%.0f%% opens) on %d of %d messages from %d clients in %s: %.0f hits/s, p50 %.2f ms, p99 %.2f ms; target %d hits/s %s",
		total, 100*trackOpenShare, engaged, len(msgs), clients, elapsed.Round(time.Millisecond), perSec, p50, p99, trackTarget, verdict)
}

// trackingGet sends one hit and checks the answer: an open is 200 with the
// GIF, a click 302 to the URL signed into it, neither cacheable.
func trackingGet(client *http.Client, base string, h trackHit) error {
	req, err := http.NewRequest(http.MethodGet, base+h.path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", h.ua)
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.Header.Get("Cache-Control") != "no-store, max-age=0" {
		return fmt.Errorf("status %d, Cache-Control %q: %s", res.StatusCode, res.Header.Get("Cache-Control"), body)
	}
	if h.click {
		if loc := res.Header.Get("Location"); res.StatusCode != http.StatusFound || loc != h.url {
			return fmt.Errorf("click: status %d to %q, want 302 to %q: %s", res.StatusCode, loc, h.url, body)
		}
		return nil
	}
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "image/gif" || len(body) == 0 {
		return fmt.Errorf("open: status %d, %q, %d bytes, want 200 with the pixel", res.StatusCode, res.Header.Get("Content-Type"), len(body))
	}
	return nil
}
