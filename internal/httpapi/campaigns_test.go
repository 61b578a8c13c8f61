package httpapi_test

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/token"
)

const emailSource = `{{define "subject"}}Hello {{.Contact.FirstName}}{{end}}{{define "body"}}<p>Hi</p>{{end}}`

func (h *harness) campaignSetup() {
	h.t.Helper()
	h.must(http.StatusCreated, "POST", "/v1/segments", map[string]any{"name": "everyone", "predicate": `seats >= 0`})
	h.must(http.StatusOK, "PUT", "/v1/templates/hello/one", map[string]any{"kind": "email", "source": emailSource})
	h.must(http.StatusCreated, "POST", "/v1/campaigns", map[string]any{"name": "hello", "kind": "drip", "segment": "everyone", "topic": "product",
		"steps": []any{map[string]any{"id": "one", "wait": "0h", "channel": "email", "template": "hello/one"}}})
}

func TestCampaignAPIValidation(t *testing.T) {
	h := newHarness(t)
	h.campaignSetup()
	admin := h.key["admin"]
	// Every problem is named by its field, and nothing is stored.
	e := wantError(t, h.do("POST", "/v1/campaigns", admin, map[string]any{"name": "bad", "kind": "drip", "segment": "nope",
		"goal": "logins_7d", "steps": []any{map[string]any{"id": "a", "wait": "soon", "channel": "sms", "template": "missing/t"}}}),
		http.StatusUnprocessableEntity, "invalid_campaign")
	fields := map[string]bool{}
	for _, p := range e["problems"].([]any) {
		fields[p.(map[string]any)["field"].(string)] = true
	}
	for _, f := range []string{"bad: segment", "bad: goal", "bad: steps[0].wait", "bad: steps[0].channel", "bad: steps[0].template"} {
		if !fields[f] {
			t.Errorf("no problem named %q in %v", f, fields)
		}
	}
	wantError(t, h.do("POST", "/v1/campaigns", admin, `{"name": "x", "kind": "drip", "stepz": []}`), http.StatusBadRequest, "invalid_json")
	wantError(t, h.do("PUT", "/v1/templates/hello/two", admin, map[string]any{"kind": "email", "source": `{{define "subject"}}Hi {{.Contact.Nmae}}{{end}}{{define "body"}}x{{end}}`}),
		http.StatusUnprocessableEntity, "invalid_template")
	wantError(t, h.do("PUT", "/v1/templates/hello/two", admin, map[string]any{"kind": "email", "source": `{{define "body"}}no subject{{end}}`}),
		http.StatusUnprocessableEntity, "invalid_template")
	wantError(t, h.do("PUT", "/v1/templates/hello/two", admin, map[string]any{"kind": "fax", "source": emailSource}),
		http.StatusUnprocessableEntity, "invalid_template")
	wantError(t, h.do("GET", "/v1/templates/hello/two", admin, nil), http.StatusNotFound, "template_not_found")
	// Layouts: stored under layouts/NAME, refused unless they output the
	// unsubscribe link (and the body and postal address).
	layout := `<html><body>{{.Body}}{{if .SignAsCSM}}<p>{{.CSM.Name}}</p>{{end}}<a href="{{.UnsubscribeURL}}">Unsubscribe</a> {{.PostalAddress}}</body></html>`
	h.must(http.StatusOK, "PUT", "/v1/templates/layouts/default", map[string]any{"kind": "layout", "source": layout})
	if got := h.must(http.StatusOK, "GET", "/v1/templates/layouts/default", nil); got.Body["kind"] != "layout" || got.Body["source"] != layout {
		t.Errorf("GET the layout: %v", got)
	}
	for _, bad := range []string{
		`<html><body>{{.Body}} {{.PostalAddress}}</body></html>`,                                              // no unsubscribe link
		`<html><body>{{.Body}}<a href="{{.UnsubscribeURL}}">Unsubscribe</a> {{.PostalAddress}}</body></html>`, // unsigned CSM mail
	} {
		wantError(t, h.do("PUT", "/v1/templates/layouts/default", admin, map[string]any{"kind": "layout", "source": bad}),
			http.StatusUnprocessableEntity, "invalid_template")
	}
	wantError(t, h.do("PUT", "/v1/templates/brand", admin, map[string]any{"kind": "layout", "source": layout}),
		http.StatusUnprocessableEntity, "invalid_template")
	if got := h.must(http.StatusOK, "GET", "/v1/templates/layouts/default", nil); got.Body["source"] != layout {
		t.Errorf("a refused layout replaced the stored one: %v", got)
	}
	if n := h.count(`SELECT count(*) FROM campaign`); n != 1 {
		t.Fatalf("%d campaigns stored, want 1", n)
	}
	// Lifecycle: a draft cannot pause; activate is idempotent; archived is final.
	r := h.must(http.StatusOK, "GET", "/v1/campaigns/hello", nil)
	if r.Body["status"] != "draft" || r.Body["version"] != 1.0 {
		t.Fatalf("get = %s", r.Raw)
	}
	wantError(t, h.do("POST", "/v1/campaigns/hello/pause", admin, nil), http.StatusConflict, "invalid_transition")
	h.must(http.StatusOK, "POST", "/v1/campaigns/hello/activate", nil)
	h.must(http.StatusOK, "POST", "/v1/campaigns/hello/activate", nil)
	h.must(http.StatusOK, "POST", "/v1/campaigns/hello/archive", nil)
	wantError(t, h.do("POST", "/v1/campaigns/hello/activate", admin, nil), http.StatusConflict, "invalid_transition")
	wantError(t, h.do("GET", "/v1/campaigns/nope/stats", admin, nil), http.StatusNotFound, "campaign_not_found")
	// A product key may write broadcasts, not drips.
	wantError(t, h.do("POST", "/v1/campaigns", h.key["product"], map[string]any{"name": "d2", "kind": "drip"}), http.StatusForbidden, "forbidden")
	wantError(t, h.do("GET", "/v1/messages?status=lost", admin, nil), http.StatusUnprocessableEntity, "invalid_parameter")
}

// sentMessage makes a sent message of the "hello" campaign to ann at acme.
func (h *harness) sentMessage() int64 {
	h.t.Helper()
	h.campaignSetup()
	h.must(http.StatusOK, "POST", "/v1/accounts", map[string]any{"id": "acme"})
	h.must(http.StatusOK, "POST", "/v1/contacts", map[string]any{"id": "ann", "account_id": "acme", "email": "ann@acme.example"})
	var msgID int64
	err := h.db.Get(&msgID, `
		WITH en AS (
			INSERT INTO enrollment (campaign_id, version, account_id, entry_number, contacts, status, step, anchor_at, entered_at)
			SELECT c.id, 1, a.id, 1, ARRAY[ct.id], 'active', 0, now(), now()
			FROM campaign c, account a, contact ct WHERE c.name = 'hello' AND a.external_id = 'acme' AND ct.external_id = 'ann'
			RETURNING id, campaign_id, contacts[1] AS contact_id)
		INSERT INTO message (enrollment_id, campaign_id, version, step_id, contact_id, channel, status, due_at, sent_at, created_at, updated_at)
		SELECT id, campaign_id, 1, 'one', contact_id, 'email', 'sent', $1, $1, $1, $1 FROM en RETURNING id`, h.clock.Now().Add(-time.Hour))
	if err != nil {
		h.t.Fatal(err)
	}
	return msgID
}

func TestUnsubscribe(t *testing.T) {
	h := newHarness(t)
	msgID := h.sentMessage()
	signer := token.NewSigner([]byte("harness-secret-0123456789"))
	tok := signer.Unsubscribe(msgID)

	page := h.do("GET", "/u/"+tok, "", nil)
	if page.Status != 200 || !strings.Contains(string(page.Raw), "ann@acme.example") || !strings.Contains(string(page.Raw), "product") {
		t.Fatalf("page = %d %s", page.Status, page.Raw)
	}
	// Forged, altered and other-kind tokens are not found, and record nothing.
	for _, bad := range []string{"forged", tok[:len(tok)-2] + "xx", signer.Open(msgID)} {
		if r := h.do("GET", "/u/"+bad, "", nil); r.Status != http.StatusNotFound {
			t.Errorf("token %q: %d", bad, r.Status)
		}
		if r := h.post("/u/"+bad, "List-Unsubscribe=One-Click"); r.Status != http.StatusNotFound {
			t.Errorf("one-click with token %q: %d", bad, r.Status)
		}
	}
	// RFC 8058 one-click: a form POST with no key unsubscribes from the topic.
	r := h.post("/u/"+tok, "List-Unsubscribe=One-Click")
	if r.Status != 200 {
		t.Fatalf("one-click = %d %s", r.Status, r.Raw)
	}
	r = h.post("/u/"+tok, "List-Unsubscribe=One-Click") // a repeat counts once
	if n := h.count(`SELECT count(*) FROM contact_unsubscribe WHERE topic = 'product'`); n != 1 {
		t.Fatalf("%d topic unsubscribes", n)
	}
	if n := h.count(`SELECT count(*) FROM engagement_event WHERE kind = 'unsubscribe'`); n != 1 {
		t.Fatalf("%d unsubscribe events, want 1", n)
	}
	// The page's other button: everything.
	r = h.post("/u/"+tok, "scope=all")
	if r.Status != 200 || !strings.Contains(string(r.Raw), "any of these emails") {
		t.Fatalf("all = %d %s", r.Status, r.Raw)
	}
	if n := h.count(`SELECT count(*) FROM contact_unsubscribe WHERE topic = '*'`); n != 1 {
		t.Fatalf("%d unsubscribes from everything", n)
	}
	if r := h.post("/u/"+tok, "scope=some"); r.Status != http.StatusUnprocessableEntity {
		t.Fatalf("bad scope = %d", r.Status)
	}
}

// post sends a form with no key, as mail clients do for one-click.
func (h *harness) post(path, form string) response {
	h.t.Helper()
	vals, _ := url.ParseQuery(form)
	req, _ := http.NewRequest("POST", h.srv.URL+path, strings.NewReader(vals.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return h.send(req)
}

func TestTrackingLinks(t *testing.T) {
	h := newHarness(t)
	msgID := h.sentMessage() // sent an hour ago
	signer := token.NewSigner([]byte("harness-secret-0123456789"))
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path, ua string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", h.srv.URL+path, nil)
		req.Header.Set("User-Agent", ua)
		res, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res
	}
	const browser = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15"
	version := func() int { return h.count(`SELECT max(change_version) FROM account`) }
	v0 := version()
	open := signer.Open(msgID)
	if res := get("/t/o/"+open, browser); res.StatusCode != 200 || res.Header.Get("Content-Type") != "image/gif" {
		t.Fatalf("pixel = %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	click := signer.Click(msgID, "https://docs.example.com/reports?x=1")
	res := get("/t/c/"+click, browser)
	if res.StatusCode != http.StatusFound || res.Header.Get("Location") != "https://docs.example.com/reports?x=1" {
		t.Fatalf("click = %d to %q", res.StatusCode, res.Header.Get("Location"))
	}
	if v := version(); v != v0+2 {
		t.Fatalf("a first open and a first click should each mark the account changed: version %d → %d", v0, v)
	}
	get("/t/c/"+click, browser) // a replay is recorded; it counts once in stats
	get("/t/o/"+open, browser)
	if v := version(); v != v0+2 {
		t.Fatalf("replays change nothing in the profile, so they must not mark the account changed: version %d → %d", v0, v)
	}
	if n := h.count(`SELECT count(*) FROM engagement_event WHERE human`); n != 4 {
		t.Fatalf("%d human events recorded, want every hit (4)", n)
	}
	// Forged, altered and wrong-kind tokens: 404, nothing recorded, no redirect.
	before := h.count(`SELECT count(*) FROM engagement_event`)
	for _, bad := range []string{"forged", click[:len(click)-3] + "abc", open[:5] + "x" + open[6:], signer.Unsubscribe(msgID)} {
		if r := get("/t/c/"+bad, browser); r.StatusCode != 404 || r.Header.Get("Location") != "" {
			t.Errorf("click %q: %d %q", bad, r.StatusCode, r.Header.Get("Location"))
		}
		if r := get("/t/o/"+bad, browser); r.StatusCode != 404 {
			t.Errorf("open %q: %d", bad, r.StatusCode)
		}
	}
	if h.count(`SELECT count(*) FROM engagement_event`) != before {
		t.Fatal("bad tokens recorded engagement")
	}
	// The server ends the tracker's connections (a restart, an operator's
	// pg_terminate_backend): the next hits are answered and recorded all the
	// same, on new ones.
	ended := h.count(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE '%WITH ORDINALITY AS x(message_id%' AND pid <> pg_backend_pid()`)
	if ended == 0 {
		t.Fatal("found no tracker connection to end")
	}
	for _, path := range []string{"/t/o/" + open, "/t/c/" + click} {
		if r := get(path, browser); r.StatusCode != http.StatusOK && r.StatusCode != http.StatusFound {
			t.Fatalf("%s after its connection ended: %d", path, r.StatusCode)
		}
	}
	if n := h.count(`SELECT count(*) FROM engagement_event WHERE human`); n != 6 {
		t.Fatalf("%d human events recorded, want 6 (two more after the connections ended)", n)
	}
	// A link scanner is recorded but not counted as human.
	get("/t/c/"+click, "Mozilla/5.0 (compatible; Barracuda Sentinel)")
	if n := h.count(`SELECT count(*) FROM engagement_event WHERE NOT human`); n != 1 {
		t.Fatalf("%d machine events, want 1", n)
	}
	stats := h.must(http.StatusOK, "GET", "/v1/campaigns/hello/stats", nil)
	totals := stats.Body["totals"].(map[string]any)
	if totals["opened"] != 1.0 || totals["clicked"] != 1.0 {
		t.Fatalf("stats count each message once: %v", totals)
	}
}
