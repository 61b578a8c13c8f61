package httpapi_test

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// wantError fails the test unless r is an error answer with this status and
// code, in the contract's shape {"error": {"code": "...", "message": "..."}}.
// It returns the error object.
func wantError(t *testing.T, r response, status int, code string) map[string]any {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, r.Raw)
	}
	e, ok := r.Body["error"].(map[string]any)
	if !ok {
		t.Fatalf("no error object in %s", r.Raw)
	}
	if got, _ := e["code"].(string); got != code {
		t.Fatalf("error.code %q, want %q: %s", got, code, r.Raw)
	}
	if msg, _ := e["message"].(string); msg == "" {
		t.Fatalf("error.message is missing or empty: %s", r.Raw)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" && ct != "application/json; charset=UTF-8" {
		t.Fatalf("Content-Type %q, want JSON", ct)
	}
	return e
}

// wantStatus fails the test unless r has the status.
func wantStatus(t *testing.T, r response, status int) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, r.Raw)
	}
}

// itemErrors returns error.items of an invalid_batch answer.
func itemErrors(t *testing.T, e map[string]any) []map[string]any {
	t.Helper()
	raw, ok := e["items"].([]any)
	if !ok {
		t.Fatalf("error has no items list: %v", e)
	}
	out := make([]map[string]any, len(raw))
	for i, it := range raw {
		out[i], ok = it.(map[string]any)
		if !ok {
			t.Fatalf("item %d is not an object: %v", i, it)
		}
	}
	return out
}

// wantItems fails the test unless items names exactly these indexes and
// fields (in any order), each with a reason.
func wantItems(t *testing.T, items []map[string]any, want ...itemWant) {
	t.Helper()
	var got []itemWant
	for _, it := range items {
		idx, _ := it["index"].(float64)
		field, _ := it["field"].(string)
		if reason, _ := it["reason"].(string); reason == "" {
			t.Fatalf("item without a reason: %v", it)
		}
		got = append(got, itemWant{int(idx), field})
	}
	order := func(s []itemWant) {
		slices.SortFunc(s, func(a, b itemWant) int {
			return cmp.Or(cmp.Compare(a.index, b.index), strings.Compare(a.field, b.field))
		})
	}
	want = slices.Clone(want)
	order(got)
	order(want)
	if !slices.Equal(got, want) {
		t.Fatalf("items %v, want %v: %v", got, want, items)
	}
}

type itemWant struct {
	index int
	field string
}

// segment sends body to a Segment route with the key as Segment SDKs do:
// HTTP Basic with the write key as user name and an empty password.
func (h *harness) segment(path, key string, body any) response {
	h.t.Helper()
	req := h.request(http.MethodPost, "/segment/v1"+path, body)
	if key != "" {
		req.SetBasicAuth(key, "")
	}
	return h.send(req)
}

// gzipJSON compresses the JSON of v.
func gzipJSON(t *testing.T, v any) []byte {
	t.Helper()
	j, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(j); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// count runs a SELECT count(*) ... on the harness's database.
func (h *harness) count(query string, args ...any) int {
	h.t.Helper()
	var n int
	if err := h.db.GetContext(context.Background(), &n, query, args...); err != nil {
		h.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// obj returns r.Body[key] as an object.
func obj(t *testing.T, m map[string]any, key string) map[string]any {
	t.Helper()
	o, ok := m[key].(map[string]any)
	if !ok {
		t.Fatalf("%q is not an object in %v", key, m)
	}
	return o
}

// num returns m[key] as a number.
func num(t *testing.T, m map[string]any, key string) float64 {
	t.Helper()
	n, ok := m[key].(float64)
	if !ok {
		t.Fatalf("%q is not a number in %v", key, m)
	}
	return n
}

// timeOf returns m[key] as a time.
func timeOf(t *testing.T, m map[string]any, key string) time.Time {
	t.Helper()
	s, _ := m[key].(string)
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("%q is not a time in %v", key, m)
	}
	return v
}
