package segment

import (
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/clock"
	"github.com/tendhq/tend/internal/errs"
)

func sampleProfile(now time.Time) *account.Profile {
	return &account.Profile{
		Plan: "pro", Stage: "customer", Tier: "leveraged", Region: "emea", CSM: "dana@example.com",
		MRR: 1200, Seats: 10, ActiveUsers: 4, LicenseUtilization: 0.4,
		DaysSinceSignup: 20, DaysSinceLastLogin: 3, Logins7d: 2, Logins30d: 9,
		Features: map[string]int{"reports": 5}, Events: map[string]int{"export_csv": 2},
		HealthScore: 42, HealthChange30d: -12, NPS: 6, OpenTickets: 3,
		Emails30d: 4, Opens30d: 2, Clicks30d: 1, Replies30d: 1, NudgesDismissed30d: 2,
		Traits:   map[string]any{"industry": "retail", "employees": float64(120), "size": "big"},
		SignupAt: now.AddDate(0, 0, -20), LastLoginAt: now.AddDate(0, 0, -3),
	}
}

func TestPredicatesOverEveryField(t *testing.T) {
	now := time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)
	clk := clock.NewManual(now)
	p := sampleProfile(now)
	cases := []struct {
		src  string
		want bool
	}{
		{`plan == "pro" && stage == "customer" && tier == "leveraged" && region == "emea"`, true},
		{`csm == "dana@example.com"`, true},
		{`mrr > 1000.5 && mrr < 1300`, true},
		{`seats == 10 && active_users == 4`, true},
		{`license_utilization < 0.5`, true},
		{`days_since_signup <= 30 && days_since_last_login == 3`, true},
		{`logins_7d == 2 && logins_30d >= 9`, true},
		{`features["reports"] == 5 && features["missing"] == 0`, true},
		{`features.reports > 4`, true},
		{`events["export_csv"] == 2 && events["nope"] == 0`, true},
		{`health_score < 50 && health_change_30d < -10`, true},
		{`nps == 6 && open_tickets == 3`, true},
		{`emails_30d == 4 && opens_30d == 2 && clicks_30d == 1 && replies_30d == 1 && nudges_dismissed_30d == 2`, true},
		{`traits.industry == "retail"`, true},
		{`traits.employees > 100`, true},
		{`traits.missing == "x"`, false},
		{`traits.missing > 5`, false},  // nil compares false, not an error
		{`traits.missing <= 5`, false}, // in either direction
		{`days_since(signup_at) == 20`, true},
		{`days_since(last_login_at) == days_since_last_login`, true},
		{`signup_at < now()`, true},
		{`last_login_at > date("2026-06-01")`, true},
		{`health_score < 50 && logins_30d < 5 && plan in ["pro", "enterprise"]`, false},
		{"plan in [\"pro\", \"enterprise\"]\n  && seats > 5", true},
	}
	var m Matcher
	for _, c := range cases {
		pred, err := Compile(c.src, clk)
		if err != nil {
			t.Errorf("%s: compile: %v", c.src, err)
			continue
		}
		got, err := m.Match(pred, p)
		if err != nil {
			t.Errorf("%s: run: %v", c.src, err)
			continue
		}
		if got != c.want {
			t.Errorf("%s = %v, want %v", c.src, got, c.want)
		}
	}
}

func TestNowFollowsTheInjectedClock(t *testing.T) {
	now := time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)
	clk := clock.NewManual(now)
	pred, err := Compile(`days_since(signup_at) >= 30`, clk)
	if err != nil {
		t.Fatal(err)
	}
	var m Matcher
	p := sampleProfile(now)
	if ok, _ := m.Match(pred, p); ok {
		t.Fatal("20 days after signup must not match >= 30")
	}
	clk.Advance(10 * 24 * time.Hour)
	if ok, _ := m.Match(pred, p); !ok {
		t.Fatal("after the clock moved 10 days it must match")
	}
}

func TestRuntimeErrorForWrongTraitType(t *testing.T) {
	clk := clock.NewManual(time.Now())
	pred, err := Compile(`traits.size > 5`, clk)
	if err != nil {
		t.Fatal(err)
	}
	var m Matcher
	ok, err := m.Match(pred, sampleProfile(clk.Now()))
	if err == nil || ok {
		t.Fatalf("a string trait compared with a number must be a runtime error; got %v, %v", ok, err)
	}
}

func TestCompileErrorsHaveLineAndColumn(t *testing.T) {
	clk := clock.NewManual(time.Now())
	cases := []struct {
		src        string
		line, col  int
		mentioning string
	}{
		{`plan == `, 1, 0, ""},
		{`plans == "pro"`, 1, 1, "plans"},
		{"plan == \"pro\" &&\n  seats > \"ten\"", 2, 9, ""},
		{`mrr + 1`, 1, 0, "bool"},
		{``, 1, 1, "empty"},
		{`now() > 1`, 1, 0, ""},
		{`logins_7 > 1`, 1, 1, ""},     // an unknown name in an ordering comparison
		{`traits.x > nope`, 1, 12, ""}, // and beside a trait
	}
	for _, c := range cases {
		_, err := Compile(c.src, clk)
		var e *errs.Error
		if err == nil {
			t.Errorf("%q: want an error", c.src)
			continue
		}
		e = err.(*errs.Error)
		if e.Kind != errs.Invalid || e.Code != "invalid_predicate" {
			t.Errorf("%q: kind/code %v/%s", c.src, e.Kind, e.Code)
		}
		line, col := e.Details["line"].(int), e.Details["column"].(int)
		if line != c.line || (c.col != 0 && col != c.col) || col < 1 {
			t.Errorf("%q: at %d:%d, want %d:%d (%s)", c.src, line, col, c.line, c.col, e.Message)
		}
	}
	long := make([]byte, MaxPredicateLen+1)
	for i := range long {
		long[i] = ' '
	}
	copy(long, "plan == \"pro\"")
	if _, err := Compile(string(long), clk); err == nil {
		t.Error("an over-long predicate must be refused")
	}
	deep := "seats > 0"
	for i := 0; i < 300; i++ {
		deep += " && seats > 0"
	}
	if _, err := Compile(deep, clk); err == nil {
		t.Error("a predicate over the node limit must be refused")
	}
}
