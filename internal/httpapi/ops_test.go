package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/tendhq/tend/internal/apikey"
)

func TestHealthAndMetrics(t *testing.T) {
	h := newHarness(t)
	for i := 0; i < 3; i++ {
		r := h.do("GET", "/healthz", "", nil)
		wantStatus(t, r, http.StatusOK)
		if r.Body["status"] != "ok" {
			t.Fatalf("healthz: %s", r.Raw)
		}
	}
	if r := h.do("GET", "/readyz", "", nil); r.Status != http.StatusOK || r.Body["status"] != "ready" {
		t.Fatalf("readyz: %d %s", r.Status, r.Raw)
	}
	wantStatus(t, h.do("GET", "/v1/accounts/nobody", h.key[apikey.Marketing], nil), http.StatusNotFound)
	wantStatus(t, h.do("GET", "/nowhere", "", nil), http.StatusNotFound)

	r := h.do("GET", "/metrics", "", nil)
	wantStatus(t, r, http.StatusOK)
	text := string(r.Raw)
	for _, line := range []string{
		`tend_http_requests_total{method="GET",route="/healthz",status="200"} 3`,
		`tend_http_requests_total{method="GET",route="/readyz",status="200"} 1`,
		`tend_http_requests_total{method="GET",route="/v1/accounts/:id",status="404"} 1`,
		`tend_http_request_duration_seconds_count{method="GET",route="/healthz"} 3`,
	} {
		if !strings.Contains(text, line+"\n") {
			t.Errorf("/metrics has no line %q", line)
		}
	}
	if !strings.Contains(text, "go_goroutines") {
		t.Error("/metrics has no Go runtime metrics")
	}
}

func TestReadyzUnavailable(t *testing.T) {
	h := newHarness(t)
	h.db.Close() // readiness pings this pool
	r := h.do("GET", "/readyz", "", nil)
	wantError(t, r, http.StatusServiceUnavailable, "not_ready")
	if r.Body["status"] != "unavailable" {
		t.Fatalf("readyz: %s", r.Raw)
	}
	wantStatus(t, h.do("GET", "/healthz", "", nil), http.StatusOK)
}

func TestRoutingErrors(t *testing.T) {
	h := newHarness(t)
	admin := h.key[apikey.Admin]
	wantError(t, h.do("GET", "/nowhere", "", nil), http.StatusNotFound, "route_not_found")
	wantError(t, h.do("GET", "/v1/nowhere", admin, nil), http.StatusNotFound, "route_not_found")
	wantError(t, h.do("POST", "/segment/v1/page", admin, `{}`), http.StatusNotFound, "route_not_found")
	wantError(t, h.do("POST", "/healthz", "", `{}`), http.StatusMethodNotAllowed, "method_not_allowed")
	// A known path asked with another method: 405, saying which it has.
	for _, c := range []struct{ method, path, allow string }{
		{"DELETE", "/v1/events", "OPTIONS, POST"},
		{"PATCH", "/v1/accounts/acme", "OPTIONS, GET"},
		{"POST", "/v1/segments/risky", "OPTIONS, GET, PUT, DELETE"},
		{"DELETE", "/v1/templates/at-risk/checkin", "OPTIONS, GET, PUT"},
		{"GET", "/segment/v1/batch", "OPTIONS, POST"},
	} {
		r := h.do(c.method, c.path, admin, nil)
		wantError(t, r, http.StatusMethodNotAllowed, "method_not_allowed")
		if got := r.Header.Get("Allow"); got != c.allow {
			t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, got, c.allow)
		}
	}
	// Without a key, the key is what is missing.
	wantError(t, h.do("DELETE", "/v1/events", "", nil), http.StatusUnauthorized, "missing_key")
	if r := h.do("OPTIONS", "/v1/events", admin, nil); r.Status != http.StatusNoContent || r.Header.Get("Allow") != "OPTIONS, POST" {
		t.Errorf("OPTIONS /v1/events: %d, Allow %q", r.Status, r.Header.Get("Allow"))
	}

	// Every answer carries a request id, errors included.
	for _, r := range []response{h.do("GET", "/nowhere", "", nil), h.do("GET", "/v1/keys", "", nil), h.do("GET", "/v1/keys", admin, nil)} {
		if r.Header.Get("X-Request-Id") == "" {
			t.Fatalf("%d answer without X-Request-Id", r.Status)
		}
	}
}

func TestBadGzip(t *testing.T) {
	h := newHarness(t)
	for _, path := range []string{"/v1/accounts", "/segment/v1/batch"} {
		req := h.request("POST", path, `{"id": "acme"}`)
		req.Header.Set("Content-Encoding", "gzip")
		req.Header.Set("Authorization", "Bearer "+h.key[apikey.Ingest])
		wantError(t, h.send(req), http.StatusBadRequest, "invalid_gzip")
	}
	// Truncated gzip: the header reads, the body does not.
	z := gzipJSON(t, map[string]any{"id": "acme", "name": strings.Repeat("a", 500)})
	req := h.request("POST", "/v1/accounts", z[:len(z)/2])
	req.Header.Set("Content-Encoding", "gzip")
	req.Header.Set("Authorization", "Bearer "+h.key[apikey.Ingest])
	if r := h.send(req); r.Status != http.StatusBadRequest {
		t.Fatalf("truncated gzip: %d %s", r.Status, r.Raw)
	}
	if n := h.count(`SELECT count(*) FROM account`); n != 0 {
		t.Fatalf("bad gzip stored %d accounts", n)
	}
}

// An internal error answers 500 with a request id and no internal text.
func TestInternalErrorHidesDetails(t *testing.T) {
	h := newHarness(t)
	if _, err := h.db.ExecContext(context.Background(), `ALTER TABLE account RENAME TO account_secret_name`); err != nil {
		t.Fatal(err)
	}
	for _, r := range []response{
		h.do("GET", "/v1/accounts/acme", h.key[apikey.Marketing], nil),
		h.do("POST", "/v1/accounts", h.key[apikey.Ingest], map[string]any{"id": "acme"}),
		h.do("POST", "/v1/events", h.key[apikey.Ingest], map[string]any{"events": []any{map[string]any{"account_id": "acme", "name": "login"}}}),
	} {
		e := wantError(t, r, http.StatusInternalServerError, "internal")
		rid := r.Header.Get("X-Request-Id")
		if rid == "" || e["request_id"] != rid || !strings.Contains(e["message"].(string), rid) {
			t.Fatalf("internal error without the request id %q: %s", rid, r.Raw)
		}
		for _, leak := range []string{"account", "relation", "pq", "exist", "sql", "upsert"} {
			if strings.Contains(strings.ToLower(fmt.Sprint(e["message"])), leak) {
				t.Fatalf("internal error leaks %q: %s", leak, r.Raw)
			}
		}
		if len(e) != 3 {
			t.Fatalf("internal error has extra fields: %s", r.Raw)
		}
	}
	if n := h.count(`SELECT count(*) FROM audit_log`); n != 0 {
		t.Fatalf("a failed mutation was audited")
	}
}
