package httpapi_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"testing"

	"github.com/tendhq/tend/internal/segment"
)

// build runs a segment's build pass the way the worker pool would.
func (h *harness) build(name string) {
	h.t.Helper()
	seg, err := segment.NewStore(h.db.DB, h.clock).Get(context.Background(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	e := segment.NewEngine(h.db.DB, h.clock, slog.New(slog.NewTextHandler(io.Discard, nil)))
	shards, err := e.StartPass(context.Background(), segment.BuildKey(seg.ID, seg.Generation), seg.ID)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, sh := range shards {
		if _, err := e.RunShard(context.Background(), sh); err != nil {
			h.t.Fatal(err)
		}
	}
}

func TestSegmentLifecycle(t *testing.T) {
	h := newHarness(t)
	accounts := []map[string]any{}
	for i := 0; i < 25; i++ {
		plan := "free"
		if i%2 == 0 {
			plan = "pro"
		}
		accounts = append(accounts, map[string]any{"id": fmt.Sprintf("acc-%02d", i), "plan": plan, "seats": i})
	}
	h.must(http.StatusOK, "POST", "/v1/accounts", map[string]any{"accounts": accounts})

	// Preview counts without saving.
	r := h.must(http.StatusOK, "POST", "/v1/segments/preview", map[string]any{"predicate": `plan == "pro" && seats >= 10`, "sample": 3})
	if num(t, r.Body, "count") != 8 || len(r.Body["sample"].([]any)) != 3 {
		t.Fatalf("preview = %s", r.Raw)
	}
	if h.count(`SELECT count(*) FROM segment`) != 0 {
		t.Fatal("preview saved a segment")
	}

	r = h.must(http.StatusCreated, "POST", "/v1/segments", map[string]any{"name": "big-pro", "predicate": `plan == "pro" && seats >= 10`, "description": "teams on pro"})
	if r.Body["status"] != "building" || r.Body["name"] != "big-pro" {
		t.Fatalf("create = %s", r.Raw)
	}
	h.build("big-pro")
	r = h.must(http.StatusOK, "GET", "/v1/segments/big-pro", nil)
	if r.Body["status"] != "ready" || num(t, r.Body, "members") != 8 || num(t, r.Body, "error_count") != 0 {
		t.Fatalf("get = %s", r.Raw)
	}

	// Members, paginated, with entered_at and the reason.
	seen := map[string]bool{}
	after := ""
	for page := 0; page < 10; page++ {
		path := "/v1/segments/big-pro/members?limit=3"
		if after != "" {
			path += "&after=" + after
		}
		r = h.must(http.StatusOK, "GET", path, nil)
		for _, m := range r.Body["members"].([]any) {
			mm := m.(map[string]any)
			if mm["reason"] != "initial" || mm["entered_at"] == nil {
				t.Fatalf("member = %v", mm)
			}
			id := mm["account_id"].(string)
			if seen[id] {
				t.Fatalf("%s on two pages", id)
			}
			seen[id] = true
		}
		next, ok := r.Body["next_after"].(string)
		if !ok {
			break
		}
		after = next
	}
	if len(seen) != 8 {
		t.Fatalf("paged through %d members, want 8", len(seen))
	}

	// The account shows its current segments and its history.
	r = h.must(http.StatusOK, "GET", "/v1/accounts/acc-10", nil)
	if segs := r.Body["segments"].([]any); len(segs) != 1 || segs[0] != "big-pro" {
		t.Fatalf("account segments = %v", r.Body["segments"])
	}
	r = h.must(http.StatusOK, "GET", "/v1/accounts/acc-10/segments", nil)
	if hist := r.Body["history"].([]any); len(hist) != 1 {
		t.Fatalf("history = %s", r.Raw)
	}

	// Edit: a new generation, building again.
	r = h.must(http.StatusOK, "PUT", "/v1/segments/big-pro", map[string]any{"predicate": `plan == "pro" && seats >= 20`})
	if r.Body["status"] != "building" || num(t, r.Body, "generation") != 2 {
		t.Fatalf("update = %s", r.Raw)
	}
	h.build("big-pro")
	if r = h.must(http.StatusOK, "GET", "/v1/segments/big-pro", nil); num(t, r.Body, "members") != 3 {
		t.Fatalf("after edit = %s", r.Raw)
	}
	r = h.must(http.StatusOK, "GET", "/v1/segments", nil)
	if len(r.Body["segments"].([]any)) != 1 {
		t.Fatalf("list = %s", r.Raw)
	}

	h.must(http.StatusNoContent, "DELETE", "/v1/segments/big-pro", nil)
	wantError(t, h.do("GET", "/v1/segments/big-pro", h.key["admin"], nil), http.StatusNotFound, "segment_not_found")
	wantError(t, h.do("DELETE", "/v1/segments/big-pro", h.key["admin"], nil), http.StatusNotFound, "segment_not_found")
}

func TestSegmentBadInput(t *testing.T) {
	h := newHarness(t)
	h.must(http.StatusCreated, "POST", "/v1/segments", map[string]any{"name": "taken", "predicate": `seats > 1`})
	before := h.count(`SELECT count(*) FROM segment`)
	admin := h.key["admin"]

	// A type error names line and column.
	e := wantError(t, h.do("POST", "/v1/segments", admin, map[string]any{"name": "x", "predicate": "plan == \"pro\" &&\n  seats > \"ten\""}), http.StatusUnprocessableEntity, "invalid_predicate")
	if num(t, e, "line") != 2 || num(t, e, "column") != 9 {
		t.Fatalf("error position = %v", e)
	}
	e = wantError(t, h.do("POST", "/v1/segments/preview", admin, map[string]any{"predicate": `logins_7 > 1`}), http.StatusUnprocessableEntity, "invalid_predicate")
	if num(t, e, "line") != 1 || num(t, e, "column") != 1 {
		t.Fatalf("unknown name position = %v", e)
	}
	cases := []struct {
		method, path string
		body         any
		status       int
		code         string
	}{
		{"POST", "/v1/segments", map[string]any{"name": "Bad Name", "predicate": `seats > 1`}, 422, "invalid_name"},
		{"POST", "/v1/segments", map[string]any{"name": "x", "predicate": ``}, 422, "invalid_predicate"},
		{"POST", "/v1/segments", map[string]any{"name": "x", "predicate": `seats + 1`}, 422, "invalid_predicate"},
		{"POST", "/v1/segments", map[string]any{"name": "taken", "predicate": `seats > 2`}, 409, "segment_exists"},
		{"POST", "/v1/segments", map[string]any{"name": "x", "predicate": `seats > 1`, "colour": "red"}, 400, "invalid_json"},
		{"POST", "/v1/segments", `{"name": "x",`, 400, "invalid_json"},
		{"PUT", "/v1/segments/ghost", map[string]any{"predicate": `seats > 1`}, 404, "segment_not_found"},
		{"PUT", "/v1/segments/taken", map[string]any{"name": "other", "predicate": `seats > 1`}, 422, "rename_not_supported"},
		{"PUT", "/v1/segments/taken", map[string]any{"predicate": `seats >`}, 422, "invalid_predicate"},
		{"POST", "/v1/segments/preview", map[string]any{"predicate": `seats > 1`, "sample": 1000}, 422, "invalid_sample"},
		{"GET", "/v1/segments/taken/members?limit=0", nil, 422, "invalid_parameter"},
		{"GET", "/v1/segments/taken/members?after=x", nil, 422, "invalid_parameter"},
		{"GET", "/v1/segments/ghost/members", nil, 404, "segment_not_found"},
	}
	for _, c := range cases {
		wantError(t, h.do(c.method, c.path, admin, c.body), c.status, c.code)
	}
	if n := h.count(`SELECT count(*) FROM segment`); n != before {
		t.Fatalf("refused requests changed the segments: %d rows, want %d", n, before)
	}
	if r := h.must(http.StatusOK, "GET", "/v1/segments/taken", nil); r.Body["predicate"] != `seats > 1` {
		t.Fatalf("a refused edit changed the predicate: %s", r.Raw)
	}
}
