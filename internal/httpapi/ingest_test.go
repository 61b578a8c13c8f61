package httpapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/httpapi"
)

// getAccount returns GET /v1/accounts/{id} as a marketing key.
func (h *harness) getAccount(id string) map[string]any {
	h.t.Helper()
	r := h.do("GET", "/v1/accounts/"+id, h.key[apikey.Marketing], nil)
	if r.Status != http.StatusOK {
		h.t.Fatalf("GET /v1/accounts/%s: %d %s", id, r.Status, r.Raw)
	}
	return r.Body
}

// profile returns the profile of an account.
func (h *harness) profile(id string) map[string]any {
	h.t.Helper()
	return obj(h.t, h.getAccount(id), "profile")
}

// ingest posts body to path as the ingest key and fails unless the status is want.
func (h *harness) ingest(want int, path string, body any) response {
	h.t.Helper()
	r := h.do("POST", path, h.key[apikey.Ingest], body)
	if r.Status != want {
		h.t.Fatalf("POST %s: status %d, want %d: %s", path, r.Status, want, r.Raw)
	}
	return r
}

// stored counts what the ingest endpoints can store.
func (h *harness) stored() map[string]int {
	h.t.Helper()
	out := map[string]int{}
	for _, table := range []string{"account", "contact", "csm", "usage_event", "usage_daily", "account_metric"} {
		out[table] = h.count(`SELECT count(*) FROM ` + table)
	}
	return out
}

func TestPostAccountsForms(t *testing.T) {
	h := newHarness(t)
	signup := t0.AddDate(0, -2, 0)

	// One object.
	r := h.ingest(http.StatusOK, "/v1/accounts", map[string]any{
		"id": "acme", "name": "Acme", "plan": "pro", "mrr": 1200.5, "seats": 20, "signup_at": signup,
		"stage": "onboarding", "timezone": "Europe/Paris", "traits": map[string]any{"industry": "retail"},
	})
	if num(t, r.Body, "upserted") != 1 || num(t, r.Body, "changed") != 1 {
		t.Fatalf("one account: %s", r.Raw)
	}
	// A list.
	r = h.ingest(http.StatusOK, "/v1/accounts", map[string]any{"accounts": []any{
		map[string]any{"id": "globex", "name": "Globex"},
		map[string]any{"id": "initech", "name": "Initech", "seats": 5},
	}})
	if num(t, r.Body, "upserted") != 2 {
		t.Fatalf("two accounts: %s", r.Raw)
	}

	a := h.getAccount("acme")
	for k, want := range map[string]any{"id": "acme", "name": "Acme", "plan": "pro", "mrr": 1200.5, "seats": 20.0, "stage": "onboarding", "timezone": "Europe/Paris"} {
		if a[k] != want {
			t.Errorf("acme.%s = %v, want %v", k, a[k], want)
		}
	}
	if got := timeOf(t, a, "signup_at"); !got.Equal(signup) {
		t.Errorf("signup_at %s, want %s", got, signup)
	}
	if obj(t, a, "traits")["industry"] != "retail" {
		t.Errorf("traits %v", a["traits"])
	}
	if h.getAccount("initech")["seats"] != 5.0 || h.getAccount("globex")["name"] != "Globex" {
		t.Fatal("the list form did not store both accounts")
	}

	// An upsert keeps fields it leaves out, merges traits, and a null trait is removed.
	r = h.ingest(http.StatusOK, "/v1/accounts", map[string]any{"id": "acme", "plan": "enterprise", "traits": map[string]any{"industry": nil, "tier_hint": "A"}})
	if num(t, r.Body, "changed") != 1 {
		t.Fatalf("upsert: %s", r.Raw)
	}
	a = h.getAccount("acme")
	if a["plan"] != "enterprise" || a["name"] != "Acme" || a["seats"] != 20.0 {
		t.Fatalf("upsert lost fields: %v", a)
	}
	if tr := obj(t, a, "traits"); tr["tier_hint"] != "A" || tr["industry"] != nil {
		t.Fatalf("traits not merged: %v", tr)
	}
	// The same data again changes nothing.
	if r := h.ingest(http.StatusOK, "/v1/accounts", map[string]any{"id": "acme", "plan": "enterprise"}); num(t, r.Body, "changed") != 0 {
		t.Fatalf("a no-op upsert reports a change: %s", r.Raw)
	}
}

// TestIngestRefusals sends bad input to every ingest endpoint and checks the
// answer and that nothing was stored.
func TestIngestRefusals(t *testing.T) {
	h := newHarness(t)
	h.ingest(http.StatusOK, "/v1/accounts", map[string]any{"id": "acme"})
	before := h.stored()

	type tc struct {
		name   string
		path   string
		body   any
		status int
		code   string
		items  []itemWant
	}
	good := map[string]any{
		"/v1/accounts": map[string]any{"id": "new-acct"},
		"/v1/contacts": map[string]any{"id": "c1", "account_id": "acme"},
		"/v1/csms":     map[string]any{"email": "ann@vendor.example"},
		"/v1/events":   map[string]any{"account_id": "acme", "name": "login"},
		"/v1/metrics":  map[string]any{"account_id": "acme", "values": map[string]any{"nps": 9}},
	}
	listKey := map[string]string{"/v1/accounts": "accounts", "/v1/contacts": "contacts", "/v1/csms": "csms", "/v1/events": "events", "/v1/metrics": "metrics"}
	batch := func(path string, items ...any) map[string]any { return map[string]any{listKey[path]: items} }
	var cases []tc
	for _, path := range []string{"/v1/accounts", "/v1/contacts", "/v1/csms", "/v1/events", "/v1/metrics"} {
		g := good[path]
		withUnknown := map[string]any{"bogus": 1}
		for k, v := range g.(map[string]any) {
			withUnknown[k] = v
		}
		cases = append(cases,
			tc{"malformed", path, `{"` + listKey[path] + `": [`, 400, "invalid_json", nil},
			tc{"not an object", path, `[1, 2]`, 400, "invalid_json", nil},
			tc{"empty body", path, ``, 400, "invalid_json", nil},
			tc{"two values", path, `{} {}`, 400, "invalid_json", nil},
			tc{"unknown item field", path, batch(path, g, withUnknown), 400, "invalid_json", nil},
			tc{"unknown top-level field", path, map[string]any{listKey[path]: []any{g}, "extra": 1}, 400, "invalid_json", nil},
			tc{"wrong type", path, map[string]any{listKey[path]: "all of them"}, 400, "invalid_json", nil},
			tc{"empty batch", path, batch(path), 422, "empty_batch", nil},
		)
	}
	cases = append(cases,
		tc{"single with unknown field", "/v1/accounts", map[string]any{"id": "x", "bogus": 1}, 400, "invalid_json", nil},
		tc{"single with unknown field", "/v1/contacts", map[string]any{"id": "x", "account_id": "acme", "bogus": 1}, 400, "invalid_json", nil},
		tc{"single with unknown field", "/v1/csms", map[string]any{"email": "x@y.example", "bogus": 1}, 400, "invalid_json", nil},
		tc{"mrr as text", "/v1/accounts", map[string]any{"id": "x", "mrr": "lots"}, 400, "invalid_json", nil},

		tc{"bad accounts", "/v1/accounts", batch("/v1/accounts",
			map[string]any{"id": "a1"}, map[string]any{"id": ""}, map[string]any{"id": "a3", "seats": -1},
			map[string]any{"id": "a4", "timezone": "Mars/Olympus"}, map[string]any{"id": "a1"},
			map[string]any{"id": "a6", "csm_email": "nobody@vendor.example"}, map[string]any{"id": "a7", "traits": []int{1}},
			map[string]any{"id": "a8", "signup_at": t0.Add(time.Hour)},
		), 422, "invalid_batch", []itemWant{{1, "id"}, {2, "seats"}, {3, "timezone"}, {6, "traits"}, {7, "signup_at"}, {4, "id"}, {5, "csm_email"}}},
		tc{"bad contacts", "/v1/contacts", batch("/v1/contacts",
			map[string]any{"id": "c1", "account_id": "acme", "email": "c1@acme.example"},
			map[string]any{"id": "c2", "account_id": "acme", "email": "not an email"},
			map[string]any{"id": "c3", "account_id": "ghost"},
			map[string]any{"id": "c4"},
		), 422, "invalid_batch", []itemWant{{1, "email"}, {3, "account_id"}, {2, "account_id"}}},
		tc{"bad csms", "/v1/csms", batch("/v1/csms",
			map[string]any{"email": "ann@vendor.example", "name": "Ann"},
			map[string]any{"email": "bob"},
			map[string]any{"email": "cy@vendor.example", "reply_to": "nope"},
			map[string]any{"email": "ANN@vendor.example"},
		), 422, "invalid_batch", []itemWant{{1, "email"}, {2, "reply_to"}, {3, "email"}}},
		tc{"bad events", "/v1/events", batch("/v1/events",
			map[string]any{"account_id": "acme", "name": "login"},
			map[string]any{"account_id": "acme", "name": "feature_used", "properties": map[string]any{}},
			map[string]any{"account_id": "acme", "name": ""},
			map[string]any{"account_id": "acme", "name": "login", "timestamp": t0.Add(time.Hour)},
			map[string]any{"account_id": "acme", "name": "x", "properties": []int{1}},
		), 422, "invalid_batch", []itemWant{{1, "properties.feature"}, {2, "name"}, {3, "timestamp"}, {4, "properties"}}},
		tc{"events for an unknown account", "/v1/events", batch("/v1/events",
			map[string]any{"account_id": "acme", "name": "login"},
			map[string]any{"account_id": "ghost", "name": "login"},
		), 422, "invalid_batch", []itemWant{{1, "account_id"}}},
		tc{"bad metrics", "/v1/metrics", batch("/v1/metrics",
			map[string]any{"account_id": "acme", "values": map[string]any{"nps": 9}},
			map[string]any{"account_id": "acme", "values": map[string]any{"nps": 11}},
			map[string]any{"account_id": "acme", "values": map[string]any{"logins": 3}},
			map[string]any{"account_id": "acme", "values": map[string]any{}},
			map[string]any{"account_id": "ghost", "values": map[string]any{"open_tickets": 1}},
			map[string]any{"account_id": "acme", "values": map[string]any{"active_users": 2.5}},
		), 422, "invalid_batch", []itemWant{{1, "values.nps"}, {2, "values.logins"}, {3, "values"}, {5, "values.active_users"}, {4, "account_id"}}},
	)

	for _, c := range cases {
		t.Run(strings.TrimPrefix(c.path, "/v1/")+"/"+c.name, func(t *testing.T) {
			e := wantError(t, h.do("POST", c.path, h.key[apikey.Ingest], c.body), c.status, c.code)
			if c.items != nil {
				wantItems(t, itemErrors(t, e), c.items...)
			}
			// Messages speak JSON, never the server's Go types.
			for _, goName := range []string{"account.", "httpapi.", "struct {", "[]", "float64", "int64", "time.Time"} {
				if strings.Contains(e["message"].(string), goName) {
					t.Fatalf("message names a Go type (%q): %s", goName, e["message"])
				}
			}
			if after := h.stored(); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("a refused request stored something: before %v, after %v", before, after)
			}
		})
	}
	// Nothing of any refused batch is readable either.
	wantError(t, h.do("GET", "/v1/accounts/a1", h.key[apikey.Marketing], nil), http.StatusNotFound, "account_not_found")
	wantError(t, h.do("GET", "/v1/contacts/c1", h.key[apikey.Marketing], nil), http.StatusNotFound, "contact_not_found")
	if p := h.profile("acme"); num(t, p, "logins_30d") != 0 || num(t, p, "nps") != -1 {
		t.Fatalf("a refused batch reached the profile: %v", p)
	}
}

func TestBodyLimit(t *testing.T) {
	const limit = 2048
	h := newHarness(t, func(o *httpapi.Options) { o.BodyLimit = limit })
	big := func(n int) map[string]any {
		var accts []any
		for i := 0; i < n; i++ {
			accts = append(accts, map[string]any{"id": fmt.Sprintf("acct-%03d", i), "name": strings.Repeat("n", 40)})
		}
		return map[string]any{"accounts": accts}
	}
	body := big(60)
	if j, _ := json.Marshal(body); len(j) <= limit {
		t.Fatalf("test body of %d bytes is not over the limit", len(j))
	}

	t.Run("content-length", func(t *testing.T) {
		wantError(t, h.do("POST", "/v1/accounts", h.key[apikey.Ingest], body), http.StatusRequestEntityTooLarge, "body_too_large")
	})
	t.Run("chunked", func(t *testing.T) {
		j, _ := json.Marshal(body)
		req := h.request("POST", "/v1/accounts", nil)
		req.Body, req.ContentLength = readCloser{bytes.NewReader(j)}, -1
		req.Header.Set("Authorization", "Bearer "+h.key[apikey.Ingest])
		wantError(t, h.send(req), http.StatusRequestEntityTooLarge, "body_too_large")
	})
	t.Run("gzip over the limit once inflated", func(t *testing.T) {
		z := gzipJSON(t, body)
		if len(z) > limit {
			t.Fatalf("compressed body %d bytes is over the limit", len(z))
		}
		req := h.request("POST", "/v1/accounts", z)
		req.Header.Set("Content-Encoding", "gzip")
		req.Header.Set("Authorization", "Bearer "+h.key[apikey.Ingest])
		wantError(t, h.send(req), http.StatusRequestEntityTooLarge, "body_too_large")
	})
	t.Run("segment", func(t *testing.T) {
		var batch []any
		for i := 0; i < 40; i++ {
			batch = append(batch, map[string]any{"type": "group", "groupId": fmt.Sprintf("g-%d", i), "userId": "u", "traits": map[string]any{"name": strings.Repeat("n", 40)}})
		}
		wantError(t, h.segment("/batch", h.key[apikey.Ingest], map[string]any{"batch": batch}), http.StatusRequestEntityTooLarge, "body_too_large")
	})
	if n := h.count(`SELECT count(*) FROM account`); n != 0 {
		t.Fatalf("a refused body stored %d accounts", n)
	}
	// Under the limit is fine.
	h.ingest(http.StatusOK, "/v1/accounts", big(5))
	if n := h.count(`SELECT count(*) FROM account`); n != 5 {
		t.Fatalf("%d accounts stored, want 5", n)
	}
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// profileKeys are the names of the predicate environment (DESIGN.md).
var profileKeys = []string{
	"plan", "stage", "tier", "region", "csm", "mrr", "seats", "active_users", "license_utilization",
	"days_since_signup", "days_since_last_login", "logins_7d", "logins_30d", "features", "events",
	"health_score", "health_change_30d", "health_band", "nps", "open_tickets", "emails_30d", "opens_30d", "clicks_30d",
	"replies_30d", "nudges_dismissed_30d", "traits", "signup_at", "last_login_at",
}

func TestGetAccount(t *testing.T) {
	h := newHarness(t)
	signup := t0.AddDate(0, 0, -40)
	h.ingest(http.StatusOK, "/v1/csms", map[string]any{"email": "Cara@Vendor.example", "name": "Cara", "signature_html": "<p>Cara</p>"})
	h.ingest(http.StatusOK, "/v1/accounts", map[string]any{
		"id": "acme", "name": "Acme", "plan": "pro", "mrr": 500, "seats": 8, "signup_at": signup,
		"stage": "adopting", "tier": "leveraged", "region": "emea", "csm_email": "cara@vendor.example",
		"traits": map[string]any{"industry": "retail"},
	})
	h.ingest(http.StatusOK, "/v1/contacts", map[string]any{"contacts": []any{
		map[string]any{"id": "u1", "account_id": "acme", "email": "u1@acme.example"},
		map[string]any{"id": "u2", "account_id": "acme"},
	}})

	// A fresh account: never logged in reads days since signup.
	p := h.profile("acme")
	for _, k := range profileKeys {
		if _, ok := p[k]; !ok {
			t.Errorf("profile has no %q", k)
		}
	}
	for _, k := range []string{"features", "events", "traits"} {
		obj(t, p, k) // an object, never null
	}
	for k, want := range map[string]any{
		"plan": "pro", "stage": "adopting", "tier": "leveraged", "region": "emea", "csm": "cara@vendor.example",
		"mrr": 500.0, "seats": 8.0, "days_since_signup": 40.0, "days_since_last_login": 40.0,
		"logins_7d": 0.0, "logins_30d": 0.0, "nps": -1.0, "health_score": 50.0, "active_users": 0.0,
		"license_utilization": 0.0, "open_tickets": 0.0,
	} {
		if p[k] != want {
			t.Errorf("profile.%s = %v, want %v", k, p[k], want)
		}
	}
	if obj(t, p, "traits")["industry"] != "retail" {
		t.Errorf("profile.traits = %v", p["traits"])
	}
	if got := timeOf(t, p, "last_login_at"); !got.Equal(signup) {
		t.Errorf("last_login_at of an account that never logged in = %s, want signup %s", got, signup)
	}
	if a := h.getAccount("acme"); a["csm_email"] != "cara@vendor.example" || a["contacts"] != 2.0 {
		t.Errorf("account view: csm_email %v, contacts %v", a["csm_email"], a["contacts"])
	}

	// Usage and metrics reach the profile.
	day := 24 * time.Hour
	ev := func(name string, at time.Time, user string, props map[string]any) map[string]any {
		return map[string]any{"account_id": "acme", "contact_id": user, "name": name, "timestamp": at, "properties": props}
	}
	r := h.ingest(http.StatusAccepted, "/v1/events", map[string]any{"events": []any{
		ev("login", t0.Add(-10*day), "u1", nil),
		ev("login", t0.Add(-3*day), "u2", nil),
		ev("login", t0.Add(-time.Hour), "u1", nil),
		ev("feature_used", t0.Add(-2*day), "u1", map[string]any{"feature": "reports"}),
		ev("feature_used", t0.Add(-40*day), "u3", map[string]any{"feature": "reports"}),
		ev("invite_sent", t0, "u1", nil),
	}})
	if num(t, r.Body, "accepted") != 6 {
		t.Fatalf("events: %s", r.Raw)
	}
	h.ingest(http.StatusAccepted, "/v1/metrics", map[string]any{"metrics": []any{
		map[string]any{"account_id": "acme", "values": map[string]any{"nps": 9, "open_tickets": 3}},
	}})

	p = h.profile("acme")
	for k, want := range map[string]any{
		"logins_7d": 2.0, "logins_30d": 3.0, "days_since_last_login": 0.0, "active_users": 2.0,
		"license_utilization": 0.25, "nps": 9.0, "open_tickets": 3.0,
	} {
		if p[k] != want {
			t.Errorf("profile.%s = %v, want %v", k, p[k], want)
		}
	}
	if f := obj(t, p, "features"); f["reports"] != 1.0 || len(f) != 1 {
		t.Errorf("features %v, want reports 1 (the 40-day-old use is outside the window)", f)
	}
	if e := obj(t, p, "events"); e["login"] != 3.0 || e["invite_sent"] != 1.0 || e["feature_used"] != 1.0 {
		t.Errorf("events %v", e)
	}

	// A metric snapshot of active users wins over the count from events.
	h.ingest(http.StatusAccepted, "/v1/metrics", map[string]any{"metrics": []any{
		map[string]any{"account_id": "acme", "values": map[string]any{"active_users": 6}},
	}})
	if p := h.profile("acme"); p["active_users"] != 6.0 || p["license_utilization"] != 0.75 {
		t.Errorf("after a snapshot: active_users %v, license_utilization %v", p["active_users"], p["license_utilization"])
	}

	// The windows follow the clock.
	h.clock.Advance(4 * day)
	p = h.profile("acme")
	for k, want := range map[string]any{"logins_7d": 1.0, "logins_30d": 3.0, "days_since_last_login": 4.0, "days_since_signup": 44.0} {
		if p[k] != want {
			t.Errorf("4 days on: profile.%s = %v, want %v", k, p[k], want)
		}
	}
	h.clock.Advance(27 * day)
	p = h.profile("acme")
	for k, want := range map[string]any{"logins_7d": 0.0, "logins_30d": 0.0, "days_since_last_login": 31.0, "active_users": 0.0} {
		if p[k] != want {
			t.Errorf("31 days on: profile.%s = %v, want %v", k, p[k], want)
		}
	}
	if len(obj(t, p, "features")) != 0 {
		t.Errorf("31 days on: features %v, want none", p["features"])
	}

	wantError(t, h.do("GET", "/v1/accounts/nope", h.key[apikey.CSM], nil), http.StatusNotFound, "account_not_found")
	c := h.do("GET", "/v1/contacts/u1", h.key[apikey.CSM], nil)
	wantStatus(t, c, http.StatusOK)
	if c.Body["account_id"] != "acme" || c.Body["email"] != "u1@acme.example" {
		t.Errorf("contact %s", c.Raw)
	}
}

func TestEventIdempotency(t *testing.T) {
	h := newHarness(t)
	h.ingest(http.StatusOK, "/v1/accounts", map[string]any{"id": "acme"})
	login := map[string]any{"account_id": "acme", "name": "login", "message_id": "m-1"}
	r := h.ingest(http.StatusAccepted, "/v1/events", map[string]any{"events": []any{login, login}})
	if num(t, r.Body, "accepted") != 1 || num(t, r.Body, "duplicates") != 1 {
		t.Fatalf("a repeated message_id in one batch: %s", r.Raw)
	}
	r = h.ingest(http.StatusAccepted, "/v1/events", map[string]any{"events": []any{login}})
	if num(t, r.Body, "accepted") != 0 || num(t, r.Body, "duplicates") != 1 {
		t.Fatalf("a message_id sent again: %s", r.Raw)
	}
	if p := h.profile("acme"); p["logins_30d"] != 1.0 {
		t.Fatalf("logins_30d %v, want 1", p["logins_30d"])
	}
}

// An optional object sent as null reads as left out.
func TestNullOptionalObjects(t *testing.T) {
	h := newHarness(t)
	h.ingest(http.StatusOK, "/v1/accounts", `{"id": "acme", "traits": null}`)
	h.ingest(http.StatusOK, "/v1/contacts", `{"id": "u1", "account_id": "acme", "traits": null}`)
	h.ingest(http.StatusAccepted, "/v1/events", `{"events": [{"account_id": "acme", "name": "login", "properties": null}]}`)
	if n := h.count(`SELECT count(*) FROM usage_event WHERE properties = '{}'`); n != 1 {
		t.Fatalf("%d events stored with properties {}, want 1", n)
	}
	if tr := obj(t, h.getAccount("acme"), "traits"); len(tr) != 0 {
		t.Fatalf("traits %v, want {}", tr)
	}
	// feature_used still needs its feature.
	e := wantError(t, h.do("POST", "/v1/events", h.key[apikey.Ingest], `{"events": [{"account_id": "acme", "name": "feature_used", "properties": null}]}`), http.StatusUnprocessableEntity, "invalid_batch")
	wantItems(t, itemErrors(t, e), itemWant{0, "properties.feature"})
}
