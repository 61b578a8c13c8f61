package httpapi_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/apikey"
)

// auditEntries returns GET /v1/audit's entries (newest first).
func (h *harness) auditEntries(query string) ([]map[string]any, response) {
	h.t.Helper()
	r := h.must(http.StatusOK, "GET", "/v1/audit"+query, nil)
	raw, ok := r.Body["entries"].([]any)
	if !ok {
		h.t.Fatalf("no entries list: %s", r.Raw)
	}
	out := make([]map[string]any, len(raw))
	for i, e := range raw {
		out[i] = e.(map[string]any)
	}
	return out, r
}

func TestAuditRecordsMutations(t *testing.T) {
	h := newHarness(t)
	ingest, admin := h.key[apikey.Ingest], h.key[apikey.Admin]
	at := h.clock.Advance(90 * time.Minute)

	one := h.do("POST", "/v1/accounts", ingest, map[string]any{"id": "acme", "name": "Acme"})
	wantStatus(t, one, http.StatusOK)
	wantStatus(t, h.do("POST", "/v1/accounts", ingest, map[string]any{"accounts": []any{
		map[string]any{"id": "a2"}, map[string]any{"id": "a3"},
	}}), http.StatusOK)
	wantStatus(t, h.segment("/batch", ingest, map[string]any{"batch": []any{
		map[string]any{"type": "group", "groupId": "seg-acct", "userId": "u1"},
	}}), http.StatusOK)
	created := h.must(http.StatusCreated, "POST", "/v1/keys", map[string]string{"name": "temp", "role": "csm"})
	keyID := int64(num(t, obj(t, created.Body, "key"), "id"))
	h.must(http.StatusOK, "DELETE", fmt.Sprintf("/v1/keys/%d", keyID), nil)

	// Refused mutations and reads are not audited.
	wantStatus(t, h.do("POST", "/v1/accounts", ingest, map[string]any{"id": ""}), http.StatusUnprocessableEntity)
	wantStatus(t, h.do("POST", "/v1/accounts", ingest, `{"id":`), http.StatusBadRequest)
	wantStatus(t, h.do("POST", "/v1/accounts", h.key[apikey.Marketing], map[string]any{"id": "x"}), http.StatusForbidden)
	wantStatus(t, h.do("POST", "/v1/accounts", "", map[string]any{"id": "x"}), http.StatusUnauthorized)
	wantStatus(t, h.do("POST", "/v1/keys", admin, map[string]string{"name": "x", "role": "root"}), http.StatusUnprocessableEntity)
	wantStatus(t, h.do("DELETE", "/v1/keys/999999", admin, nil), http.StatusNotFound)
	wantStatus(t, h.do("POST", "/v1/events", ingest, map[string]any{"events": []any{map[string]any{"account_id": "ghost", "name": "login"}}}), http.StatusUnprocessableEntity)
	wantStatus(t, h.do("GET", "/v1/accounts/acme", h.key[apikey.Marketing], nil), http.StatusOK)
	wantStatus(t, h.do("GET", "/v1/keys", admin, nil), http.StatusOK)

	entries, _ := h.auditEntries("")
	want := []struct{ actor, role, action, target string }{
		{"admin-key", "admin", "DELETE /v1/keys/:id", fmt.Sprintf("key %d (temp)", keyID)},
		{"admin-key", "admin", "POST /v1/keys", fmt.Sprintf("key %d (temp, csm)", keyID)},
		{"ingest-key", "ingest", "POST /segment/v1/batch", "1 segment messages"},
		{"ingest-key", "ingest", "POST /v1/accounts", "2 accounts"},
		{"ingest-key", "ingest", "POST /v1/accounts", "account acme"},
	}
	if len(entries) != len(want) {
		t.Fatalf("%d audit entries, want %d: %v", len(entries), len(want), entries)
	}
	for i, w := range want {
		e := entries[i]
		if e["actor"] != w.actor || e["role"] != w.role || e["action"] != w.action || e["target"] != w.target {
			t.Errorf("entry %d = %v, want %+v", i, e, w)
		}
		if got := timeOf(t, e, "at"); !got.Equal(at) {
			t.Errorf("entry %d at %s, want the clock's %s", i, got, at)
		}
		if num(t, e, "status") >= 300 {
			t.Errorf("entry %d has status %v", i, e["status"])
		}
		if e["api_key_id"] == nil {
			t.Errorf("entry %d has no api_key_id", i)
		}
	}
	if rid := one.Header.Get("X-Request-Id"); rid == "" || entries[4]["request_id"] != rid {
		t.Errorf("entry request_id %v, want the answer's X-Request-Id %q", entries[4]["request_id"], rid)
	}

	// Only admins read the trail.
	for _, role := range []apikey.Role{apikey.Ingest, apikey.Marketing, apikey.CSM, apikey.Product} {
		wantError(t, h.do("GET", "/v1/audit", h.key[role], nil), http.StatusForbidden, "forbidden")
	}
}

func TestAuditPagination(t *testing.T) {
	h := newHarness(t)
	const n = 7
	for i := 0; i < n; i++ {
		wantStatus(t, h.do("POST", "/v1/accounts", h.key[apikey.Ingest], map[string]any{"id": fmt.Sprintf("acct-%d", i)}), http.StatusOK)
	}

	all, res := h.auditEntries("")
	if len(all) != n || res.Body["next_before"] != nil {
		t.Fatalf("unpaginated: %d entries, next_before %v; want %d and none", len(all), res.Body["next_before"], n)
	}

	var seen []string
	query, lastID := "?limit=3", 0.0
	for page := 0; ; page++ {
		if page > n {
			t.Fatal("pagination does not end")
		}
		entries, res := h.auditEntries(query)
		if len(entries) > 3 {
			t.Fatalf("page %d has %d entries, limit 3", page, len(entries))
		}
		for _, e := range entries {
			id := num(t, e, "id")
			if lastID != 0 && id >= lastID {
				t.Fatalf("ids not strictly descending across pages: %v after %v", id, lastID)
			}
			lastID = id
			seen = append(seen, e["target"].(string))
		}
		next, ok := res.Body["next_before"].(float64)
		if !ok {
			break
		}
		if len(entries) == 0 || next != num(t, entries[len(entries)-1], "id") {
			t.Fatalf("next_before %v is not the last id of the page %v", next, entries)
		}
		query = fmt.Sprintf("?limit=3&before=%d", int64(next))
	}
	if len(seen) != n {
		t.Fatalf("paging saw %d entries, want %d: %v", len(seen), n, seen)
	}
	for i, target := range seen {
		if want := fmt.Sprintf("account acct-%d", n-1-i); target != want {
			t.Fatalf("entry %d is %q, want %q (newest first)", i, target, want)
		}
	}

	for _, q := range []string{"?limit=0", "?limit=-1", "?limit=1001", "?limit=ten", "?limit=1.5", "?before=-1", "?before=x"} {
		t.Run(q, func(t *testing.T) {
			e := wantError(t, h.do("GET", "/v1/audit"+q, h.key[apikey.Admin], nil), http.StatusUnprocessableEntity, "invalid_parameter")
			if param := strings.Split(strings.TrimPrefix(q, "?"), "=")[0]; !strings.Contains(e["message"].(string), param) {
				t.Fatalf("message %q does not name %s", e["message"], param)
			}
		})
	}
}

// A mutation is audited whatever X-Request-Id its client sends: a caller's
// id is kept only when it looks like one, else the answer and the trail
// carry one of ours.
func TestAuditWhateverTheRequestID(t *testing.T) {
	h := newHarness(t)
	long := strings.Repeat("r", 129)
	for i, rid := range []string{"\xff", "a\xc3", long, "has space", "client-id-1"} {
		req := h.request("POST", "/v1/accounts", map[string]any{"id": fmt.Sprintf("acct-%d", i)})
		req.Header.Set("Authorization", "Bearer "+h.key[apikey.Ingest])
		req.Header.Set("X-Request-Id", rid)
		r := h.send(req)
		wantStatus(t, r, http.StatusOK)
		got := r.Header.Get("X-Request-Id")
		if (rid == "client-id-1") != (got == rid) || got == "" {
			t.Errorf("X-Request-Id %q answered with %q", rid, got)
		}
		if n := h.count(`SELECT count(*) FROM audit_log WHERE target = $1 AND request_id = $2`, fmt.Sprintf("account acct-%d", i), got); n != 1 {
			t.Errorf("X-Request-Id %q: %d audit entries for the mutation, want 1", rid, n)
		}
	}
}
