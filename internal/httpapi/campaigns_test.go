package httpapi_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

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

func TestUnsubscribe(t *testing.T) {
	h := newHarness(t)
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
		SELECT id, campaign_id, 1, 'one', contact_id, 'email', 'sent', now(), now(), now(), now() FROM en RETURNING id`)
	if err != nil {
		t.Fatal(err)
	}
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
