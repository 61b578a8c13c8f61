package httpapi_test

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/httpapi"
)

// route is one API route, with the roles besides admin that may use it
// (DESIGN.md, "Roles").
type route struct {
	method, path string
	body         any // sent with the request; chosen so that it changes nothing
	segment      bool
	roles        []apikey.Role
}

func (r route) String() string { return r.method + " " + r.path }

// routes lists every authenticated route of the foundation API.
var routes = []route{
	{method: "POST", path: "/v1/accounts", body: `{}`, roles: []apikey.Role{apikey.Ingest}},
	{method: "GET", path: "/v1/accounts/nobody", roles: []apikey.Role{apikey.Marketing, apikey.CSM}},
	{method: "POST", path: "/v1/contacts", body: `{}`, roles: []apikey.Role{apikey.Ingest}},
	{method: "GET", path: "/v1/contacts/nobody", roles: []apikey.Role{apikey.Marketing, apikey.CSM}},
	{method: "POST", path: "/v1/csms", body: `{}`, roles: []apikey.Role{apikey.Ingest}},
	{method: "POST", path: "/v1/events", body: `{}`, roles: []apikey.Role{apikey.Ingest}},
	{method: "POST", path: "/v1/metrics", body: `{}`, roles: []apikey.Role{apikey.Ingest}},
	{method: "GET", path: "/v1/accounts/nobody/segments", roles: []apikey.Role{apikey.Marketing, apikey.CSM}},
	{method: "GET", path: "/v1/accounts/nobody/health", roles: []apikey.Role{apikey.Marketing, apikey.CSM}},
	{method: "GET", path: "/v1/health/model", roles: []apikey.Role{apikey.Marketing, apikey.CSM}},
	{method: "PUT", path: "/v1/health/model", body: `{}`},
	{method: "GET", path: "/v1/health/summary", roles: []apikey.Role{apikey.Marketing, apikey.CSM}},
	{method: "GET", path: "/v1/segments", roles: []apikey.Role{apikey.Marketing, apikey.Product}},
	{method: "POST", path: "/v1/segments", body: `{}`, roles: []apikey.Role{apikey.Marketing}},
	{method: "POST", path: "/v1/segments/preview", body: `{}`, roles: []apikey.Role{apikey.Marketing, apikey.Product}},
	{method: "GET", path: "/v1/segments/nobody", roles: []apikey.Role{apikey.Marketing, apikey.Product}},
	{method: "PUT", path: "/v1/segments/nobody", body: `{}`, roles: []apikey.Role{apikey.Marketing}},
	{method: "DELETE", path: "/v1/segments/nobody", roles: []apikey.Role{apikey.Marketing}},
	{method: "GET", path: "/v1/segments/nobody/members", roles: []apikey.Role{apikey.Marketing, apikey.Product}},
	{method: "GET", path: "/v1/campaigns", roles: []apikey.Role{apikey.Marketing, apikey.CSM, apikey.Product}},
	{method: "POST", path: "/v1/campaigns", body: `{"kind": "broadcast"}`, roles: []apikey.Role{apikey.Marketing, apikey.Product}},
	{method: "GET", path: "/v1/campaigns/nobody", roles: []apikey.Role{apikey.Marketing, apikey.CSM, apikey.Product}},
	{method: "POST", path: "/v1/campaigns/nobody/activate", roles: []apikey.Role{apikey.Marketing, apikey.Product}},
	{method: "POST", path: "/v1/campaigns/nobody/pause", roles: []apikey.Role{apikey.Marketing, apikey.Product}},
	{method: "POST", path: "/v1/campaigns/nobody/archive", roles: []apikey.Role{apikey.Marketing, apikey.Product}},
	{method: "POST", path: "/v1/campaigns/nobody/preview", body: `{}`, roles: []apikey.Role{apikey.Marketing, apikey.CSM, apikey.Product}},
	{method: "POST", path: "/v1/campaigns/nobody/test", body: `{}`, roles: []apikey.Role{apikey.Marketing, apikey.CSM, apikey.Product}},
	{method: "GET", path: "/v1/campaigns/nobody/stats", roles: []apikey.Role{apikey.Marketing, apikey.CSM, apikey.Product}},
	{method: "PUT", path: "/v1/templates/x/y", body: `{}`, roles: []apikey.Role{apikey.Marketing, apikey.Product}},
	{method: "GET", path: "/v1/templates/x/y", roles: []apikey.Role{apikey.Marketing, apikey.CSM, apikey.Product}},
	{method: "GET", path: "/v1/messages", roles: []apikey.Role{apikey.Marketing}},
	{method: "POST", path: "/v1/messages/1/resolve", body: `{}`},
	{method: "GET", path: "/v1/contacts/nobody/messages", roles: []apikey.Role{apikey.Marketing, apikey.CSM}},
	{method: "POST", path: "/v1/accounts/nobody/hold", body: `{}`, roles: []apikey.Role{apikey.CSM}},
	{method: "DELETE", path: "/v1/accounts/nobody/hold", roles: []apikey.Role{apikey.CSM}},
	{method: "GET", path: "/v1/sending", roles: []apikey.Role{apikey.Marketing, apikey.CSM, apikey.Product}},
	{method: "PUT", path: "/v1/sending", body: `{}`},
	{method: "GET", path: "/v1/nudges?contact_id=nobody", roles: []apikey.Role{apikey.Product}},
	{method: "POST", path: "/v1/nudges/1/events", body: `{}`, roles: []apikey.Role{apikey.Product}},
	{method: "GET", path: "/v1/audit"},
	{method: "GET", path: "/v1/keys"},
	{method: "POST", path: "/v1/keys", body: `{}`},
	{method: "DELETE", path: "/v1/keys/999999"},
	{method: "POST", path: "/segment/v1/batch", body: `{"batch": []}`, segment: true, roles: []apikey.Role{apikey.Ingest}},
	{method: "POST", path: "/segment/v1/identify", body: `{}`, segment: true, roles: []apikey.Role{apikey.Ingest}},
	{method: "POST", path: "/segment/v1/group", body: `{}`, segment: true, roles: []apikey.Role{apikey.Ingest}},
	{method: "POST", path: "/segment/v1/track", body: `{}`, segment: true, roles: []apikey.Role{apikey.Ingest}},
}

// call sends the route's request with the key, as its clients do: Bearer for
// /v1, HTTP Basic (write key as user name) for Segment.
func (h *harness) call(r route, key string) response {
	h.t.Helper()
	req := h.request(r.method, r.path, r.body)
	if key != "" {
		if r.segment {
			req.SetBasicAuth(key, "")
		} else {
			req.Header.Set("Authorization", "Bearer "+key)
		}
	}
	return h.send(req)
}

func TestRoleMatrix(t *testing.T) {
	h := newHarness(t)
	for _, rt := range routes {
		allowed := map[apikey.Role]bool{apikey.Admin: true}
		for _, r := range rt.roles {
			allowed[r] = true
		}
		for _, role := range apikey.Roles {
			t.Run(fmt.Sprintf("%s/%s", rt, role), func(t *testing.T) {
				res := h.call(rt, h.key[role])
				if !allowed[role] {
					wantError(t, res, http.StatusForbidden, "forbidden")
					return
				}
				if res.Status == http.StatusUnauthorized || res.Status == http.StatusForbidden || res.Status >= 500 {
					t.Fatalf("a %s key may use %s: got %d %s", role, rt, res.Status, res.Raw)
				}
			})
		}
	}
	// Nothing above may have changed anything: the bodies are all refused or empty.
	if n := h.count(`SELECT count(*) FROM account`) + h.count(`SELECT count(*) FROM csm`) + h.count(`SELECT count(*) FROM usage_event`); n != 0 {
		t.Fatalf("the role matrix stored %d rows", n)
	}
	if n := h.count(`SELECT count(*) FROM api_key WHERE revoked_at IS NOT NULL`); n != 0 {
		t.Fatalf("the role matrix revoked %d keys", n)
	}
}

// TestEveryRouteIsInTheRoleMatrix fails when a route is added without
// saying, in the table above, who may use it.
func TestEveryRouteIsInTheRoleMatrix(t *testing.T) {
	h := newHarness(t)
	public := map[string]bool{"GET /healthz": true, "GET /readyz": true, "GET /metrics": true,
		"GET /u/:token": true, "POST /u/:token": true, // unsubscribe: the signed token is the authority
		"GET /t/o/:token": true, "GET /t/c/:token": true, // tracking: likewise
		"POST /v1/webhooks/reply": true, "POST /v1/webhooks/bounce": true} // signed with TEND_WEBHOOK_SECRET
	for _, r := range h.api.Echo().Routes() {
		key := r.Method + " " + r.Path
		if public[key] || strings.HasPrefix(r.Method, "echo_route") || r.Path == "/*" || r.Path == "" {
			continue
		}
		found := false
		for _, rt := range routes {
			if rt.method == r.Method && (matchPattern(r.Path, rt.path) || strings.HasSuffix(r.Path, "/*") && strings.HasPrefix(rt.path, strings.TrimSuffix(r.Path, "*"))) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("route %s is not in the role matrix", key)
		}
	}
}

// matchPattern reports whether path fits an echo pattern such as /v1/segments/:name.
func matchPattern(pattern, path string) bool {
	path, _, _ = strings.Cut(path, "?")
	ps, xs := strings.Split(pattern, "/"), strings.Split(path, "/")
	if len(ps) != len(xs) {
		return false
	}
	for i := range ps {
		if !strings.HasPrefix(ps[i], ":") && ps[i] != xs[i] {
			return false
		}
	}
	return true
}

func TestAuthenticationFailures(t *testing.T) {
	h := newHarness(t)
	for _, rt := range routes {
		t.Run(rt.String(), func(t *testing.T) {
			wantError(t, h.call(rt, ""), http.StatusUnauthorized, "missing_key")
			wantError(t, h.call(rt, "tend_notarealkeyatall"), http.StatusUnauthorized, "invalid_key")
			wantError(t, h.call(rt, "not-even-a-tend-key"), http.StatusUnauthorized, "invalid_key")
			// A real key with a character changed is not a key.
			k := h.key[apikey.Admin]
			changed := "x"
			if strings.HasSuffix(k, changed) {
				changed = "y"
			}
			wantError(t, h.call(rt, k[:len(k)-1]+changed), http.StatusUnauthorized, "invalid_key")
		})
	}

	t.Run("bearer on /v1 only", func(t *testing.T) {
		// Basic auth is Segment's convention, not the /v1 API's.
		req := h.request(http.MethodGet, "/v1/keys", nil)
		req.SetBasicAuth(h.key[apikey.Admin], "")
		wantError(t, h.send(req), http.StatusUnauthorized, "missing_key")
		// The scheme is case-insensitive.
		req = h.request(http.MethodGet, "/v1/keys", nil)
		req.Header.Set("Authorization", "bearer "+h.key[apikey.Admin])
		wantStatus(t, h.send(req), http.StatusOK)
	})

	t.Run("segment basic with a bad write key", func(t *testing.T) {
		wantError(t, h.segment("/batch", "tend_wrong", `{"batch": []}`), http.StatusUnauthorized, "invalid_key")
		wantStatus(t, h.segment("/batch", h.key[apikey.Ingest], `{"batch": []}`), http.StatusOK)
	})
}

func TestKeyLifecycle(t *testing.T) {
	h := newHarness(t)

	created := h.must(http.StatusCreated, "POST", "/v1/keys", map[string]string{"name": "pipeline", "role": "ingest"})
	secret, _ := created.Body["secret"].(string)
	if !strings.HasPrefix(secret, "tend_") {
		t.Fatalf("secret %q is not a Tend key", secret)
	}
	key := obj(t, created.Body, "key")
	id := int64(num(t, key, "id"))
	if key["name"] != "pipeline" || key["role"] != "ingest" || !strings.HasPrefix(secret, key["prefix"].(string)) {
		t.Fatalf("created key %v does not describe secret %q", key, secret)
	}
	if _, ok := key["hash"]; ok {
		t.Fatalf("created key shows its hash: %v", key)
	}

	// The new key works, with its role.
	acct := map[string]any{"id": "acme", "name": "Acme"}
	wantStatus(t, h.do("POST", "/v1/accounts", secret, acct), http.StatusOK)
	wantError(t, h.do("GET", "/v1/keys", secret, nil), http.StatusForbidden, "forbidden")

	// Listing never shows a secret or a hash.
	list := h.must(http.StatusOK, "GET", "/v1/keys", nil)
	for _, s := range append([]string{secret}, keySecrets(h)...) {
		if strings.Contains(string(list.Raw), s) {
			t.Fatalf("GET /v1/keys shows a secret: %s", list.Raw)
		}
	}
	keys, _ := list.Body["keys"].([]any)
	if len(keys) != len(apikey.Roles)+1 {
		t.Fatalf("%d keys listed, want %d", len(keys), len(apikey.Roles)+1)
	}
	for _, k := range keys {
		for _, field := range []string{"secret", "hash"} {
			if _, ok := k.(map[string]any)[field]; ok {
				t.Fatalf("a listed key has %q: %v", field, k)
			}
		}
	}

	// Revoked, it stops at once.
	revoked := h.must(http.StatusOK, "DELETE", "/v1/keys/"+strconv.FormatInt(id, 10), nil)
	if revoked.Body["revoked_at"] == nil {
		t.Fatalf("revoked key has no revoked_at: %s", revoked.Raw)
	}
	wantError(t, h.do("POST", "/v1/accounts", secret, acct), http.StatusUnauthorized, "invalid_key")
	wantError(t, h.segment("/batch", secret, `{"batch": []}`), http.StatusUnauthorized, "invalid_key")
	// Revoking again is harmless; the other keys still work.
	h.must(http.StatusOK, "DELETE", "/v1/keys/"+strconv.FormatInt(id, 10), nil)
	wantStatus(t, h.do("POST", "/v1/accounts", h.key[apikey.Ingest], acct), http.StatusOK)

	// A harness key revoked by id stops too.
	var ingestID int64
	for _, k := range keys {
		if k := k.(map[string]any); k["name"] == "ingest-key" {
			ingestID = int64(k["id"].(float64))
		}
	}
	h.must(http.StatusOK, "DELETE", fmt.Sprintf("/v1/keys/%d", ingestID), nil)
	wantError(t, h.do("POST", "/v1/accounts", h.key[apikey.Ingest], acct), http.StatusUnauthorized, "invalid_key")

	wantError(t, h.do("DELETE", "/v1/keys/424242", h.key[apikey.Admin], nil), http.StatusNotFound, "key_not_found")
	wantError(t, h.do("DELETE", "/v1/keys/abc", h.key[apikey.Admin], nil), http.StatusNotFound, "key_not_found")
	wantError(t, h.do("POST", "/v1/keys", h.key[apikey.Admin], map[string]string{"name": "x", "role": "root"}), http.StatusUnprocessableEntity, "invalid_role")
	wantError(t, h.do("POST", "/v1/keys", h.key[apikey.Admin], map[string]string{"name": " ", "role": "csm"}), http.StatusUnprocessableEntity, "invalid_name")
	wantError(t, h.do("POST", "/v1/keys", h.key[apikey.Admin], map[string]string{"name": "x", "role": "csm", "scope": "all"}), http.StatusBadRequest, "invalid_json")
	if n := h.count(`SELECT count(*) FROM api_key`); n != len(apikey.Roles)+1 {
		t.Fatalf("%d keys stored, want %d: a refused create stored a key", n, len(apikey.Roles)+1)
	}
}

// keySecrets returns the harness's key secrets.
func keySecrets(h *harness) []string {
	var out []string
	for _, s := range h.key {
		out = append(out, s)
	}
	return out
}

func TestRateLimit(t *testing.T) {
	// One request a minute with a burst of two: the third quick request is
	// refused whatever the speed of the machine.
	const perSecond = 1.0 / 60
	h := newHarness(t, func(o *httpapi.Options) { o.RateLimit = perSecond; o.RateBurst = 2 })
	admin := h.key[apikey.Admin]

	wantStatus(t, h.do("GET", "/v1/keys", admin, nil), http.StatusOK)
	wantStatus(t, h.do("GET", "/v1/audit", admin, nil), http.StatusOK)
	res := h.do("POST", "/v1/accounts", admin, map[string]any{"id": "acme"})
	wantError(t, res, http.StatusTooManyRequests, "rate_limited")
	after, err := strconv.Atoi(res.Header.Get("Retry-After"))
	if err != nil || after < 1 || after > 60 {
		t.Fatalf("Retry-After %q, want whole seconds from 1 to 60", res.Header.Get("Retry-After"))
	}
	// The refused request changed nothing and was not audited.
	if n := h.count(`SELECT count(*) FROM account`); n != 0 {
		t.Fatalf("a rate-limited request stored %d accounts", n)
	}
	if n := h.count(`SELECT count(*) FROM audit_log`); n != 0 {
		t.Fatalf("a rate-limited request was audited")
	}

	// The limit is per key, and the same for the Segment routes.
	ingest := h.key[apikey.Ingest]
	wantStatus(t, h.segment("/batch", ingest, `{"batch": []}`), http.StatusOK)
	wantStatus(t, h.segment("/batch", ingest, `{"batch": []}`), http.StatusOK)
	wantError(t, h.segment("/batch", ingest, `{"batch": []}`), http.StatusTooManyRequests, "rate_limited")
	wantError(t, h.do("POST", "/v1/accounts", ingest, map[string]any{"id": "acme"}), http.StatusTooManyRequests, "rate_limited")
	wantStatus(t, h.do("GET", "/v1/accounts/acme", h.key[apikey.Marketing], nil), http.StatusNotFound)
	wantStatus(t, h.do("GET", "/v1/accounts/acme", h.key[apikey.CSM], nil), http.StatusNotFound)

	// Unauthenticated routes are not limited.
	for i := 0; i < 5; i++ {
		wantStatus(t, h.do("GET", "/healthz", "", nil), http.StatusOK)
	}
}
