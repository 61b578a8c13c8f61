package httpapi_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/tendhq/tend/internal/apikey"
)

// Input PostgreSQL cannot store — text with a NUL or invalid UTF-8, jsonb
// with \u0000, numbers and times out of its range — is refused with a 4xx
// naming the field, and changes nothing; text written by outsiders (tracking
// headers, webhook payloads) is cleaned and kept instead.

// fingerprintTables are the tables a refused request must leave as they were.
var fingerprintTables = []string{
	"account", "contact", "csm", "usage_event", "usage_daily", "account_metric", "segment", "campaign",
	"campaign_version", "template", "api_key", "account_hold", "send_switch", "message", "audit_log",
	"segment_user_group",
}

// fingerprint is a digest of every row of the tables above.
func (h *harness) fingerprint() map[string]string {
	h.t.Helper()
	out := map[string]string{}
	for _, table := range fingerprintTables {
		var sum string
		q := `SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM ` + table + ` t`
		if err := h.db.Get(&sum, q); err != nil {
			h.t.Fatalf("%s: %v", q, err)
		}
		out[table] = sum
	}
	return out
}

// unchanged fails the test if a table differs from before.
func (h *harness) unchanged(t *testing.T, before map[string]string) {
	t.Helper()
	for table, sum := range h.fingerprint() {
		if before[table] != sum {
			t.Fatalf("a refused request changed table %s", table)
		}
	}
}

// TestBadParameters sends every route a path parameter and a query value
// that are not text: a NUL, bytes that are not UTF-8. Each is a 422
// invalid_parameter, and nothing changes.
func TestBadParameters(t *testing.T) {
	h := newHarness(t)
	h.must(http.StatusOK, "POST", "/v1/accounts", map[string]any{"id": "acme"})
	h.must(http.StatusCreated, "POST", "/v1/segments", map[string]any{"name": "kept", "predicate": `seats >= 0`})
	before := h.fingerprint()
	admin := h.key[apikey.Admin]
	for _, bad := range []string{"%00", "a%00b", "%FF", "caf%C3"} {
		for _, rt := range routes {
			path, query, _ := strings.Cut(rt.path, "?")
			// The table's placeholders stand where the parameters are.
			segs := strings.Split(path, "/")
			param := false
			for i, s := range segs {
				if s == "nobody" || s == "999999" || s == "1" || s == "y" && segs[i-1] == "x" {
					segs[i], param = bad, true
				}
			}
			if param {
				r := rt
				r.path = strings.Join(segs, "/")
				if query != "" {
					r.path += "?" + query
				}
				t.Run(fmt.Sprintf("path %s %s", rt.method, r.path), func(t *testing.T) {
					e := wantError(t, h.call(r, admin), http.StatusUnprocessableEntity, "invalid_parameter")
					if e["in"] != "path" || e["parameter"] == "" {
						t.Fatalf("the error does not name the parameter: %v", e)
					}
				})
			}
			r := rt
			if query == "" {
				r.path = path + "?q=" + bad
			} else {
				r.path = path + "?" + strings.ReplaceAll(query, "nobody", bad)
			}
			t.Run(fmt.Sprintf("query %s %s", rt.method, r.path), func(t *testing.T) {
				e := wantError(t, h.call(r, admin), http.StatusUnprocessableEntity, "invalid_parameter")
				if e["in"] != "query" || e["parameter"] == "" {
					t.Fatalf("the error does not name the parameter: %v", e)
				}
			})
		}
	}
	h.unchanged(t, before)
	// Text that is not ASCII is text: looked up as before.
	wantError(t, h.do("GET", "/v1/accounts/caf%C3%A9", admin, nil), http.StatusNotFound, "account_not_found")
	wantError(t, h.do("GET", "/v1/nudges?contact_id=caf%C3%A9", admin, nil), http.StatusNotFound, "contact_not_found")
}
