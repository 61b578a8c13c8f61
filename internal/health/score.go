package health

import (
	"math"
	"sort"
	"time"

	"github.com/tendhq/tend/internal/account"
)

// The components of a score.
const (
	Usage      = "usage"
	Adoption   = "adoption"
	Support    = "support"
	Sentiment  = "sentiment"
	Engagement = "engagement"
)

// Component is one part of a score: its value (0–1), its weight, and its
// contribution in points. The contributions of a score add up to the score.
type Component struct {
	Name         string         `json:"name"`
	Value        float64        `json:"value"`
	Weight       float64        `json:"weight"`
	Contribution int            `json:"contribution"`
	Inputs       map[string]any `json:"inputs"`
}

// Result is a computed score.
type Result struct {
	Score      int         `json:"score"`
	Band       string      `json:"band"`
	Components []Component `json:"components"`
}

// Best responses to a message, as recorded by engagement.
const (
	respReply   = "reply"
	respClick   = "click"
	respOpen    = "open"
	respDismiss = "dismiss"
)

// Message is one of Tend's messages to the account in the last 30 days, with
// the best human response to it.
type Message struct {
	SentAt   time.Time
	InApp    bool
	Response string // reply, click, open, dismiss or "" (none)
	// AtRisk says the account was in the at-risk band when it was sent.
	AtRisk bool
}

// Score computes an account's score from its profile and its messages at
// now, given its previous band ("" if never scored).
func (m Model) Score(p *account.Profile, msgs []Message, now time.Time, prevBand string) Result {
	comps := []Component{
		m.usage(p), m.adoption(p), m.support(p), m.sentiment(p), m.engagement(msgs, now),
	}
	weights := map[string]float64{Usage: m.Weights.Usage, Adoption: m.Weights.Adoption, Support: m.Weights.Support,
		Sentiment: m.Weights.Sentiment, Engagement: m.Weights.Engagement}
	var total float64
	for i := range comps {
		comps[i].Weight = weights[comps[i].Name]
		comps[i].Value = math.Round(comps[i].Value*1000) / 1000
		total += comps[i].Weight
	}
	score := apportion(comps, total)
	return Result{Score: score, Band: m.Band(score, p.NPS, prevBand), Components: comps}
}

// apportion sets each component's contribution in whole points so that the
// contributions add up to the rounded total (largest remainders get the
// leftover points), and returns that total.
func apportion(comps []Component, totalWeight float64) int {
	exact := make([]float64, len(comps))
	var sum float64
	for i, c := range comps {
		exact[i] = 100 * c.Weight * c.Value / totalWeight
		sum += exact[i]
	}
	score := int(math.Round(sum))
	left := score
	order := make([]int, len(comps))
	for i := range comps {
		comps[i].Contribution = int(math.Floor(exact[i]))
		left -= comps[i].Contribution
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		return exact[order[a]]-math.Floor(exact[order[a]]) > exact[order[b]]-math.Floor(exact[order[b]])
	})
	for i := 0; left > 0 && i < len(order); i++ {
		comps[order[i]].Contribution++
		left--
	}
	return score
}

func clamp01(v float64) float64 { return math.Max(0, math.Min(1, v)) }

// noData says Tend knows nothing of the account's use yet: no login ever, no
// event in 30 days, no active users. Usage and adoption are then neutral, not
// zero: an account upserted moments before its usage arrives is not at risk.
func noData(p *account.Profile) bool {
	return p.LastLoginAt.Equal(p.SignupAt) && p.Logins30d == 0 && len(p.Events) == 0 && len(p.Features) == 0 && p.ActiveUsers == 0
}

// neutralValue is the value of a component Tend has no data for.
const neutralValue = 0.5

func (m Model) usage(p *account.Profile) Component {
	if noData(p) {
		return Component{Name: Usage, Value: neutralValue, Inputs: map[string]any{"no_data_yet": true}}
	}
	u := m.Usage
	perSeat := float64(p.Logins30d) / math.Max(1, float64(p.Seats))
	logins := clamp01(perSeat / u.LoginsPerSeat30d)
	util := clamp01(p.LicenseUtilization / u.Utilization)
	recency := clamp01(float64(u.StaleDays-p.DaysSinceLastLogin) / float64(u.StaleDays-u.RecentDays))
	return Component{Name: Usage, Value: (logins + util + recency) / 3, Inputs: map[string]any{
		"logins_30d": p.Logins30d, "seats": p.Seats, "license_utilization": round2(p.LicenseUtilization),
		"days_since_last_login": p.DaysSinceLastLogin,
		"logins_per_seat_score": round2(logins), "utilization_score": round2(util), "recency_score": round2(recency),
	}}
}

func (m Model) adoption(p *account.Profile) Component {
	if noData(p) {
		return Component{Name: Adoption, Value: neutralValue, Inputs: map[string]any{"key_features": m.KeyFeatures, "no_data_yet": true}}
	}
	used := []string{}
	for _, f := range m.KeyFeatures {
		if p.Features[f] > 0 {
			used = append(used, f)
		}
	}
	v := 0.0
	if len(m.KeyFeatures) > 0 {
		v = float64(len(used)) / float64(len(m.KeyFeatures))
	}
	return Component{Name: Adoption, Value: v, Inputs: map[string]any{"key_features": m.KeyFeatures, "used": used}}
}

func (m Model) support(p *account.Profile) Component {
	v := clamp01(1 - float64(p.OpenTickets)/float64(m.Support.MaxOpenTickets))
	return Component{Name: Support, Value: v, Inputs: map[string]any{"open_tickets": p.OpenTickets}}
}

func (m Model) sentiment(p *account.Profile) Component {
	v := m.Sentiment.NoAnswer
	if p.NPS >= 0 {
		v = clamp01(float64(p.NPS) / 10)
	}
	return Component{Name: Sentiment, Value: v, Inputs: map[string]any{"nps": p.NPS}}
}

// engagement: see EngagementModel.
func (m Model) engagement(msgs []Message, now time.Time) Component {
	e := m.Engagement
	sorted := append([]Message(nil), msgs...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].SentAt.Before(sorted[j].SentAt) })
	var counted, credit float64
	var replies, clicks, opens, ignored, dismissed, spared, run int
	for _, msg := range sorted {
		var c float64
		switch msg.Response {
		case respReply:
			c, replies = e.Reply, replies+1
		case respClick:
			c, clicks = e.Click, clicks+1
		case respOpen:
			c, opens = e.Open, opens+1
		case respDismiss:
			dismissed++
		default:
			// Not yet answerable, or a nudge never seen (the user may
			// not have logged in), or at-risk outreach: not held against.
			if msg.InApp || now.Sub(msg.SentAt) < e.IgnoredAfter.Duration {
				continue
			}
			if msg.AtRisk {
				spared++
				continue
			}
			ignored++
			run++
			counted++
			continue
		}
		run = 0
		counted++
		credit += c
	}
	v := (e.Neutral*e.Prior + credit) / (e.Prior + counted)
	if e.Prior+counted == 0 {
		v = e.Neutral
	}
	if run > 1 {
		v -= e.RunPenalty * float64(run-1)
	}
	v -= e.DismissPenalty * float64(dismissed)
	return Component{Name: Engagement, Value: clamp01(v), Inputs: map[string]any{
		"messages_30d": len(msgs), "replies": replies, "clicks": clicks, "opens": opens,
		"ignored": ignored, "ignored_in_a_row": run, "nudges_dismissed": dismissed,
		"unanswered_while_at_risk": spared,
	}}
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }

// validUntil is when a score computed at now from p and msgs could next
// change with the account's data unchanged, as far as the score itself
// reads the clock: the recency of the last login moves once a whole day
// passes, but only between RecentDays and StaleDays; a message leaves the 30
// days; an unanswered email becomes ignored. The profile's own validity and
// the 30-day change are the caller's to add. Never later than
// account.MaxValidity from now.
func (m Model) validUntil(p *account.Profile, msgs []Message, now time.Time) time.Time {
	until := now.Add(account.MaxValidity)
	lower := func(t time.Time) {
		if t.Before(until) {
			until = t
		}
	}
	if !noData(p) && p.DaysSinceLastLogin < m.Usage.StaleDays {
		next := max(p.DaysSinceLastLogin, m.Usage.RecentDays) + 1
		lower(p.LastLoginAt.Add(time.Duration(next) * 24 * time.Hour))
	}
	for _, msg := range msgs {
		lower(msg.SentAt.UTC().AddDate(0, 0, 30))
		if !msg.InApp && msg.Response == "" {
			if t := msg.SentAt.Add(m.Engagement.IgnoredAfter.Duration); t.After(now) {
				lower(t)
			}
		}
	}
	return until
}
