package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/tendhq/tend/internal/apikey"
	"github.com/tendhq/tend/internal/health"
)

func TestHealthModelAPI(t *testing.T) {
	h := newHarness(t)
	got := h.must(http.StatusOK, "GET", "/v1/health/model", nil)
	if num(t, got.Body, "version") != 0 {
		t.Fatalf("a fresh install has model version 0: %s", got.Raw)
	}
	var def struct{ Model health.Model }
	if err := json.Unmarshal(got.Raw, &def); err != nil || def.Model.Weights != health.Default().Weights {
		t.Fatalf("GET before any PUT should show the default model: %s (%v)", got.Raw, err)
	}

	// Bad models: a clear 422 listing every problem, nothing saved.
	bad := health.Default()
	bad.Weights.Usage = -3
	bad.Bands.HealthyFrom = 10
	e := wantError(t, h.do("PUT", "/v1/health/model", h.key[apikey.Admin], bad), http.StatusUnprocessableEntity, "invalid_model")
	problems, _ := json.Marshal(e["problems"])
	for _, field := range []string{"weights.usage", `"bands"`} {
		if !strings.Contains(string(problems), field) {
			t.Fatalf("problems %s do not mention %s", problems, field)
		}
	}
	wantError(t, h.do("PUT", "/v1/health/model", h.key[apikey.Admin], `{"weights": {"usage": 1}, "wieghts": {}}`), http.StatusBadRequest, "invalid_json")
	wantError(t, h.do("PUT", "/v1/health/model?dry_run=maybe", h.key[apikey.Admin], health.Default()), http.StatusBadRequest, "invalid_query")
	wantError(t, h.do("PUT", "/v1/health/model", h.key[apikey.Marketing], health.Default()), http.StatusForbidden, "forbidden")
	if n := h.count(`SELECT count(*) FROM health_model`); n != 0 {
		t.Fatalf("refused models stored %d rows", n)
	}

	// A dry run answers and changes nothing.
	h.must(http.StatusOK, "POST", "/v1/accounts", map[string]any{"id": "acme", "name": "Acme", "seats": 5})
	dry := h.must(http.StatusOK, "PUT", "/v1/health/model?dry_run=true", health.Default())
	if num(t, dry.Body, "accounts") != 1 {
		t.Fatalf("dry run: %s", dry.Raw)
	}
	if n := h.count(`SELECT count(*) FROM health_model`); n != 0 {
		t.Fatalf("a dry run stored the model")
	}

	// Saved: a new version, read back as saved, audited.
	m := health.Default()
	m.KeyFeatures = []string{"reports", "exports"}
	m.Weights.Engagement = 30
	put := h.must(http.StatusOK, "PUT", "/v1/health/model", m)
	if num(t, put.Body, "version") != 1 {
		t.Fatalf("first save: %s", put.Raw)
	}
	var back struct{ Model health.Model }
	json.Unmarshal(h.must(http.StatusOK, "GET", "/v1/health/model", nil).Raw, &back)
	if strings.Join(back.Model.KeyFeatures, ",") != "reports,exports" || back.Model.Weights.Engagement != 30 {
		t.Fatalf("read back %+v", back.Model)
	}
	if n := h.count(`SELECT count(*) FROM audit_log WHERE action = 'PUT /v1/health/model' AND target = 'health model version 1'`); n != 1 {
		t.Fatalf("audit rows for the save: %d", n)
	}
	// A new account starts at the model's starting score.
	m.StartingScore = 30
	h.must(http.StatusOK, "PUT", "/v1/health/model", m)
	acct := h.must(http.StatusOK, "GET", "/v1/accounts/acme", nil)
	if p := obj(t, acct.Body, "profile"); num(t, p, "health_score") != 30 || p["health_band"] != "at_risk" {
		t.Fatalf("an unscored account under starting score 30: %s", acct.Raw)
	}
}

func TestAccountHealthAndSummaryAPI(t *testing.T) {
	h := newHarness(t)
	wantError(t, h.do("GET", "/v1/accounts/nobody/health", h.key[apikey.CSM], nil), http.StatusNotFound, "account_not_found")
	h.must(http.StatusOK, "POST", "/v1/accounts", map[string]any{"id": "acme", "name": "Acme", "seats": 5, "mrr": 1200})
	// Never scored: explained as it would score now, contributions adding up.
	ex := h.do("GET", "/v1/accounts/acme/health", h.key[apikey.CSM], nil)
	wantStatus(t, ex, http.StatusOK)
	var body health.Explanation
	if err := json.Unmarshal(ex.Raw, &body); err != nil {
		t.Fatal(err)
	}
	sum := 0
	for _, c := range body.Components {
		sum += c.Contribution
	}
	if len(body.Components) != 5 || sum != body.Score || body.ComputedAt != nil {
		t.Fatalf("explanation of an unscored account: %s", ex.Raw)
	}
	s := h.do("GET", "/v1/health/summary", h.key[apikey.Marketing], nil)
	wantStatus(t, s, http.StatusOK)
	if num(t, s.Body, "accounts") != 1 || num(t, s.Body, "unscored") != 1 {
		t.Fatalf("summary: %s", s.Raw)
	}
	if b := obj(t, obj(t, s.Body, "bands"), "neutral"); num(t, b, "accounts") != 1 || num(t, b, "mrr") != 1200 {
		t.Fatalf("an unscored account counts in the starting band: %s", s.Raw)
	}
}
