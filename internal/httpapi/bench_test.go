package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/audit"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/httpapi"
	"github.com/tendhq/tend/internal/segment"
	"github.com/tendhq/tend/internal/testsvc"
)

// Shape of the ingest benchmark; batches and clients can be changed with
// TEND_BENCH_BATCHES and TEND_BENCH_CLIENTS.
const (
	benchAccounts      = 10000
	benchBatchSize     = 1000
	benchBatches       = 300 // 300,000 events
	benchClients       = 4
	benchContacts      = 20 // u1..u20 per account
	benchAccountsChunk = 2000
)

var benchFeatures = []string{"reports", "dashboards", "exports", "alerts", "integrations", "api", "sso", "audit_log"}
var benchCustomNames = []string{"export_csv", "invite_sent", "report_viewed", "api_call", "settings_changed"}

// benchEnv is the API on a private database, wired like newHarness but for a
// benchmark: no t.Parallel, a rate limit that never bites, the production body
// limit, and an HTTP client that keeps one connection per concurrent client.
type benchEnv struct {
	db     *testsvc.DB
	srv    *httptest.Server
	client *http.Client
	key    string // an ingest key
}

func newBenchEnv(b *testing.B, clients int) *benchEnv {
	b.Helper()
	db := testsvc.NewDB(b)
	clk := clock.NewManual(t0)
	keys := apikey.NewStore(db.DB, clk)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	api := httpapi.New(httpapi.Deps{
		Accounts: account.NewStore(db.DB, clk), Keys: keys, Audit: audit.NewLog(db.DB), Clock: clk,
		Segments: segment.NewStore(db.DB, clk), Engine: segment.NewEngine(db.DB, clk, log),
		Log:   log,
		Ready: func(ctx context.Context) error { return db.PingContext(ctx) },
	}, httpapi.Options{BodyLimit: 10 << 20, RateLimit: 1e9, RateBurst: 1 << 30})
	srv := httptest.NewServer(api.Handler())
	b.Cleanup(srv.Close)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = clients + 1 // the default (2) would make 4 clients reconnect all the time
	client := &http.Client{Transport: tr}
	b.Cleanup(tr.CloseIdleConnections)
	_, secret, err := keys.Create(context.Background(), "bench-ingest", apikey.Ingest)
	if err != nil {
		b.Fatal(err)
	}
	return &benchEnv{db: db, srv: srv, client: client, key: secret}
}

// post sends a prepared JSON body with the ingest key.
func (e *benchEnv) post(path string, body []byte) (response, error) {
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		return response{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.key)
	res, err := e.client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return response{}, err
	}
	r := response{Status: res.StatusCode, Raw: raw, Header: res.Header}
	json.Unmarshal(raw, &r.Body)
	return r, nil
}

func benchAccountID(i int) string { return fmt.Sprintf("acct-%05d", i) }

// createAccounts creates n accounts through POST /v1/accounts, in chunks.
func (e *benchEnv) createAccounts(b *testing.B, n int) {
	b.Helper()
	for lo := 0; lo < n; lo += benchAccountsChunk {
		hi := min(lo+benchAccountsChunk, n)
		list := make([]map[string]any, 0, hi-lo)
		for i := lo; i < hi; i++ {
			list = append(list, map[string]any{
				"id": benchAccountID(i), "name": "Account " + strconv.Itoa(i), "plan": []string{"free", "pro", "enterprise"}[i%3],
				"seats": 5 + i%50, "signup_at": t0.AddDate(0, 0, -90-i%400),
			})
		}
		body, err := json.Marshal(map[string]any{"accounts": list})
		if err != nil {
			b.Fatal(err)
		}
		r, err := e.post("/v1/accounts", body)
		if err != nil {
			b.Fatal(err)
		}
		if r.Status != http.StatusOK {
			b.Fatalf("POST /v1/accounts: status %d: %s", r.Status, r.Raw)
		}
	}
}

// benchBodies builds the request bodies up front, so that the client's JSON
// encoding is not measured. Event mix: 45% login, 40% feature_used over 8
// features, 15% custom names; accounts uniform over all of them; contacts
// u1..u20; timestamps uniform over the 30 days before t0.
func benchBodies(b *testing.B, batches, size int) [][]byte {
	b.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	const window = 30 * 24 * time.Hour
	bodies := make([][]byte, batches)
	for i := range bodies {
		events := make([]account.EventInput, size)
		for j := range events {
			at := t0.Add(-time.Duration(rng.Int64N(int64(window))))
			e := account.EventInput{
				AccountID: benchAccountID(rng.IntN(benchAccounts)),
				ContactID: "u" + strconv.Itoa(1+rng.IntN(benchContacts)),
				Timestamp: &at,
			}
			switch p := rng.IntN(100); {
			case p < 45:
				e.Name = account.EventLogin
			case p < 85:
				e.Name = account.EventFeatureUsed
				e.Properties = json.RawMessage(`{"feature":"` + benchFeatures[rng.IntN(len(benchFeatures))] + `"}`)
			default:
				e.Name = benchCustomNames[rng.IntN(len(benchCustomNames))]
				e.Properties = json.RawMessage(`{"source":"web","count":` + strconv.Itoa(rng.IntN(10)) + `}`)
			}
			events[j] = e
		}
		body, err := json.Marshal(map[string]any{"events": events})
		if err != nil {
			b.Fatal(err)
		}
		bodies[i] = body
	}
	return bodies
}

// drive runs b.N rounds of n requests (do(i) sends request i) from clients
// concurrent clients, and returns every request's latency and the rounds'
// wall time. The first error fails the benchmark.
func drive(b *testing.B, clients, n int, do func(i int) error) ([]time.Duration, time.Duration) {
	latencies := make([]time.Duration, 0, n*b.N)
	var elapsed time.Duration
	for range b.N {
		var (
			next     atomic.Int64
			mu       sync.Mutex
			firstErr error
			wg       sync.WaitGroup
		)
		start := time.Now()
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mine := make([]time.Duration, 0, n/clients+1)
				defer func() {
					mu.Lock()
					latencies = append(latencies, mine...)
					mu.Unlock()
				}()
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					t := time.Now()
					err := do(i)
					if err != nil {
						mu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
						return
					}
					mine = append(mine, time.Since(t))
				}
			}()
		}
		wg.Wait()
		elapsed += time.Since(start)
		if firstErr != nil {
			b.Fatal(firstErr)
		}
	}
	return latencies, elapsed
}

// BenchmarkIngestEvents measures POST /v1/events end to end (HTTP, JSON,
// validation, PostgreSQL, audit) with batches of 1,000 events over 10,000
// accounts sent by concurrent clients. It reports events/s and the p50/p99
// request latency, and fails unless every request was accepted and every event
// was stored. One iteration sends TEND_BENCH_BATCHES batches (default 300)
// from TEND_BENCH_CLIENTS clients (default 4); run it with -benchtime 1x.
func BenchmarkIngestEvents(b *testing.B) {
	batches := testsvc.EnvInt(b, "TEND_BENCH_BATCHES", benchBatches)
	clients := testsvc.EnvInt(b, "TEND_BENCH_CLIENTS", benchClients)
	env := newBenchEnv(b, clients)
	env.createAccounts(b, benchAccounts)
	bodies := benchBodies(b, batches, benchBatchSize)

	b.ResetTimer()
	latencies, elapsed := drive(b, clients, len(bodies), func(i int) error {
		r, err := env.post("/v1/events", bodies[i])
		switch {
		case err != nil:
			return fmt.Errorf("batch %d: %w", i, err)
		case r.Status != http.StatusAccepted:
			return fmt.Errorf("batch %d: status %d, want 202: %s", i, r.Status, r.Raw)
		}
		if got, _ := r.Body["accepted"].(float64); int(got) != benchBatchSize {
			return fmt.Errorf("batch %d: accepted %v of %d: %s", i, r.Body["accepted"], benchBatchSize, r.Raw)
		}
		return nil
	})
	b.StopTimer()

	sent := int64(b.N) * int64(batches) * benchBatchSize
	var stored int64
	if err := env.db.Get(&stored, `SELECT count(*) FROM usage_event`); err != nil {
		b.Fatal(err)
	}
	if stored != sent {
		b.Fatalf("sent %d events, %d stored", sent, stored)
	}

	slices.Sort(latencies)
	pct := func(p float64) float64 {
		i := min(int(p*float64(len(latencies))), len(latencies)-1)
		return float64(latencies[i].Microseconds()) / 1000
	}
	perSec := float64(sent) / elapsed.Seconds()
	p50, p99 := pct(0.50), pct(0.99)
	b.ReportMetric(perSec, "events/s")
	b.ReportMetric(p50, "p50_ms")
	b.ReportMetric(p99, "p99_ms")
	b.Logf("ingest: %d events in %d batches of %d from %d clients in %s: %.0f events/s, p50 %.1f ms, p99 %.1f ms",
		sent, len(latencies), benchBatchSize, clients, elapsed.Round(time.Millisecond), perSec, p50, p99)
}
