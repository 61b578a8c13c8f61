package segment

import (
	"testing"
	"time"

	"github.com/tendhq/tend/internal/clock"
)

func TestPredicateTimeDeps(t *testing.T) {
	clk := clock.NewManual(time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC))
	none, signup, login, always := TimeDeps{}, TimeDeps{SignupDays: true}, TimeDeps{LoginDays: true}, TimeDeps{Always: true}
	cases := []struct {
		src  string
		want TimeDeps
	}{
		{`plan == "pro" && mrr >= 1000`, none},
		{`logins_7d >= 3 && features["reports"] == 0`, none},
		{`traits.employees > 1000`, none},
		{`signup_at > date("2026-01-01")`, none},
		{`health_score < 60`, none},
		{`days_since_signup >= 12 && days_since_signup <= 14`, signup},
		{`days_since(signup_at) > 3`, signup},
		{`days_since_last_login >= 14`, login},
		{`mrr > 0 && days_since(last_login_at) >= 60`, login},
		{`days_since_signup > 1 || days_since(last_login_at) > 2`, TimeDeps{SignupDays: true, LoginDays: true}},
		{`signup_at < now()`, always},
		{`now().Hour() > 12`, always},
		{`days_since(date("2026-01-01")) > 3`, always},
		{`days_since(signup_at + duration("12h")) > 3`, always},
		{`days_since(now()) == 0`, always},
		{`let t = last_login_at; days_since(t) > 3`, always},
		{`len(filter(map([1, 2], days_since(signup_at) + #), # > 3)) > 0`, signup},
		{`len(filter(map([1, 2], now().Day() + #), # > 3)) > 0`, always},
		{`any([signup_at], days_since(#) > 3)`, always},
	}
	for _, c := range cases {
		p, err := Compile(c.src, clk)
		if err != nil {
			t.Fatalf("%s: %v", c.src, err)
		}
		if p.Time != c.want {
			t.Errorf("%s: time deps %+v, want %+v", c.src, p.Time, c.want)
		}
	}
}
