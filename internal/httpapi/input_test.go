package httpapi_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/campaign"
	"github.com/tendhq/tend/internal/health"
	"github.com/tendhq/tend/internal/httpapi"
	"github.com/tendhq/tend/internal/token"
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

// unchanged fails the test if a table, but those excepted, differs from before.
func (h *harness) unchanged(t *testing.T, before map[string]string, except ...string) {
	t.Helper()
	for table, sum := range h.fingerprint() {
		if before[table] != sum && !slices.Contains(except, table) {
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

// TestTextWithNUL sends "\u0000" in every kind of text field of the API.
func TestTextWithNUL(t *testing.T) {
	h := newHarness(t)
	h.campaignSetup()
	h.must(http.StatusOK, "POST", "/v1/accounts", map[string]any{"id": "acme"})
	h.must(http.StatusOK, "POST", "/v1/contacts", map[string]any{"id": "ann", "account_id": "acme", "email": "ann@acme.example"})
	h.must(http.StatusOK, "POST", "/v1/csms", map[string]any{"email": "cara@vendor.example"})
	h.must(http.StatusCreated, "POST", "/v1/segments", map[string]any{"name": "kept", "predicate": `seats >= 0`})
	before := h.fingerprint()

	broadcast := func(field, value string) string {
		return `{"name": "b1", "kind": "broadcast", "send_at": "2026-07-01T10:00:00Z", "variants": [{"segment": "everyone", "template": "hello/one"}], "` + field + `": "` + value + `"}`
	}
	drip := func(template, audience string) string {
		return `{"name": "d1", "kind": "drip", "segment": "everyone", "audience": "` + audience + `", "steps": [{"id": "one", "wait": "0h", "channel": "email", "template": "` + template + `"}]}`
	}
	cases := []struct {
		name, method, path, body string
		status                   int
		code                     string
		items                    []itemWant
	}{
		{"account id", "POST", "/v1/accounts", `{"id": "a\u0000"}`, 422, "invalid_batch", []itemWant{{0, "id"}}},
		{"account name", "POST", "/v1/accounts", `{"accounts": [{"id": "a1"}, {"id": "a2", "name": "A\u0000"}]}`, 422, "invalid_batch", []itemWant{{1, "name"}}},
		{"account plan", "POST", "/v1/accounts", `{"id": "a1", "plan": "\u0000"}`, 422, "invalid_batch", []itemWant{{0, "plan"}}},
		{"account csm_email", "POST", "/v1/accounts", `{"id": "a1", "csm_email": "cara\u0000@vendor.example"}`, 422, "invalid_batch", []itemWant{{0, "csm_email"}}},
		{"contact id", "POST", "/v1/contacts", `{"id": "c\u0000", "account_id": "acme"}`, 422, "invalid_batch", []itemWant{{0, "id"}}},
		{"contact account", "POST", "/v1/contacts", `{"id": "c1", "account_id": "ac\u0000me"}`, 422, "invalid_batch", []itemWant{{0, "account_id"}}},
		{"contact name", "POST", "/v1/contacts", `{"id": "c1", "account_id": "acme", "name": "N\u0000"}`, 422, "invalid_batch", []itemWant{{0, "name"}}},
		{"contact locale", "POST", "/v1/contacts", `{"id": "c1", "account_id": "acme", "locale": "fr\u0000"}`, 422, "invalid_batch", []itemWant{{0, "locale"}}},
		{"csm name", "POST", "/v1/csms", `{"email": "bob@vendor.example", "name": "Bob\u0000"}`, 422, "invalid_batch", []itemWant{{0, "name"}}},
		{"csm signature", "POST", "/v1/csms", `{"email": "bob@vendor.example", "signature_html": "<p>\u0000</p>"}`, 422, "invalid_batch", []itemWant{{0, "signature_html"}}},
		{"event name", "POST", "/v1/events", `{"events": [{"account_id": "acme", "name": "log\u0000in"}]}`, 422, "invalid_batch", []itemWant{{0, "name"}}},
		{"event account", "POST", "/v1/events", `{"events": [{"account_id": "acme", "name": "login"}, {"account_id": "ac\u0000me", "name": "login"}]}`, 422, "invalid_batch", []itemWant{{1, "account_id"}}},
		{"event contact", "POST", "/v1/events", `{"events": [{"account_id": "acme", "contact_id": "u\u0000", "name": "login"}]}`, 422, "invalid_batch", []itemWant{{0, "contact_id"}}},
		{"event message id", "POST", "/v1/events", `{"events": [{"account_id": "acme", "message_id": "m\u0000", "name": "login"}]}`, 422, "invalid_batch", []itemWant{{0, "message_id"}}},
		{"metric account", "POST", "/v1/metrics", `{"metrics": [{"account_id": "ac\u0000me", "values": {"nps": 9}}]}`, 422, "invalid_batch", []itemWant{{0, "account_id"}}},
		{"segment description", "POST", "/v1/segments", `{"name": "s1", "predicate": "seats > 1", "description": "d\u0000"}`, 422, "invalid_description", nil},
		{"segment predicate", "POST", "/v1/segments", `{"name": "s1", "predicate": "plan == \"a\u0000\""}`, 422, "invalid_predicate", nil},
		{"segment edit description", "PUT", "/v1/segments/kept", `{"predicate": "seats > 1", "description": "d\u0000"}`, 422, "invalid_description", nil},
		{"segment edit predicate", "PUT", "/v1/segments/kept", `{"predicate": "plan == \"a\u0000\""}`, 422, "invalid_predicate", nil},
		{"segment preview", "POST", "/v1/segments/preview", `{"predicate": "plan == \"a\u0000\""}`, 422, "invalid_predicate", nil},
		{"campaign description", "POST", "/v1/campaigns", broadcast("description", `d\u0000`), 422, "invalid_campaign", nil},
		{"campaign description too long", "POST", "/v1/campaigns", broadcast("description", strings.Repeat("d", 2001)), 422, "invalid_campaign", nil},
		{"campaign template", "POST", "/v1/campaigns", drip(`hello/\u0000`, `contact.role == \"admin\"`), 422, "invalid_campaign", nil},
		{"campaign audience", "POST", "/v1/campaigns", drip("hello/one", `contact.role == \"a\u0000\"`), 422, "invalid_campaign", nil},
		{"template source", "PUT", "/v1/templates/hello/two", `{"kind": "email", "source": "{{define \"subject\"}}Hi\u0000{{end}}{{define \"body\"}}x{{end}}"}`, 422, "invalid_template", nil},
		{"key name", "POST", "/v1/keys", `{"name": "k\u0000", "role": "ingest"}`, 422, "invalid_name", nil},
		{"hold reason", "POST", "/v1/accounts/acme/hold", `{"reason": "r\u0000"}`, 422, "invalid_reason", nil},
		{"send switch reason", "PUT", "/v1/sending", `{"paused": true, "reason": "r\u0000"}`, 422, "invalid_reason", nil},
		{"send switch reason too long", "PUT", "/v1/sending", `{"paused": true, "reason": "` + strings.Repeat("r", 501) + `"}`, 422, "invalid_reason", nil},
		{"preview step", "POST", "/v1/campaigns/hello/preview", `{"step": "\u0000", "contact_id": "ann"}`, 422, "unknown_step", nil},
		{"preview step of no campaign", "POST", "/v1/campaigns/nope/preview", `{"step": "\u0000", "contact_id": "ann"}`, 404, "campaign_not_found", nil},
		{"preview contact", "POST", "/v1/campaigns/hello/preview", `{"step": "one", "contact_id": "a\u0000"}`, 404, "contact_not_found", nil},
		{"test step", "POST", "/v1/campaigns/hello/test", `{"step": "\u0000", "contact_id": "ann", "to": "qa@vendor.example"}`, 422, "unknown_step", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := wantError(t, h.do(c.method, c.path, h.key[apikey.Admin], c.body), c.status, c.code)
			if c.items != nil {
				wantItems(t, itemErrors(t, e), c.items...)
			}
			h.unchanged(t, before)
		})
	}
}

// webhook posts a body signed as the harness's webhook secret (none) signs it.
func (h *harness) webhook(path, body string) response {
	h.t.Helper()
	mac := hmac.New(sha256.New, nil)
	mac.Write([]byte(body))
	req := h.request("POST", path, body)
	req.Header.Set("X-Tend-Signature", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	return h.send(req)
}

// TestWebhooksCleanOutsideText: bounce reasons and reply subjects are
// written by outsiders; one with a NUL is recorded cleaned, not refused (the
// provider would send it again forever).
func TestWebhooksCleanOutsideText(t *testing.T) {
	h := newHarness(t)
	msgID := h.sentMessage()
	ref := fmt.Sprintf("<tend.%d@tend.test>", msgID)
	r := h.webhook("/v1/webhooks/bounce", `{"bounces": [
		{"type": "soft", "email": "ann@acme.example", "message_id": "`+ref+`", "reason": "452 mailbox\u0000 full", "id": "ev\u00001"},
		{"type": "hard", "email": "bob@acme.example", "reason": "550 no\u0000 such user"}]}`)
	wantStatus(t, r, http.StatusOK)
	if n := h.count(`SELECT count(*) FROM engagement_event WHERE kind = 'bounce' AND metadata->>'reason' = '452 mailbox full' AND external_id = 'ev1'`); n != 1 {
		t.Fatalf("%d bounces recorded with the reason cleaned, want 1", n)
	}
	if n := h.count(`SELECT count(*) FROM suppression WHERE email = 'bob@acme.example' AND reason = 'hard bounce: 550 no such user'`); n != 1 {
		t.Fatalf("%d suppressions with the reason cleaned, want 1", n)
	}
	r = h.webhook("/v1/webhooks/reply", `{"from": "Ann <ann@acme.example>", "to": ["cara@vendor.example"], "subject": "Re: hi\u0000 there",
		"text": "ok\u0000", "in_reply_to": "`+ref+`", "message_id": "<r1\u0000@acme.example>"}`)
	wantStatus(t, r, http.StatusOK)
	if n := h.count(`SELECT count(*) FROM engagement_event WHERE kind = 'reply' AND metadata->>'subject' = 'Re: hi there' AND external_id = '<r1@acme.example>'`); n != 1 {
		t.Fatalf("%d replies recorded with the subject cleaned, want 1: %s", n, r.Raw)
	}
}

// TestJSONObjectsTheDatabaseRefuses sends traits and properties that are
// valid JSON to Go but not to PostgreSQL's jsonb (or to the profile, which
// reads numbers as float64).
func TestJSONObjectsTheDatabaseRefuses(t *testing.T) {
	h := newHarness(t)
	h.must(http.StatusOK, "POST", "/v1/accounts", map[string]any{"id": "acme"})
	before := h.fingerprint()
	for _, bad := range []string{
		`{"k": "\u0000"}`,
		`{"k\u0000": 1}`,
		`{"k": ["a", {"b": "x\u0000y"}]}`,
		"{\"k\": \"\xff\"}",
		"{\"k\xc3\": 1}",
		`{"k": "\ud800"}`,
		`{"k": "\udc00\ud800"}`,
		`{"k": 1e400}`,
		`{"k": 1e-20000}`,
		`{"k": 1e99999999999999999999}`,
		`{"k": 1` + strings.Repeat("0", 400) + `}`,
	} {
		t.Run(bad, func(t *testing.T) {
			for _, c := range []struct{ path, body, field string }{
				{"/v1/accounts", `{"id": "a1", "traits": ` + bad + `}`, "traits"},
				{"/v1/contacts", `{"id": "c1", "account_id": "acme", "traits": ` + bad + `}`, "traits"},
				{"/v1/events", `{"events": [{"account_id": "acme", "name": "x", "properties": ` + bad + `}]}`, "properties"},
			} {
				e := wantError(t, h.do("POST", c.path, h.key[apikey.Ingest], c.body), http.StatusUnprocessableEntity, "invalid_batch")
				wantItems(t, itemErrors(t, e), itemWant{0, c.field})
			}
			h.unchanged(t, before)
		})
	}
	// What jsonb does store is kept: an escaped backslash before u0000, a
	// surrogate pair, text that is not ASCII, small and large numbers.
	h.must(http.StatusOK, "POST", "/v1/accounts", `{"id": "a1", "traits": {"k": "\\u0000", "pair": "\ud83d\ude00", "café": "é", "n": 1e300, "m": -2.5e-300}}`)
	tr := obj(t, h.getAccount("a1"), "traits")
	if tr["k"] != `\u0000` || tr["pair"] != "😀" || tr["café"] != "é" || tr["n"] != 1e300 {
		t.Fatalf("traits read back as %v", tr)
	}
}

// TestOutOfRange sends numbers and times out of PostgreSQL's range.
func TestOutOfRange(t *testing.T) {
	h := newHarness(t)
	h.must(http.StatusOK, "POST", "/v1/accounts", map[string]any{"id": "acme"})
	before := h.fingerprint()
	cases := []struct {
		name, path, body string
		item             itemWant
	}{
		{"seats over int32", "/v1/accounts", `{"id": "a4", "seats": 3000000000}`, itemWant{0, "seats"}},
		{"mrr whose sum overflows", "/v1/accounts", `{"id": "a4", "mrr": 1e308}`, itemWant{0, "mrr"}},
		{"active users over int32", "/v1/metrics", `{"metrics": [{"account_id": "acme", "values": {"active_users": 1e300}}]}`, itemWant{0, "values.active_users"}},
		{"open tickets over int32", "/v1/metrics", `{"metrics": [{"account_id": "acme", "values": {"open_tickets": 3000000000}}]}`, itemWant{0, "values.open_tickets"}},
		{"signup in year 0", "/v1/accounts", `{"id": "a4", "signup_at": "0000-01-01T00:00:00Z"}`, itemWant{0, "signup_at"}},
		{"signup in year 0 in UTC", "/v1/accounts", `{"id": "a4", "signup_at": "0001-01-01T00:30:00+01:00"}`, itemWant{0, "signup_at"}},
		{"event in year 0", "/v1/events", `{"events": [{"account_id": "acme", "name": "login", "timestamp": "0000-01-01T00:00:00Z"}]}`, itemWant{0, "timestamp"}},
		{"metric in year 0", "/v1/metrics", `{"metrics": [{"account_id": "acme", "at": "0000-06-01T00:00:00Z", "values": {"nps": 9}}]}`, itemWant{0, "at"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := wantError(t, h.do("POST", c.path, h.key[apikey.Ingest], c.body), http.StatusUnprocessableEntity, "invalid_batch")
			wantItems(t, itemErrors(t, e), c.item)
			h.unchanged(t, before)
		})
	}
	// The edges are in range, and what reads them works.
	h.ingest(http.StatusOK, "/v1/accounts", `{"accounts": [{"id": "a5", "seats": 2147483647, "signup_at": "0001-01-01T00:00:00Z", "mrr": 1e15}, {"id": "a6", "mrr": 1e15}]}`)
	h.ingest(http.StatusAccepted, "/v1/metrics", `{"metrics": [{"account_id": "a5", "values": {"active_users": 2147483647, "open_tickets": 2147483647}}]}`)
	wantStatus(t, h.do("GET", "/v1/health/summary", h.key[apikey.Marketing], nil), http.StatusOK)
	wantStatus(t, h.do("GET", "/v1/accounts/a5/health", h.key[apikey.Marketing], nil), http.StatusOK)
	h.ingest(http.StatusAccepted, "/v1/events", `{"events": [{"account_id": "a5", "name": "login", "timestamp": "0001-01-01T00:00:00Z"}]}`)
	if a := h.getAccount("a5"); a["seats"] != 2147483647.0 || !timeOf(t, a, "signup_at").Equal(time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("a5 = %v", a)
	}
}

// TestTrackingCleansHitText: a user agent cut mid-character, or an
// X-Forwarded-For that is not UTF-8, still gets its pixel and redirect, and
// the hit is recorded with clean text, as are the good hits written with it.
func TestTrackingCleansHitText(t *testing.T) {
	h := newHarness(t, trustLoopback)
	msgID := h.sentMessage()
	signer := token.NewSigner([]byte("harness-secret-0123456789"))
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path, ua, xff string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", h.srv.URL+path, nil)
		req.Header.Set("User-Agent", ua)
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		res, err := noRedirect.Do(req)
		if err != nil {
			t.Error(err)
			return &http.Response{}
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res
	}
	cut := strings.Repeat("x", 299) + "é" // the 300-byte cut falls inside é
	open, click := signer.Open(msgID), signer.Click(msgID, "https://docs.example.com/")

	// Bad and good hits at once, so that some share a batch.
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			ua, xff := "Mozilla/5.0 (good)", "203.0.113.7"
			if i%2 == 0 {
				ua, xff = cut, "\xff"
			}
			if i%3 == 0 {
				ua = "bad\xffagent"
			}
			if i%4 < 2 {
				if res := get("/t/o/"+open, ua, xff); res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "image/gif" {
					t.Errorf("pixel with UA %q, X-Forwarded-For %q: %d", ua, xff, res.StatusCode)
				}
				return
			}
			if res := get("/t/c/"+click, ua, xff); res.StatusCode != http.StatusFound || res.Header.Get("Location") != "https://docs.example.com/" {
				t.Errorf("click with UA %q, X-Forwarded-For %q: %d to %q", ua, xff, res.StatusCode, res.Header.Get("Location"))
			}
		})
	}
	wg.Wait()
	if n := h.count(`SELECT count(*) FROM engagement_event WHERE message_id = $1`, msgID); n != 12 {
		t.Fatalf("%d hits recorded, want 12", n)
	}
	if n := h.count(`SELECT count(*) FROM engagement_event WHERE metadata->>'user_agent' = $1`, strings.Repeat("x", 299)); n != 4 {
		t.Fatalf("%d hits with the user agent cut before é, want 4", n)
	}
	if n := h.count(`SELECT count(*) FROM engagement_event WHERE metadata->>'ip' = '203.0.113.7'`); n != 6 {
		t.Fatalf("%d hits with the forwarded address, want 6", n)
	}
}

// trustLoopback makes the harness believe X-Forwarded-For from loopback,
// where its requests come from (as tend does by default).
func trustLoopback(o *httpapi.Options) {
	_, n, _ := net.ParseCIDR("127.0.0.0/8")
	o.TrustedProxies = []*net.IPNet{n}
}

// TestForwardedForOnlyFromTrustedProxies: a hit records the address a
// trusted proxy forwards (the last one not a proxy's); from anyone else the
// header is ignored and the peer's address recorded.
func TestForwardedForOnlyFromTrustedProxies(t *testing.T) {
	for _, c := range []struct {
		name string
		opts []harnessOpt
		xff  string
		want string
	}{
		{"no trusted proxy", nil, "203.0.113.7", "127.0.0.1"},
		{"loopback trusted", []harnessOpt{trustLoopback}, "203.0.113.7", "203.0.113.7"},
		{"a chain through proxies", []harnessOpt{trustLoopback}, "198.51.100.9, 203.0.113.7, 127.0.0.5", "203.0.113.7"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, c.opts...)
			msgID := h.sentMessage()
			open := token.NewSigner([]byte("harness-secret-0123456789")).Open(msgID)
			req, _ := http.NewRequest("GET", h.srv.URL+"/t/o/"+open, nil)
			req.Header.Set("X-Forwarded-For", c.xff)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				t.Fatalf("pixel: %d", res.StatusCode)
			}
			var ip string
			if err := h.db.Get(&ip, `SELECT metadata->>'ip' FROM engagement_event WHERE message_id = $1`, msgID); err != nil {
				t.Fatal(err)
			}
			if ip != c.want {
				t.Fatalf("X-Forwarded-For %q recorded as %q, want %q", c.xff, ip, c.want)
			}
		})
	}
}

// TestSegmentBadItems: items PostgreSQL would refuse are reported as
// rejected, as Segment reports invalid items, and the good ones kept; never
// a 500.
func TestSegmentBadItems(t *testing.T) {
	h := newHarness(t)
	ingest := h.key[apikey.Ingest]
	h.ingest(http.StatusOK, "/v1/accounts", map[string]any{"id": "acme"})

	segmentReply(t, h.segment("/batch", ingest, `{"batch": [{"type": "group", "groupId": "seg-new"},
		{"type": "track", "context": {"groupId": "seg-new"}, "userId": "u", "event": "e", "timestamp": "0000-01-01T00:00:00Z"}]}`),
		1, itemWant{1, "timestamp"})
	if n := h.count(`SELECT count(*) FROM usage_event`); n != 0 {
		t.Fatalf("the rejected event was stored")
	}
	h.getAccount("seg-new") // the good item is kept

	before := h.fingerprint()
	for _, c := range []struct {
		path, body string
		item       itemWant
	}{
		{"/group", `{"groupId": "g\u0000"}`, itemWant{0, "id"}},
		{"/group", `{"groupId": "g1", "userId": "u\u0000"}`, itemWant{0, "userId"}},
		{"/group", `{"groupId": "g1", "traits": {"plan": "p\u0000"}}`, itemWant{0, "plan"}},
		{"/group", `{"groupId": "g1", "traits": {"industry": "i\u0000"}}`, itemWant{0, "traits"}},
		{"/group", `{"groupId": "g1", "traits": {"seats": 3e9}}`, itemWant{0, "seats"}},
		{"/group", `{"groupId": "g1", "traits": {"created_at": "0000-01-01T00:00:00Z"}}`, itemWant{0, "signup_at"}},
		{"/identify", `{"userId": "u\u0000", "context": {"groupId": "acme"}}`, itemWant{0, "id"}},
		{"/identify", `{"userId": "u1", "context": {"groupId": "acme", "locale": "fr\u0000"}}`, itemWant{0, "locale"}},
		{"/track", `{"userId": "u\u0000", "context": {"groupId": "acme"}, "event": "e"}`, itemWant{0, "contact_id"}},
		{"/track", `{"userId": "u1", "context": {"groupId": "acme"}, "event": "e\u0000"}`, itemWant{0, "name"}},
		{"/track", `{"userId": "u1", "context": {"groupId": "acme"}, "event": "e", "messageId": "m\u0000"}`, itemWant{0, "message_id"}},
		{"/track", `{"userId": "u1", "context": {"groupId": "acme"}, "event": "e", "properties": {"p": "\u0000"}}`, itemWant{0, "properties"}},
	} {
		t.Run(c.path+" "+c.body, func(t *testing.T) {
			segmentReply(t, h.segment(c.path, ingest, c.body), 0, c.item)
			h.unchanged(t, before, "audit_log") // a 200, audited
		})
	}
}

// TestBroadcastSendAtRange: a send_at PostgreSQL cannot store is refused;
// the earliest it can is accepted, and due broadcasts still run.
func TestBroadcastSendAtRange(t *testing.T) {
	h := newHarness(t)
	h.campaignSetup()
	before := h.fingerprint()
	def := func(name, sendAt string) string {
		return `{"name": "` + name + `", "kind": "broadcast", "send_at": "` + sendAt + `", "variants": [{"segment": "everyone", "template": "hello/one"}]}`
	}
	for _, at := range []string{"0000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-02:00"} {
		e := wantError(t, h.do("POST", "/v1/campaigns", h.key[apikey.Product], def("b0", at)), http.StatusUnprocessableEntity, "invalid_campaign")
		if !strings.Contains(fmt.Sprint(e["problems"]), "send_at") {
			t.Fatalf("send_at %s: the problems do not name send_at: %v", at, e["problems"])
		}
		h.unchanged(t, before)
	}
	h.must(http.StatusCreated, "POST", "/v1/campaigns", def("b1", "0001-01-01T00:00:00Z"))
	h.must(http.StatusOK, "POST", "/v1/campaigns/b1/activate", nil)
	enroller := campaign.NewEnroller(h.db.DB, h.clock, slog.New(slog.NewTextHandler(io.Discard, nil)), time.UTC)
	if _, err := enroller.RunDueBroadcasts(context.Background()); err != nil {
		t.Fatalf("due broadcasts: %v", err)
	}
}

// TestHealthModelHysteresisOverflow: a hysteresis so large that twice it
// overflows is refused, not taken for a small one.
func TestHealthModelHysteresisOverflow(t *testing.T) {
	h := newHarness(t)
	m := health.Default()
	for _, hy := range []int{1 << 62, 1<<63 - 1, 51} {
		m.Bands.Hysteresis = hy
		e := wantError(t, h.do("PUT", "/v1/health/model", h.key[apikey.Admin], m), http.StatusUnprocessableEntity, "invalid_model")
		if !strings.Contains(fmt.Sprint(e["problems"]), "bands.hysteresis") {
			t.Fatalf("hysteresis %d: problems %v", hy, e["problems"])
		}
	}
	if n := h.count(`SELECT count(*) FROM health_model`); n != 0 {
		t.Fatalf("refused models stored %d rows", n)
	}
}
