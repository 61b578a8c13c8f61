package health

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tendhq/tend/internal/account"
	"github.com/tendhq/tend/internal/errs"
)

var now = time.Date(2026, 6, 15, 12, 0, 0, 0, time.UTC)

func healthy() *account.Profile {
	return &account.Profile{
		Seats: 10, ActiveUsers: 8, LicenseUtilization: 0.8, Logins30d: 60, DaysSinceLastLogin: 1,
		Features: map[string]int{"dashboards": 3, "reports": 2, "integrations": 1, "alerts": 5},
		NPS:      8, OpenTickets: 0,
	}
}

func component(r Result, name string) Component {
	for _, c := range r.Components {
		if c.Name == name {
			return c
		}
	}
	panic("no component " + name)
}

func TestContributionsAddUpToTheScore(t *testing.T) {
	m := Default()
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		p := &account.Profile{
			Seats: rng.IntN(50), Logins30d: rng.IntN(300), LicenseUtilization: rng.Float64() * 1.2,
			DaysSinceLastLogin: rng.IntN(60), NPS: rng.IntN(12) - 1, OpenTickets: rng.IntN(8),
			Features: map[string]int{"reports": rng.IntN(2), "alerts": rng.IntN(3)},
		}
		var msgs []Message
		for j := rng.IntN(6); j > 0; j-- {
			msgs = append(msgs, Message{SentAt: now.Add(-time.Duration(rng.IntN(700)) * time.Hour),
				Response: []string{"", "open", "click", "reply", "dismiss"}[rng.IntN(5)], InApp: rng.IntN(4) == 0})
		}
		r := m.Score(p, msgs, now, "")
		sum := 0
		for _, c := range r.Components {
			sum += c.Contribution
			if c.Value < 0 || c.Value > 1 {
				t.Fatalf("component %s value %v outside 0–1", c.Name, c.Value)
			}
		}
		if sum != r.Score || r.Score < 0 || r.Score > 100 {
			t.Fatalf("profile %+v: contributions add up to %d, score %d", p, sum, r.Score)
		}
	}
	if r := m.Score(healthy(), nil, now, ""); r.Score < m.Bands.HealthyFrom || r.Band != account.BandHealthy {
		t.Fatalf("a healthy profile scored %d (%s)", r.Score, r.Band)
	}
	// An account Tend knows nothing about yet (no login, no usage) is
	// neutral, not at risk: its usage may be moments away.
	signup := now.AddDate(-1, 0, 0)
	if r := m.Score(&account.Profile{SignupAt: signup, LastLoginAt: signup, DaysSinceLastLogin: 365, NPS: -1, Features: map[string]int{}}, nil, now, ""); r.Band != account.BandNeutral {
		t.Fatalf("an account with no data yet scored %d (%s)", r.Score, r.Band)
	}
	r := m.Score(&account.Profile{SignupAt: signup, LastLoginAt: signup.Add(time.Hour), DaysSinceLastLogin: 40, NPS: 2, OpenTickets: 5, Features: map[string]int{}}, nil, now, "")
	if r.Band != account.BandAtRisk {
		t.Fatalf("an unused, unhappy account scored %d (%s)", r.Score, r.Band)
	}
}

func TestRepliesCountMoreThanClicksMoreThanOpens(t *testing.T) {
	m := Default()
	sent := now.Add(-5 * 24 * time.Hour)
	value := func(resp string) float64 {
		return component(m.Score(healthy(), []Message{{SentAt: sent, Response: resp}}, now, ""), Engagement).Value
	}
	reply, click, open, ignored := value("reply"), value("click"), value("open"), value("")
	if !(reply > click && click > open && open > ignored) {
		t.Fatalf("reply %v, click %v, open %v, ignored %v: want strictly decreasing", reply, click, open, ignored)
	}
	none := component(m.Score(healthy(), nil, now, ""), Engagement).Value
	if none != m.Engagement.Neutral || !(open > none && ignored < none) {
		t.Fatalf("no messages %v; an open should raise and an ignored message lower it (open %v, ignored %v)", none, open, ignored)
	}
}

func TestIgnoredRunsAndDismissalsCountAgainst(t *testing.T) {
	m := Default()
	old := func(days int) time.Time { return now.Add(-time.Duration(days) * 24 * time.Hour) }
	one := component(m.Score(healthy(), []Message{{SentAt: old(5)}}, now, ""), Engagement)
	two := component(m.Score(healthy(), []Message{{SentAt: old(6)}, {SentAt: old(5)}}, now, ""), Engagement)
	if !(two.Value < one.Value) || two.Inputs["ignored_in_a_row"] != 2 {
		t.Fatalf("two ignored in a row %+v should score below one %+v", two, one)
	}
	// A run broken by a reply is no run.
	broken := component(m.Score(healthy(), []Message{{SentAt: old(7)}, {SentAt: old(6)}, {SentAt: old(5), Response: "reply"}}, now, ""), Engagement)
	if broken.Inputs["ignored_in_a_row"] != 0 {
		t.Fatalf("a reply should end the run: %+v", broken)
	}
	// Too recent to have been ignored: not counted yet.
	fresh := component(m.Score(healthy(), []Message{{SentAt: now.Add(-time.Hour)}}, now, ""), Engagement)
	if fresh.Value != m.Engagement.Neutral {
		t.Fatalf("a message sent an hour ago counted: %+v", fresh)
	}
	// A nudge never seen is not held against the account; a dismissed one is.
	unseen := component(m.Score(healthy(), []Message{{SentAt: old(5), InApp: true}}, now, ""), Engagement)
	dismissed := component(m.Score(healthy(), []Message{{SentAt: old(5), InApp: true, Response: "dismiss"}}, now, ""), Engagement)
	if unseen.Value != m.Engagement.Neutral || !(dismissed.Value < unseen.Value) {
		t.Fatalf("unseen nudge %v, dismissed nudge %v", unseen.Value, dismissed.Value)
	}
}

// At-risk outreach that goes unanswered must not by itself push an account
// further down: the at-risk check-ins it ignores leave its score alone, and
// a reply to one still counts.
func TestNoFeedbackSpiral(t *testing.T) {
	m := Default()
	p := &account.Profile{Seats: 10, Logins30d: 4, LicenseUtilization: 0.2, DaysSinceLastLogin: 12, NPS: 5, OpenTickets: 2, Features: map[string]int{"reports": 1}}
	before := m.Score(p, nil, now, account.BandAtRisk)
	var checkins []Message
	for d := 20; d >= 3; d -= 3 {
		checkins = append(checkins, Message{SentAt: now.Add(-time.Duration(d) * 24 * time.Hour), AtRisk: true})
	}
	after := m.Score(p, checkins, now, account.BandAtRisk)
	if after.Score != before.Score {
		t.Fatalf("%d ignored at-risk check-ins moved the score from %d to %d", len(checkins), before.Score, after.Score)
	}
	if got := component(after, Engagement).Inputs["unanswered_while_at_risk"]; got != len(checkins) {
		t.Fatalf("unanswered_while_at_risk = %v", got)
	}
	checkins[len(checkins)-1].Response = "reply"
	if replied := m.Score(p, checkins, now, account.BandAtRisk); replied.Score <= before.Score {
		t.Fatalf("a reply to an at-risk check-in should raise the score: %d → %d", before.Score, replied.Score)
	}
	// The same messages sent while the account was not at risk do count.
	for i := range checkins {
		checkins[i].AtRisk, checkins[i].Response = false, ""
	}
	if ignored := m.Score(p, checkins, now, account.BandNeutral); ignored.Score >= before.Score {
		t.Fatalf("ignored ordinary messages should lower the score: %d → %d", before.Score, ignored.Score)
	}
}

func TestBandsUseHysteresis(t *testing.T) {
	m := Default() // at risk below 40, healthy from 70, advocate from 85 with NPS >= 9, hysteresis 5
	band := ""
	if got := m.Band(39, 7, ""); got != account.BandAtRisk {
		t.Fatalf("a first score of 39 is %s, want at risk (no previous band, no hysteresis)", got)
	}
	for _, step := range []struct {
		score, nps int
		want       string
	}{
		{50, 7, account.BandNeutral},
		{39, 7, account.BandNeutral}, // under 40, but not by 5: stays
		{35, 7, account.BandNeutral},
		{34, 7, account.BandAtRisk},
		{42, 7, account.BandAtRisk}, // back over 40, but not by 5: stays
		{44, 7, account.BandAtRisk},
		{45, 7, account.BandNeutral},
		{37, 7, account.BandNeutral},
		{34, 7, account.BandAtRisk},
		{72, 7, account.BandHealthy},
		{67, 7, account.BandHealthy},
		{64, 7, account.BandNeutral},
		{87, 9, account.BandAdvocate},
		{82, 9, account.BandAdvocate},
		{82, 6, account.BandHealthy}, // no longer a promoter: not an advocate, whatever the score
		{89, 9, account.BandHealthy},
		{90, 9, account.BandAdvocate},
	} {
		band = m.Band(step.score, step.nps, band)
		if band != step.want {
			t.Fatalf("score %d (nps %d): band %s, want %s", step.score, step.nps, band, step.want)
		}
	}
}

func TestModelValidation(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("the default model is invalid: %v", err)
	}
	body, _ := json.Marshal(Default())
	if m, err := ParseModel(body); err != nil || m.Engagement.IgnoredAfter.Duration != 48*time.Hour {
		t.Fatalf("round trip: %+v, %v", m, err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Model)
		field  string
	}{
		{"negative weight", func(m *Model) { m.Weights.Usage = -1 }, "weights.usage"},
		{"all weights zero", func(m *Model) { m.Weights = Weights{} }, "weights"},
		{"bands out of order", func(m *Model) { m.Bands.HealthyFrom = 30 }, "bands"},
		{"hysteresis too wide", func(m *Model) { m.Bands.Hysteresis = 8 }, "bands.hysteresis"},
		{"no key features", func(m *Model) { m.KeyFeatures = nil }, "key_features"},
		{"duplicate feature", func(m *Model) { m.KeyFeatures = []string{"a", "a"} }, "key_features[1]"},
		{"bad feature name", func(m *Model) { m.KeyFeatures = []string{"has space"} }, "key_features[0]"},
		{"clicks above replies", func(m *Model) { m.Engagement.Click = 1 }, "engagement"},
		{"zero target", func(m *Model) { m.Usage.LoginsPerSeat30d = 0 }, "usage.logins_per_seat_30d"},
		{"stale before recent", func(m *Model) { m.Usage.StaleDays = 2 }, "usage.stale_days"},
		{"starting score", func(m *Model) { m.StartingScore = 101 }, "starting_score"},
		{"ignored after", func(m *Model) { m.Engagement.IgnoredAfter.Duration = -time.Hour }, "engagement.ignored_after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := Default()
			tc.change(&m)
			err := m.Validate()
			var e *errs.Error
			if !errors.As(err, &e) || e.Kind != errs.Invalid || e.Code != "invalid_model" {
				t.Fatalf("got %v, want invalid_model", err)
			}
			problems, _ := json.Marshal(e.Details["problems"])
			if !strings.Contains(string(problems), `"field":"`+tc.field+`"`) {
				t.Fatalf("problems %s do not name %s", problems, tc.field)
			}
		})
	}
	for _, body := range []string{`{"weights": {"usage": 1, "usge": 2}}`, `{"engagement": {"ignored_after": "two days"}}`, `[]`} {
		if _, err := ParseModel([]byte(body)); !errs.Is(err, errs.Invalid) {
			t.Fatalf("%s: got %v, want invalid", body, err)
		}
	}
}
